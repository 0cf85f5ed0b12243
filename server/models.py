"""Peewee models: the five tables of the specification and the daemon's own.

``sessions``, ``prompts``, ``entities``, ``validations`` and ``user_feedback``
keep the table and column names of the specification's SQL, so a database made
from that SQL by hand is upgraded in place (see ``migrations/``). The daemon
adds three tables of its own: ``session_states`` (the current state document
of each session), ``state_versions`` (the last versions of each document) and
``request_ids`` (responses remembered so retried creates apply once).

Timestamps are naive datetimes in UTC, as SQLite's CURRENT_TIMESTAMP writes
them; the servicers attach the time zone. Scores are ``DoubleField``: REAL in
SQLite, DOUBLE PRECISION in PostgreSQL, whose REAL would round them to 32 bits.

The models bind to ``database_proxy``, which ``database.open_database`` points
at the configured database.
"""

from __future__ import annotations

import datetime

from peewee import (
    SQL,
    AutoField,
    BigIntegerField,
    Check,
    DatabaseProxy,
    DateTimeField,
    DoubleField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)

database_proxy = DatabaseProxy()

SESSION_STATUSES = ("in_progress", "completed", "failed")
FEEDBACK_TYPES = ("accept", "reject", "partial")
STATUS_CHECK = "status IN ('in_progress', 'completed', 'failed')"
FEEDBACK_TYPE_CHECK = "feedback_type IN ('accept', 'reject', 'partial')"
RATING_CHECK = "rating BETWEEN 1 AND 5"


def utc_now() -> datetime.datetime:
    """Return the current time in UTC as a naive datetime, as stored."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def _created_at() -> DateTimeField:
    return DateTimeField(
        null=True, default=utc_now, constraints=[SQL("DEFAULT CURRENT_TIMESTAMP")]
    )


def _session_reference() -> ForeignKeyField:
    return ForeignKeyField(
        Session,
        column_name="session_id",
        field="id",
        null=True,
        on_delete="CASCADE",
        index=False,
    )


class BaseModel(Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class Session(BaseModel):
    """A run of the agent on one photo and one instruction."""

    id = TextField(primary_key=True)
    created_at = _created_at()
    image_path = TextField()
    naive_prompt = TextField()
    status = TextField(null=True, constraints=[Check(STATUS_CHECK)])
    final_alignment_score = DoubleField(null=True)

    class Meta:
        table_name = "sessions"
        # Listing is newest first with the id as tie-breaker, by status or not.
        indexes = (
            (("created_at", "id"), False),
            (("status", "created_at", "id"), False),
        )


class Prompt(BaseModel):
    """One refinement of the positive and negative prompts."""

    id = AutoField()
    session = _session_reference()
    iteration = IntegerField(null=True)
    positive_prompt = TextField(null=True)
    negative_prompt = TextField(null=True)
    quality_score = DoubleField(null=True)
    created_at = _created_at()

    class Meta:
        table_name = "prompts"
        indexes = ((("session", "iteration"), True),)


class Entity(BaseModel):
    """An object found in the photo."""

    id = AutoField()
    session = _session_reference()
    entity_id = TextField(null=True)
    label = TextField(null=True)
    confidence = DoubleField(null=True)
    bbox_json = TextField(null=True)
    mask_path = TextField(null=True)
    color_hex = TextField(null=True)
    area_percent = DoubleField(null=True)

    class Meta:
        table_name = "entities"
        indexes = ((("session", "entity_id"), True),)


class Validation(BaseModel):
    """The check of one edit attempt."""

    id = AutoField()
    session = _session_reference()
    attempt_number = IntegerField(null=True)
    alignment_score = DoubleField(null=True)
    preserved_count = IntegerField(null=True)
    modified_count = IntegerField(null=True)
    unintended_count = IntegerField(null=True)
    user_feedback = TextField(null=True)
    created_at = _created_at()

    class Meta:
        table_name = "validations"
        indexes = ((("session", "id"), False),)


class UserFeedback(BaseModel):
    """The person's verdict on a session."""

    id = AutoField()
    session = _session_reference()
    feedback_type = TextField(null=True, constraints=[Check(FEEDBACK_TYPE_CHECK)])
    comments = TextField(null=True)
    rating = IntegerField(null=True, constraints=[Check(RATING_CHECK)])
    created_at = _created_at()

    class Meta:
        table_name = "user_feedback"
        indexes = ((("session", "id"), False),)


class SessionState(BaseModel):
    """The current state document of a session."""

    session = ForeignKeyField(
        Session,
        column_name="session_id",
        field="id",
        primary_key=True,
        on_delete="CASCADE",
    )
    version = BigIntegerField()
    document = TextField()
    updated_at = DateTimeField(default=utc_now)

    class Meta:
        table_name = "session_states"


class StateVersion(BaseModel):
    """One kept version of a state document, with the patch that made it."""

    id = AutoField()
    session = ForeignKeyField(
        Session,
        column_name="session_id",
        field="id",
        on_delete="CASCADE",
        index=False,
    )
    version = BigIntegerField()
    document = TextField()
    merge_patch = TextField(null=True)
    created_at = DateTimeField(default=utc_now)

    class Meta:
        table_name = "state_versions"
        indexes = ((("session", "version"), True),)


class RequestRecord(BaseModel):
    """The response to a request that carried a request id."""

    request_id = TextField(primary_key=True)
    method = TextField()
    fingerprint = TextField()
    response = TextField()
    created_at = DateTimeField(default=utc_now, index=True)

    class Meta:
        table_name = "request_ids"


SPEC_MODELS = (Session, Prompt, Entity, Validation, UserFeedback)
ALL_MODELS = (*SPEC_MODELS, SessionState, StateVersion, RequestRecord)
CHILD_MODELS = (Prompt, Entity, Validation, UserFeedback)
