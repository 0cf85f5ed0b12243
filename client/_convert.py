"""Conversions between ``editstore.v1`` messages and the client's models.

Shared by the synchronous and the asyncio client, which differ only in how
they send a request.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from google.protobuf import timestamp_pb2

from editstore.client import jsondoc
from editstore.client.models import (
    BoundingBox,
    Entity,
    FeedbackType,
    Prompt,
    ResumedSession,
    Session,
    SessionPage,
    SessionStatus,
    StateDocument,
    StateVersions,
    UserFeedback,
    Validation,
    WatchEvent,
    WatchEventType,
)
from editstore.v1 import session_pb2, state_pb2

_STATUS_TO_PROTO = {
    SessionStatus.IN_PROGRESS: session_pb2.SESSION_STATUS_IN_PROGRESS,
    SessionStatus.COMPLETED: session_pb2.SESSION_STATUS_COMPLETED,
    SessionStatus.FAILED: session_pb2.SESSION_STATUS_FAILED,
}
_STATUS_FROM_PROTO = {number: status for status, number in _STATUS_TO_PROTO.items()}

_FEEDBACK_TO_PROTO = {
    FeedbackType.ACCEPT: session_pb2.FEEDBACK_TYPE_ACCEPT,
    FeedbackType.REJECT: session_pb2.FEEDBACK_TYPE_REJECT,
    FeedbackType.PARTIAL: session_pb2.FEEDBACK_TYPE_PARTIAL,
}
_FEEDBACK_FROM_PROTO = {number: kind for kind, number in _FEEDBACK_TO_PROTO.items()}

_WATCH_FROM_PROTO = {
    state_pb2.WATCH_EVENT_TYPE_SNAPSHOT: WatchEventType.SNAPSHOT,
    state_pb2.WATCH_EVENT_TYPE_CHANGE: WatchEventType.CHANGE,
    state_pb2.WATCH_EVENT_TYPE_HISTORY_LOST: WatchEventType.HISTORY_LOST,
    state_pb2.WATCH_EVENT_TYPE_HEARTBEAT: WatchEventType.HEARTBEAT,
    state_pb2.WATCH_EVENT_TYPE_SESSION_DELETED: WatchEventType.SESSION_DELETED,
}

EnumT = TypeVar("EnumT", bound=enum.StrEnum)

SESSION_UPDATE_FIELDS = frozenset(
    {"image_path", "naive_prompt", "status", "final_alignment_score"}
)


def _member(enum_class: type[EnumT], field: str, value: Any) -> EnumT:
    """Return the member of ``enum_class`` for ``value``, or raise naming
    the field and the values it takes."""
    try:
        return enum_class(value)
    except ValueError:
        if isinstance(value, str) and value.lower() != value:
            # The member's name, as in SessionStatus.COMPLETED, is accepted.
            with contextlib.suppress(ValueError):
                return enum_class(value.lower())
        allowed = ", ".join(member.value for member in enum_class)
        raise ValueError(f"{field} must be one of {allowed}, got {value!r}") from None


def status_to_proto(
    status: SessionStatus | str | None,
) -> session_pb2.SessionStatus:
    if status is None:
        return session_pb2.SESSION_STATUS_UNSPECIFIED
    return _STATUS_TO_PROTO[_member(SessionStatus, "status", status)]


def feedback_type_to_proto(
    feedback_type: FeedbackType | str,
) -> session_pb2.FeedbackType:
    return _FEEDBACK_TO_PROTO[_member(FeedbackType, "feedback_type", feedback_type)]


def timestamp_from_datetime(value: datetime.datetime) -> timestamp_pb2.Timestamp:
    """Convert an aware datetime; a naive one is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value.astimezone(datetime.UTC))
    return stamp


def _time(message: Any, field: str) -> datetime.datetime | None:
    if not message.HasField(field):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=datetime.UTC)


def _optional(message: Any, field: str) -> Any:
    return getattr(message, field) if message.HasField(field) else None


def session_from_proto(message: session_pb2.Session) -> Session:
    return Session(
        id=message.id,
        create_time=_time(message, "create_time"),
        image_path=message.image_path,
        naive_prompt=message.naive_prompt,
        status=_STATUS_FROM_PROTO.get(message.status),
        final_alignment_score=_optional(message, "final_alignment_score"),
        etag=message.etag or None,
    )


