"""Create the tables of state documents, their versions, and request ids."""

import datetime

from peewee import (
    AutoField,
    BigIntegerField,
    DateTimeField,
    ForeignKeyField,
    Model,
    TextField,
)


def _utc_now():
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def up(migrator, db):
    class Session(Model):
        id = TextField(primary_key=True)

        class Meta:
            database = db
            table_name = "sessions"

    class SessionState(Model):
        session = ForeignKeyField(
            Session, column_name="session_id", primary_key=True, on_delete="CASCADE"
        )
        version = BigIntegerField()
        document = TextField()
        updated_at = DateTimeField(default=_utc_now)

        class Meta:
            database = db
            table_name = "session_states"

    class StateVersion(Model):
        id = AutoField()
        session = ForeignKeyField(
            Session, column_name="session_id", on_delete="CASCADE", index=False
        )
        version = BigIntegerField()
        document = TextField()
        merge_patch = TextField(null=True)
        created_at = DateTimeField(default=_utc_now)

        class Meta:
            database = db
            table_name = "state_versions"
            indexes = ((("session", "version"), True),)

    class RequestRecord(Model):
        request_id = TextField(primary_key=True)
        method = TextField()
        fingerprint = TextField()
        response = TextField()
        created_at = DateTimeField(default=_utc_now, index=True)

        class Meta:
            database = db
            table_name = "request_ids"

    db.create_tables([SessionState, StateVersion, RequestRecord], safe=True)
