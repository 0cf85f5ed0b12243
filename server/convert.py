"""Translation between protobuf messages and the rows of the storage layer."""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

from google.protobuf import timestamp_pb2

from editstore.server.errors import InvalidArgument
from editstore.server.events import StateChanged
from editstore.v1 import session_pb2 as pb

logger = logging.getLogger(__name__)

STATUS_TO_TEXT: dict[int, str] = {
    pb.SESSION_STATUS_IN_PROGRESS: "in_progress",
    pb.SESSION_STATUS_COMPLETED: "completed",
    pb.SESSION_STATUS_FAILED: "failed",
}
TEXT_TO_STATUS: dict[str, Any] = {
    text: number for number, text in STATUS_TO_TEXT.items()
}
FEEDBACK_TO_TEXT: dict[int, str] = {
    pb.FEEDBACK_TYPE_ACCEPT: "accept",
    pb.FEEDBACK_TYPE_REJECT: "reject",
    pb.FEEDBACK_TYPE_PARTIAL: "partial",
}
TEXT_TO_FEEDBACK: dict[str, Any] = {
    text: number for number, text in FEEDBACK_TO_TEXT.items()
}
UPDATABLE_SESSION_FIELDS = (
    "image_path",
    "naive_prompt",
    "status",
    "final_alignment_score",
)
Row = dict[str, Any]


def _optional_float(message: Any, field: str) -> float | None:
    """Return a double field when set, with -0.0 made 0.0.

    Databases may store -0.0 as 0.0, and a value that reads back different
    from what was written would change the session's etag.
    """
    if not message.HasField(field):
        return None
    return float(getattr(message, field)) + 0.0


def _optional(message: Any, field: str) -> Any:
    return getattr(message, field) if message.HasField(field) else None


_EPOCH = datetime.datetime(1970, 1, 1)


_unreadable_times: set[str] = set()


def _stored_time(value: Any) -> datetime.datetime | None:
    """Return a naive UTC datetime for a time a row made by hand may hold.

    SQLite keeps any value in a TIMESTAMP column: ISO 8601 text, with or
    without an offset, or seconds since 1970 (``unixepoch()``). Anything
    else is returned as None, so the field is unset, and logged once.
    """
    try:
        if isinstance(value, datetime.datetime):
            parsed = value
        elif isinstance(value, str):
            parsed = datetime.datetime.fromisoformat(value)
        elif isinstance(value, (int, float)):
            parsed = datetime.datetime.fromtimestamp(value, datetime.UTC)
        else:
            raise TypeError(type(value).__name__)
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(datetime.UTC).replace(tzinfo=None)
        return parsed
    except (ValueError, TypeError, OverflowError, OSError):
        text = repr(value)[:100]
        if text not in _unreadable_times and len(_unreadable_times) < 100:
            _unreadable_times.add(text)
            logger.warning(
                "a stored time is neither ISO 8601 text nor seconds since 1970, "
                "so it is returned unset: %s",
                text,
            )
        return None


def timestamp(value: datetime.datetime | None) -> timestamp_pb2.Timestamp | None:
    """Return a Timestamp for a naive UTC datetime, None for None."""
    if value is None:
        return None
    if not isinstance(value, datetime.datetime) or value.tzinfo is not None:
        stored = _stored_time(value)
        if stored is None:
            return None
        value = stored
    # Timestamp.FromDatetime does the same in Python at four times the cost.
    delta = value - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000
    )


def to_datetime(field: str, value: timestamp_pb2.Timestamp) -> datetime.datetime:
    """Return the naive UTC datetime of a Timestamp, or raise naming the field."""
    try:
        return value.ToDatetime(tzinfo=datetime.UTC).replace(tzinfo=None)
    except (ValueError, OverflowError):
        raise InvalidArgument(
            f"{field} must be a time between years 1 and 9999, got "
            f"{value.seconds} seconds and {value.nanos} nanoseconds"
        ) from None


def status_text(field: str, value: int) -> str | None:
    """Return the stored status of an enum value; None for UNSPECIFIED."""
    if value == pb.SESSION_STATUS_UNSPECIFIED:
        return None
    if value not in STATUS_TO_TEXT:
        raise InvalidArgument(f"{field} must be a known SessionStatus, got {value}")
    return STATUS_TO_TEXT[value]


# Sessions


def session_fields(message: pb.Session) -> Row:
    return {
        "image_path": message.image_path,
        "naive_prompt": message.naive_prompt,
        "status": status_text("session.status", message.status),
        "final_alignment_score": _optional_float(message, "final_alignment_score"),
    }


def session_changes(message: pb.Session, paths: list[str]) -> Row:
    """Return the fields named by an update mask, or raise for unknown ones."""
    fields = session_fields(message)
    if paths == ["*"]:
        return fields
    changes: Row = {}
    for path in paths:
        if path not in UPDATABLE_SESSION_FIELDS:
            raise InvalidArgument(
                f"update_mask names {path!r}, which can not be updated; use "
                + ", ".join(UPDATABLE_SESSION_FIELDS)
                + " or *"
            )
        changes[path] = fields[path]
    return changes