def session_page_from_proto(message: session_pb2.ListSessionsResponse) -> SessionPage:
    return SessionPage(
        sessions=[session_from_proto(item) for item in message.sessions],
        next_page_token=message.next_page_token,
    )


def prompt_from_proto(message: session_pb2.Prompt) -> Prompt:
    return Prompt(
        id=message.id,
        session_id=message.session_id,
        iteration=message.iteration,
        positive_prompt=message.positive_prompt,
        negative_prompt=message.negative_prompt,
        quality_score=_optional(message, "quality_score"),
        create_time=_time(message, "create_time"),
    )


def entity_from_proto(message: session_pb2.Entity) -> Entity:
    bbox = None
    if message.HasField("bbox"):
        box = message.bbox
        bbox = BoundingBox(x=box.x, y=box.y, width=box.width, height=box.height)
    return Entity(
        id=message.id,
        session_id=message.session_id,
        entity_id=message.entity_id,
        label=message.label,
        confidence=_optional(message, "confidence"),
        bbox=bbox,
        mask_path=message.mask_path,
        color_hex=message.color_hex,
        area_percent=_optional(message, "area_percent"),
    )


def entity_to_proto(entity: Entity | Mapping[str, Any]) -> session_pb2.Entity:
    if not isinstance(entity, Entity):
        entity = Entity.model_validate(entity)
    message = session_pb2.Entity(
        entity_id=entity.entity_id,
        label=entity.label,
        mask_path=entity.mask_path,
        color_hex=entity.color_hex,
    )
    if entity.confidence is not None:
        message.confidence = entity.confidence
    if entity.area_percent is not None:
        message.area_percent = entity.area_percent
    if entity.bbox is not None:
        message.bbox.CopyFrom(
            session_pb2.BoundingBox(
                x=entity.bbox.x,
                y=entity.bbox.y,
                width=entity.bbox.width,
                height=entity.bbox.height,
            )
        )
    return message


def entities_to_proto(
    entities: Iterable[Entity | Mapping[str, Any]],
) -> list[session_pb2.Entity]:
    return [entity_to_proto(entity) for entity in entities]


def validation_from_proto(message: session_pb2.Validation) -> Validation:
    return Validation(
        id=message.id,
        session_id=message.session_id,
        attempt_number=message.attempt_number,
        alignment_score=_optional(message, "alignment_score"),
        preserved_count=message.preserved_count,
        modified_count=message.modified_count,
        unintended_count=message.unintended_count,
        user_feedback=message.user_feedback,
        create_time=_time(message, "create_time"),
    )


def user_feedback_from_proto(message: session_pb2.UserFeedback) -> UserFeedback:
    return UserFeedback(
        id=message.id,
        session_id=message.session_id,
        feedback_type=_FEEDBACK_FROM_PROTO.get(message.feedback_type),
        comments=message.comments,
        rating=_optional(message, "rating"),
        create_time=_time(message, "create_time"),
    )


def state_from_proto(message: session_pb2.StateDocument) -> StateDocument:
    document = jsondoc.loads_object(message.document_json or "{}")
    return StateDocument(
        session_id=message.session_id,
        version=message.version,
        document=document,
        update_time=_time(message, "update_time"),
    )


def state_versions_from_proto(
    message: state_pb2.ListStateVersionsResponse,
) -> StateVersions:
    return StateVersions(
        versions=[state_from_proto(item) for item in message.versions],
        oldest_kept_version=message.oldest_kept_version,
    )


def watch_event_from_proto(
    message: state_pb2.WatchStateResponse,
) -> WatchEvent | None:
    """Convert an event; ``None`` for a type this client does not know."""
    kind = _WATCH_FROM_PROTO.get(message.type)
    if kind is None:
        return None
    state = state_from_proto(message.state) if message.HasField("state") else None
    patch = None
    if message.merge_patch_json:
        patch = jsondoc.loads_object(message.merge_patch_json)
    return WatchEvent(
        type=kind,
        state=state,
        merge_patch=patch,
    )


def resumed_from_proto(message: session_pb2.ResumeSessionResponse) -> ResumedSession:
    return ResumedSession(
        session=session_from_proto(message.session),
        prompts=[prompt_from_proto(item) for item in message.prompts],
        entities=[entity_from_proto(item) for item in message.entities],
        validations=[validation_from_proto(item) for item in message.validations],
        user_feedback=[
            user_feedback_from_proto(item) for item in message.user_feedback
        ],
        state=state_from_proto(message.state),
    )
