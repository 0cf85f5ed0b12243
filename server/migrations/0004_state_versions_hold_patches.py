"""Let rows of state_versions contain only their merge patch.

From here on a row of ``state_versions`` may contain an empty document and
the merge patch that made its version. Readers rebuild the document from an
earlier row that contains a whole one. The schema is unchanged. The migration
is recorded so that a daemon older than this format, which would read such a
row as an empty document, rejects the database as newer than itself.
"""


def up(migrator, db):
    pass