def session_message(row: Row) -> pb.Session:
    message = pb.Session(
        id=row["id"],
        image_path=row["image_path"] or "",
        naive_prompt=row["naive_prompt"] or "",
        status=TEXT_TO_STATUS.get(row["status"], pb.SESSION_STATUS_UNSPECIFIED),
        etag=row["etag"],
    )
    created = timestamp(row["created_at"])
    if created is not None:
        message.create_time.CopyFrom(created)
    if row["final_alignment_score"] is not None:
        message.final_alignment_score = row["final_alignment_score"]
    return message


# Records of a session


def prompt_fields(message: pb.Prompt) -> Row:
    return {
        "iteration": message.iteration,
        "positive_prompt": message.positive_prompt,
        "negative_prompt": message.negative_prompt,
        "quality_score": _optional_float(message, "quality_score"),
    }


def prompt_message(row: Row, session_id: str) -> pb.Prompt:
    message = pb.Prompt(
        id=row["id"],
        session_id=session_id,
        iteration=row["iteration"] or 0,
        positive_prompt=row["positive_prompt"] or "",
        negative_prompt=row["negative_prompt"] or "",
    )
    if row["quality_score"] is not None:
        message.quality_score = row["quality_score"]
    _set_time(message, row["created_at"])
    return message


def entity_fields(message: pb.Entity) -> Row:
    box = None
    if message.HasField("bbox"):
        bbox = message.bbox
        box = (bbox.x + 0.0, bbox.y + 0.0, bbox.width + 0.0, bbox.height + 0.0)
    return {
        "entity_id": message.entity_id,
        "label": message.label,
        "confidence": _optional_float(message, "confidence"),
        "bbox": box,
        "mask_path": message.mask_path,
        "color_hex": message.color_hex,
        "area_percent": _optional_float(message, "area_percent"),
    }


def entity_message(row: Row, session_id: str) -> pb.Entity:
    message = pb.Entity(
        id=row["id"],
        session_id=session_id,
        entity_id=row["entity_id"] or "",
        label=row["label"] or "",
        mask_path=row["mask_path"] or "",
        color_hex=row["color_hex"] or "",
    )
    if row["confidence"] is not None:
        message.confidence = row["confidence"]
    if row["area_percent"] is not None:
        message.area_percent = row["area_percent"]
    box = _parse_box(row["bbox_json"])
    if box is not None:
        message.bbox.CopyFrom(box)
    return message


def _parse_box(text: str | None) -> pb.BoundingBox | None:
    """Read a stored box; rows written by hand may hold other shapes."""
    if not text:
        return None
    try:
        values = json.loads(text)
        if isinstance(values, dict):
            values = [values.get(key, 0) for key in ("x", "y", "width", "height")]
        x, y, width, height = (float(value) for value in values)
    except (ValueError, TypeError):
        return None
    return pb.BoundingBox(x=x, y=y, width=width, height=height)


def validation_fields(message: pb.Validation) -> Row:
    return {
        "attempt_number": message.attempt_number,
        "alignment_score": _optional_float(message, "alignment_score"),
        "preserved_count": message.preserved_count,
        "modified_count": message.modified_count,
        "unintended_count": message.unintended_count,
        "user_feedback": message.user_feedback,
    }


def validation_message(row: Row, session_id: str) -> pb.Validation:
    message = pb.Validation(
        id=row["id"],
        session_id=session_id,
        attempt_number=row["attempt_number"] or 0,
        preserved_count=row["preserved_count"] or 0,
        modified_count=row["modified_count"] or 0,
        unintended_count=row["unintended_count"] or 0,
        user_feedback=row["user_feedback"] or "",
    )
    if row["alignment_score"] is not None:
        message.alignment_score = row["alignment_score"]
    _set_time(message, row["created_at"])
    return message


def feedback_fields(message: pb.UserFeedback) -> Row:
    feedback_type = message.feedback_type
    if (
        feedback_type != pb.FEEDBACK_TYPE_UNSPECIFIED
        and feedback_type not in FEEDBACK_TO_TEXT
    ):
        raise InvalidArgument(
            "user_feedback.feedback_type must be a known FeedbackType, "
            f"got {feedback_type}"
        )
    return {
        "feedback_type": FEEDBACK_TO_TEXT.get(feedback_type),
        "comments": message.comments,
        "rating": _optional(message, "rating"),
    }


def feedback_message(row: Row, session_id: str) -> pb.UserFeedback:
    message = pb.UserFeedback(
        id=row["id"],
        session_id=session_id,
        feedback_type=TEXT_TO_FEEDBACK.get(row["feedback_type"], 0),
        comments=row["comments"] or "",
    )
    if row["rating"] is not None:
        message.rating = row["rating"]
    _set_time(message, row["created_at"])
    return message


def _set_time(message: Any, value: datetime.datetime | None) -> None:
    created = timestamp(value)
    if created is not None:
        message.create_time.CopyFrom(created)


# State documents


def state_message(
    session_id: str, state: StateChanged | Row | None
) -> pb.StateDocument:
    """Return a StateDocument; version 0 and "{}" when there is none."""
    if state is None:
        return pb.StateDocument(session_id=session_id, version=0, document_json="{}")
    if isinstance(state, StateChanged):
        version, document, updated_at = state.version, state.document, state.updated_at
    else:
        version, document, updated_at = (
            state["version"],
            state["document"],
            state["updated_at"],
        )
    return pb.StateDocument(
        session_id=session_id,
        version=version,
        document_json=document,
        update_time=timestamp(updated_at),
    )
