"""Sessions and their records: the reads and the write operations.

Values arrive as plain Python values, already translated from messages.
Every public ``create_*``, ``update_*`` and ``delete_*`` function checks its
input on the caller's thread and returns an operation for the ``Writer``; the
``get_*`` and ``list_*`` functions are reads, run on a reader thread. Rows
travel as dicts named after the columns, with ``session_id`` for the foreign
key and naive UTC datetimes.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import math
import uuid
from collections.abc import Callable
from typing import Any

import peewee

from editstore.server import requests, validation
from editstore.server.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from editstore.server.events import SessionDeleted
from editstore.server.models import (
    CHILD_MODELS,
    FEEDBACK_TYPES,
    SESSION_STATUSES,
    Entity,
    Prompt,
    Session,
    SessionState,
    StateVersion,
    UserFeedback,
    Validation,
    utc_now,
)
from editstore.server.pgnotify import notify

Row = dict[str, Any]
Operation = Callable[[list[Any]], Any]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_BATCH_ENTITIES = 1000
TERMINAL_STATUSES = ("completed", "failed")
SESSION_FIELDS = ("image_path", "naive_prompt", "status", "final_alignment_score")


def _row(instance: peewee.Model, fields: tuple[str, ...]) -> Row:
    data = instance.__data__
    row = {name: data.get(name) for name in fields}
    if "session" in data:
        row["session_id"] = data["session"]
    return row


def session_row(instance: Session) -> Row:
    row = _row(
        instance,
        (
            "id",
            "created_at",
            "image_path",
            "naive_prompt",
            "status",
            "final_alignment_score",
        ),
    )
    row["etag"] = etag(row)
    return row


def etag(row: Row) -> str:
    """Return a checksum of a session's stored fields."""
    parts = [row["id"], row["created_at"], *(row[name] for name in SESSION_FIELDS)]
    text = json.dumps(parts, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


PROMPT_FIELDS = (
    "id",
    "iteration",
    "positive_prompt",
    "negative_prompt",
    "quality_score",
    "created_at",
)
ENTITY_FIELDS = (
    "id",
    "entity_id",
    "label",
    "confidence",
    "bbox_json",
    "mask_path",
    "color_hex",
    "area_percent",
)
VALIDATION_FIELDS = (
    "id",
    "attempt_number",
    "alignment_score",
    "preserved_count",
    "modified_count",
    "unintended_count",
    "user_feedback",
    "created_at",
)
FEEDBACK_FIELDS = ("id", "feedback_type", "comments", "rating", "created_at")


def _require_session(session_id: str) -> Session:
    session = Session.get_or_none(Session.id == session_id)
    if session is None:
        raise NotFound(f"session {session_id!r} not found")
    return session


def _lock_session(session_id: str) -> Session:
    """Read a session for a write; on PostgreSQL lock its row until commit."""
    query = Session.select().where(Session.id == session_id)
    if isinstance(Session._meta.database.obj, peewee.PostgresqlDatabase):
        query = query.for_update()
    session = query.get_or_none()
    if session is None:
        raise NotFound(f"session {session_id!r} not found")
    return session


# Sessions


def check_session_fields(fields: Row) -> Row:
    """Check the writable fields of a session that are present in ``fields``."""
    if "image_path" in fields:
        validation.text("session.image_path", fields["image_path"], required=True)
    if "naive_prompt" in fields:
        validation.text("session.naive_prompt", fields["naive_prompt"], required=True)
    if "status" in fields:
        validation.choice("session.status", fields["status"], SESSION_STATUSES)
    if "final_alignment_score" in fields:
        validation.finite(
            "session.final_alignment_score", fields["final_alignment_score"]
        )
    return fields


def create_session(fields: Row, request_id: str) -> Operation:
    """Return the operation that creates a session; status defaults to in_progress."""
    request_id = validation.request_id(request_id)
    for name in ("image_path", "naive_prompt"):
        fields.setdefault(name, "")
    check_session_fields(fields)
    values = dict(fields)
    if values.get("status") is None:
        values["status"] = "in_progress"

    def operation(events: list[Any]) -> Row:
        session = Session.create(id=str(uuid.uuid4()), created_at=utc_now(), **values)
        return session_row(session)

    return requests.once("CreateSession", request_id, values, operation)


def get_session(session_id: str) -> Row:
    """Return one session."""
    validation.identifier("id", session_id)
    return session_row(_require_session(session_id))


def update_session(session_id: str, changes: Row, expected_etag: str) -> Operation:
    """Return the operation that changes the named fields of a session.

    Raises (from the operation):
        FailedPrecondition: the session is completed or failed and the change
            would give it another status.
        Conflict: ``expected_etag`` is set and the session has changed.
    """
    validation.identifier("session.id", session_id)
    if not changes:
        raise InvalidArgument(
            "update_mask must name at least one of " + ", ".join(SESSION_FIELDS)
        )
    check_session_fields(changes)
    if "status" in changes and changes["status"] is None:
        raise InvalidArgument(
            "session.status must be in_progress, completed or failed when it is "
            "named in update_mask"
        )

    def operation(events: list[Any]) -> Row:
        session = _lock_session(session_id)
        current = session_row(session)
        if expected_etag and expected_etag != current["etag"]:
            raise Conflict(
                f"session {session_id!r} changed since it was read: its etag is "
                f"{current['etag']}, the request's etag is {expected_etag}; "
                "read the session and retry"
            )
        new_status = changes.get("status", session.status)
        if session.status in TERMINAL_STATUSES and new_status != session.status:
            raise FailedPrecondition(
                f"session {session_id!r} is {session.status} and can not become "
                f"{new_status}; a finished session keeps its status"
            )
        Session.update(**changes).where(Session.id == session_id).execute()
        for name, value in changes.items():
            setattr(session, name, value)
        return session_row(session)

    return operation


def delete_session(session_id: str) -> Operation:
    """Return the operation that deletes a session and all its records.

    The children are deleted here rather than through ON DELETE CASCADE,
    because a database made by hand from the specification's SQL has foreign
    keys without it.
    """
    validation.identifier("id", session_id)

    def operation(events: list[Any]) -> int:
        _lock_session(session_id)
        deleted = 0
        for model in CHILD_MODELS:
            deleted += model.delete().where(model.session == session_id).execute()
        StateVersion.delete().where(StateVersion.session == session_id).execute()
        SessionState.delete().where(SessionState.session == session_id).execute()
        Session.delete().where(Session.id == session_id).execute()
        events.append(SessionDeleted(session_id))
        notify({"session_id": session_id, "deleted": True})
        return deleted

    return operation


# The created_at of a SQLite row as stored, which a row made by hand may hold
# as a number or as text in any form, next to the parsed one.
_RAW_CREATED_AT = "raw_created_at"
_RAW_KINDS: dict[type, str] = {str: "s", int: "i", float: "f"}


def encode_page_token(row: Row, filters: Row) -> str:
    """Return the token of the page after ``row``, a row of ``list_sessions``.

    On SQLite the token carries created_at as stored, so that the next page
    compares like with like whatever a row made by hand holds.
    """
    created_at = row["created_at"]
    payload: dict[str, Any] = {"i": row["id"], "f": _filters_digest(filters)}
    raw = row.get(_RAW_CREATED_AT)
    if raw is None:
        payload["t"] = None if created_at is None else created_at.isoformat()
    elif isinstance(raw, bytes):
        payload["r"] = ["b", base64.b64encode(raw).decode("ascii")]
    else:
        payload["r"] = [_RAW_KINDS[type(raw)], raw]
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


def _raw_value(kind: Any, value: Any) -> Any:
    """Return the stored created_at a token carries, or raise ValueError.

    Only a SQLite row can hold such a value, and only one that SQLite can
    store: a 64-bit integer, a finite float, text or a blob.
    """
    if not isinstance(Session._meta.database.obj, peewee.SqliteDatabase):
        raise ValueError("stored times are carried only on SQLite")
    if kind == "b" and isinstance(value, str):
        return base64.b64decode(value.encode("ascii"), validate=True)
    if kind == "f" and isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError("not a finite float")
        return number
    if kind == "i" and type(value) is int and not -(2**63) <= value < 2**63:
        raise ValueError("not a 64-bit integer")
    if kind == "s" and isinstance(value, str):
        value.encode("utf-8")  # a lone surrogate has no UTF-8 form to store
    for python_type, name in _RAW_KINDS.items():
        if kind == name and type(value) is python_type:
            return value
    raise ValueError("not a stored time this server wrote")


def _filters_digest(filters: Row) -> str:
    text = json.dumps(filters, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _decode_page_token(token: str, filters: Row) -> tuple[Any, str]:
    """Return the created_at and id a token carries.

    The created_at is a naive datetime, None for an undated row, or a
    ``peewee.Value`` of the value stored in a SQLite row.
    """
    try:
        data = base64.urlsafe_b64decode(token.encode("ascii"))
        # The decoder skips characters after the padding; a token that does
        # not encode back to itself was changed.
        if base64.urlsafe_b64encode(data).decode("ascii") != token:
            raise ValueError("not canonical base64")
        payload = json.loads(data)
        created_at: Any
        if "r" in payload:
            kind, value = payload["r"]
            created_at = peewee.Value(_raw_value(kind, value), converter=False)
            aware = False
        else:
            created_at = (
                None
                if payload["t"] is None
                else datetime.datetime.fromisoformat(payload["t"])
            )
            aware = created_at is not None and created_at.tzinfo is not None
        session_id = payload["i"]
        digest = payload["f"]
        # The id goes into the query: PostgreSQL rejects a NUL in it with an
        # error that is not a database error.
        if aware or not isinstance(session_id, str):
            raise ValueError("not a time and id this server wrote")
        validation.identifier("page_token", session_id)
    except (
        ValueError,
        KeyError,
        TypeError,
        binascii.Error,
        UnicodeError,
        RecursionError,
        OverflowError,
        InvalidArgument,
    ):
        raise InvalidArgument(
            "page_token is not a token this server returned; send the "
            "next_page_token of the previous response unchanged"
        ) from None
    if digest != _filters_digest(filters):
        raise InvalidArgument(
            "page_token was made for other filters; send the same status and "
            "create_time filters as the request that returned it"
        )
    return created_at, session_id


def list_sessions(
    page_size: int,
    page_token: str,
    status: str | None,
    created_after: datetime.datetime | None,
    created_before: datetime.datetime | None,
) -> tuple[list[Row], str, Row]:
    """Return a page of sessions, newest first, the next page's token, and the
    filters, with which ``encode_page_token`` makes a token for a shorter page."""
    if page_size < 0 or page_size > MAX_PAGE_SIZE:
        raise InvalidArgument(
            f"page_size must be between 0 and {MAX_PAGE_SIZE}, got {page_size}"
        )
    page_size = page_size or DEFAULT_PAGE_SIZE
    filters = {"status": status, "after": created_after, "before": created_before}
    query = Session.select()
    if status is not None:
        query = query.where(Session.status == status)
    # NOTE: SQLite orders numbers before all text, so rows made by hand with
    # created_at stored as a number, or as text with an offset, are listed
    # out of time order and are missed by the time filters.
    if created_after is not None:
        query = query.where(Session.created_at >= created_after)
    if created_before is not None:
        query = query.where(Session.created_at < created_before)
    after: tuple[Any, str] | None = None
    if page_token:
        after = _decode_page_token(page_token, filters)
    rows: list[Row] = []
    if after is None or after[0] is not None:
        dated = query.where(Session.created_at.is_null(False))
        sqlite = isinstance(Session._meta.database.obj, peewee.SqliteDatabase)
        if sqlite:
            dated = dated.select_extend(
                peewee.fn.IFNULL(Session.created_at, None)
                .coerce(False)
                .alias(_RAW_CREATED_AT)
            )
        if after is not None:
            dated = dated.where(
                peewee.Tuple(Session.created_at, Session.id) < peewee.Tuple(*after)
            )
        dated = dated.order_by(Session.created_at.desc(), Session.id.desc())
        for session in dated.limit(page_size + 1):
            row = session_row(session)
            if sqlite:
                row[_RAW_CREATED_AT] = getattr(session, _RAW_CREATED_AT)
            rows.append(row)
    # Rows written by hand may have no creation time: they come last, by id.
    # A time filter never matches them.
    if len(rows) <= page_size and created_after is None and created_before is None:
        undated = query.where(Session.created_at.is_null())
        if after is not None and after[0] is None:
            undated = undated.where(Session.id < after[1])
        undated = undated.order_by(Session.id.desc())
        limit = page_size + 1 - len(rows)
        rows += [session_row(session) for session in undated.limit(limit)]
    next_token = ""
    if len(rows) > page_size:
        rows = rows[:page_size]
        next_token = encode_page_token(rows[-1], filters)
    return rows, next_token, filters


# Records of a session


def _check_child_session(session_id: str) -> None:
    validation.identifier("session_id", session_id)


def create_prompt(session_id: str, fields: Row, request_id: str) -> Operation:
    """Return the operation that adds a prompt iteration.

    Raises (from the operation):
        AlreadyExists: the iteration is already used in the session.
    """
    _check_child_session(session_id)
    request_id = validation.request_id(request_id)
    validation.count("prompt.iteration", fields["iteration"])
    validation.text("prompt.positive_prompt", fields["positive_prompt"] or "")
    validation.text("prompt.negative_prompt", fields["negative_prompt"] or "")
    validation.finite("prompt.quality_score", fields["quality_score"])

    def operation(events: list[Any]) -> Row:
        _lock_session(session_id)
        used = Prompt.get_or_none(
            (Prompt.session == session_id) & (Prompt.iteration == fields["iteration"])
        )
        if used is not None:
            raise AlreadyExists(
                f"prompt iteration {fields['iteration']} already exists in "
                f"session {session_id!r}"
            )
        prompt = Prompt.create(session=session_id, created_at=utc_now(), **fields)
        return _row(prompt, PROMPT_FIELDS)

    payload = {"session_id": session_id, **fields}
    return requests.once("CreatePrompt", request_id, payload, operation)


def check_entity(index: int, fields: Row) -> None:
    """Check one entity of a batch; messages name it by its index."""
    prefix = f"entities[{index}]"
    validation.identifier(f"{prefix}.entity_id", fields["entity_id"])
    validation.text(f"{prefix}.label", fields["label"] or "")
    validation.between(f"{prefix}.confidence", fields["confidence"], 0.0, 1.0)
    validation.bounding_box(f"{prefix}.bbox", fields.pop("bbox"))
    validation.text(f"{prefix}.mask_path", fields["mask_path"] or "")
    validation.color_hex(f"{prefix}.color_hex", fields["color_hex"] or "")
    validation.between(f"{prefix}.area_percent", fields["area_percent"], 0.0, 100.0)


def create_entities(session_id: str, entities: list[Row], request_id: str) -> Operation:
    """Return the operation that adds a batch of entities, all or none.

    Each entity dict holds ``bbox`` as a tuple (x, y, width, height) or None;
    it is stored as JSON text in ``bbox_json``.
    """
    _check_child_session(session_id)
    request_id = validation.request_id(request_id)
    if not entities:
        raise InvalidArgument("entities must hold at least one entity")
    if len(entities) > MAX_BATCH_ENTITIES:
        raise InvalidArgument(
            f"entities must hold at most {MAX_BATCH_ENTITIES} entities, "
            f"got {len(entities)}"
        )
    rows: list[Row] = []
    seen: dict[str, int] = {}
    for index, fields in enumerate(entities):
        box = fields.get("bbox")
        check_entity(index, fields)
        fields["bbox_json"] = None if box is None else json.dumps(list(box))
        if fields["entity_id"] in seen:
            raise AlreadyExists(
                f"entities[{index}].entity_id {fields['entity_id']!r} is also "
                f"entities[{seen[fields['entity_id']]}].entity_id"
            )
        seen[fields["entity_id"]] = index
        rows.append(fields)

    def operation(events: list[Any]) -> list[Row]:
        _lock_session(session_id)
        used = Entity.select(Entity.entity_id).where(
            (Entity.session == session_id) & (Entity.entity_id.in_(list(seen)))
        )
        taken = [entity.entity_id for entity in used]
        if taken:
            raise AlreadyExists(
                f"entity_id {taken[0]!r} already exists in session {session_id!r}"
            )
        stored = []
        for fields in rows:
            entity = Entity.create(session=session_id, **fields)
            stored.append(_row(entity, ENTITY_FIELDS))
        return stored

    payload = {"session_id": session_id, "entities": rows}
    return requests.once("BatchCreateEntities", request_id, payload, operation)


def create_validation(session_id: str, fields: Row, request_id: str) -> Operation:
    """Return the operation that adds a validation."""
    _check_child_session(session_id)
    request_id = validation.request_id(request_id)
    for name in (
        "attempt_number",
        "preserved_count",
        "modified_count",
        "unintended_count",
    ):
        validation.count(f"validation.{name}", fields[name])
    validation.finite("validation.alignment_score", fields["alignment_score"])
    validation.text("validation.user_feedback", fields["user_feedback"] or "")

    def operation(events: list[Any]) -> Row:
        _lock_session(session_id)
        row = Validation.create(session=session_id, created_at=utc_now(), **fields)
        return _row(row, VALIDATION_FIELDS)

    payload = {"session_id": session_id, **fields}
    return requests.once("CreateValidation", request_id, payload, operation)


def create_feedback(session_id: str, fields: Row, request_id: str) -> Operation:
    """Return the operation that adds the person's feedback."""
    _check_child_session(session_id)
    request_id = validation.request_id(request_id)
    if fields["feedback_type"] is None:
        raise InvalidArgument(
            "user_feedback.feedback_type is required: accept, reject or partial"
        )
    validation.choice(
        "user_feedback.feedback_type", fields["feedback_type"], FEEDBACK_TYPES
    )
    validation.text("user_feedback.comments", fields["comments"] or "")
    rating = fields["rating"]
    if rating is not None and not 1 <= rating <= 5:
        raise InvalidArgument(
            f"user_feedback.rating must be between 1 and 5, got {rating}"
        )

    def operation(events: list[Any]) -> Row:
        _lock_session(session_id)
        row = UserFeedback.create(session=session_id, created_at=utc_now(), **fields)
        return _row(row, FEEDBACK_FIELDS)

    payload = {"session_id": session_id, **fields}
    return requests.once("CreateUserFeedback", request_id, payload, operation)


DEFAULT_CHILD_PAGE_SIZE = 1000
MAX_CHILD_PAGE_SIZE = 1000


def _prompt_order() -> tuple[Any, ...]:
    # Rows written by hand may lack an iteration; they come first.
    return (peewee.fn.COALESCE(Prompt.iteration, -1), Prompt.id)


CHILD_KINDS: dict[str, tuple[Any, tuple[str, ...]]] = {
    "prompts": (Prompt, PROMPT_FIELDS),
    "entities": (Entity, ENTITY_FIELDS),
    "validations": (Validation, VALIDATION_FIELDS),
    "user_feedback": (UserFeedback, FEEDBACK_FIELDS),
}


def _child_order(kind: str) -> tuple[Any, ...]:
    model, _ = CHILD_KINDS[kind]
    return _prompt_order() if kind == "prompts" else (model.id,)


def _child_key(kind: str, row: Row) -> list[int]:
    if kind == "prompts":
        iteration = row["iteration"]
        return [-1 if iteration is None else iteration, row["id"]]
    return [row["id"]]


def child_page_token(kind: str, session_id: str, last_row: Row | None) -> str:
    """Return the token of the page after ``last_row``; None: the first page."""
    after = None if last_row is None else _child_key(kind, last_row)
    payload = json.dumps({"k": kind, "s": session_id, "a": after})
    return base64.urlsafe_b64encode(payload.encode()).decode()


def _decode_child_token(kind: str, session_id: str, token: str) -> list[int] | None:
    try:
        data = base64.urlsafe_b64decode(token.encode("ascii"))
        if base64.urlsafe_b64encode(data).decode("ascii") != token:
            raise ValueError("not canonical base64")
        payload = json.loads(data)
        after = payload["a"]
        valid = (
            payload["k"] == kind
            and payload["s"] == session_id
            and (
                after is None
                or (
                    isinstance(after, list)
                    and len(after) == len(_child_order(kind))
                    and all(
                        type(value) is int and abs(value) < 2**63 for value in after
                    )
                )
            )
        )
    except (
        ValueError,
        KeyError,
        TypeError,
        binascii.Error,
        UnicodeError,
        RecursionError,
    ):
        valid = False
    if not valid:
        raise InvalidArgument(
            "page_token is not a token this server returned for this session's "
            f"{kind}; send the next_page_token of the previous response unchanged"
        )
    return after  # type: ignore[no-any-return]


def list_children(
    kind: str, session_id: str, page_size: int, page_token: str
) -> list[Row]:
    """Return up to ``page_size`` + 1 records of a session, in order.

    The extra row shows the caller that another page follows.
    """
    _check_child_session(session_id)
    if page_size < 0 or page_size > MAX_CHILD_PAGE_SIZE:
        raise InvalidArgument(
            f"page_size must be between 0 and {MAX_CHILD_PAGE_SIZE}, got {page_size}"
        )
    after = _decode_child_token(kind, session_id, page_token) if page_token else None
    _require_session(session_id)
    model, fields = CHILD_KINDS[kind]
    order = _child_order(kind)
    query = model.select().where(model.session == session_id)
    if after is not None:
        if len(order) == 1:
            query = query.where(order[0] > after[0])
        else:
            query = query.where(peewee.Tuple(*order) > peewee.Tuple(*after))
    query = query.order_by(*order).limit((page_size or DEFAULT_CHILD_PAGE_SIZE) + 1)
    return [_row(row, fields) for row in query]


def resume(session_id: str) -> Row:
    """Return a session with the first page of each kind of record and its state.

    Call inside a read transaction, so that all of it is one snapshot.
    """
    session = get_session(session_id)
    state = SessionState.get_or_none(SessionState.session == session_id)
    bundle: Row = {"session": session}
    for kind in CHILD_KINDS:
        bundle[kind] = list_children(kind, session_id, 0, "")
    bundle["state"] = (
        None
        if state is None
        else {
            "version": state.version,
            "document": state.document,
            "updated_at": state.updated_at,
        }
    )
    return bundle
