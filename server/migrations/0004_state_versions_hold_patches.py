"""Let rows of state_versions hold only their merge patch.

From here on a row of ``state_versions`` may hold an empty document and the
merge patch that made its version; the document is rebuilt from an earlier
row that holds a whole one. The schema is unchanged. The migration is
recorded so that a daemon older than this format, which would read such a
row as an empty document, refuses the database as newer than itself.
"""


def up(migrator, db):
    pass
