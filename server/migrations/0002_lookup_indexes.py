"""Add an index for every lookup the API makes.

Sessions are listed newest first, by status or not; the records of a session
are read by its id. An iteration or entity_id is unique within a session, so a
database that already holds duplicates fails here and is left unchanged.
"""


def up(migrator, db):
    migrator.migrate(
        migrator.add_index("sessions", ("created_at", "id")),
        migrator.add_index("sessions", ("status", "created_at", "id")),
        migrator.add_index("prompts", ("session_id", "iteration"), unique=True),
        migrator.add_index("entities", ("session_id", "entity_id"), unique=True),
        migrator.add_index("validations", ("session_id", "id")),
        migrator.add_index("user_feedback", ("session_id", "id")),
    )
