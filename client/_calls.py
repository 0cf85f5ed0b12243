"""The requests of every unary method, built once for both clients.

Each function returns a `UnaryCall`: which stub method to call, the request
message, how to convert the response, and whether the call is safe to send
again after UNAVAILABLE. The synchronous and the asyncio client only differ
in how they send it.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from google.protobuf import field_mask_pb2

from editstore.client import _convert, jsondoc
from editstore.client.models import (
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
)
from editstore.v1 import session_pb2, state_pb2

T = TypeVar("T")


class Unset:
    """The type of `UNSET`, the default of fields an update leaves alone."""

    _instance: Unset | None = None

    def __new__(cls) -> Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset()


@dataclass(frozen=True, slots=True)
class UnaryCall(Generic[T]):
    """One unary request, ready to send on either kind of channel."""

    service: Literal["session", "state"]
    method: str
    request: Any
    convert: Callable[[Any], T]
    retryable: bool
    """Whether sending the request twice has the effect of sending it once."""


def new_request_id() -> str:
    """Return a fresh request id, a random UUID."""
    return str(uuid.uuid4())


def create_session(
    image_path: str,
    naive_prompt: str,
    status: SessionStatus | str | None,
    final_alignment_score: float | None,
    request_id: str | None,
) -> UnaryCall[Session]:
    session = session_pb2.Session(
        image_path=image_path,
        naive_prompt=naive_prompt,
        status=_convert.status_to_proto(status),
    )
    if final_alignment_score is not None:
        session.final_alignment_score = final_alignment_score
    request = session_pb2.CreateSessionRequest(
        session=session, request_id=request_id or new_request_id()
    )
    return UnaryCall(
        "session", "CreateSession", request, _convert.session_from_proto, True
    )


def get_session(session_id: str) -> UnaryCall[Session]:
    request = session_pb2.GetSessionRequest(id=session_id)
    return UnaryCall(
        "session", "GetSession", request, _convert.session_from_proto, True
    )


def list_sessions(
    page_size: int,
    page_token: str,
    status: SessionStatus | str | None,
    created_after: datetime.datetime | None,
    created_before: datetime.datetime | None,
) -> UnaryCall[SessionPage]:
    request = session_pb2.ListSessionsRequest(
        page_size=page_size,
        page_token=page_token,
        status=_convert.status_to_proto(status),
    )
    if created_after is not None:
        request.create_time_after.CopyFrom(
            _convert.timestamp_from_datetime(created_after)
        )
    if created_before is not None:
        request.create_time_before.CopyFrom(
            _convert.timestamp_from_datetime(created_before)
        )
    return UnaryCall(
        "session", "ListSessions", request, _convert.session_page_from_proto, True
    )


def update_session(
    session_id: str,
    image_path: str | Unset,
    naive_prompt: str | Unset,
    status: SessionStatus | str | Unset,
    final_alignment_score: float | None | Unset,
    etag: str | None,
) -> UnaryCall[Session]:
    session = session_pb2.Session(id=session_id, etag=etag or "")
    paths = []
    if not isinstance(image_path, Unset):
        session.image_path = image_path
        paths.append("image_path")
    if not isinstance(naive_prompt, Unset):
        session.naive_prompt = naive_prompt
        paths.append("naive_prompt")
    if not isinstance(status, Unset):
        session.status = _convert.status_to_proto(status)
        paths.append("status")
    if not isinstance(final_alignment_score, Unset):
        if final_alignment_score is not None:
            session.final_alignment_score = final_alignment_score
        paths.append("final_alignment_score")
    if not paths:
        raise ValueError("update_session needs at least one field to change")
    request = session_pb2.UpdateSessionRequest(
        session=session, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )
    # Setting the same values twice leaves the session as setting them once,
    # unless an etag makes the second attempt fail with ABORTED.
    return UnaryCall(
        "session",
        "UpdateSession",
        request,
        _convert.session_from_proto,
        retryable=etag is None,
    )


def delete_session(session_id: str) -> UnaryCall[int]:
    request = session_pb2.DeleteSessionRequest(id=session_id)
    # A second attempt after a lost response would return NOT_FOUND.
    return UnaryCall(
        "session",
        "DeleteSession",
        request,
        lambda response: int(response.deleted_records),
        retryable=False,
    )


def create_prompt(
    session_id: str,
    iteration: int,
    positive_prompt: str,
    negative_prompt: str,
    quality_score: float | None,
    request_id: str | None,
) -> UnaryCall[Prompt]:
    prompt = session_pb2.Prompt(
        session_id=session_id,
        iteration=iteration,
        positive_prompt=positive_prompt,
        negative_prompt=negative_prompt,
    )
    if quality_score is not None:
        prompt.quality_score = quality_score
    request = session_pb2.CreatePromptRequest(
        prompt=prompt, request_id=request_id or new_request_id()
    )
    return UnaryCall(
        "session", "CreatePrompt", request, _convert.prompt_from_proto, True
    )


def list_prompts(
    session_id: str, page_token: str = ""
) -> UnaryCall[tuple[list[Prompt], str]]:
    request = session_pb2.ListPromptsRequest(
        session_id=session_id, page_token=page_token
    )
    return UnaryCall(
        "session",
        "ListPrompts",
        request,
        lambda response: (
            [_convert.prompt_from_proto(item) for item in response.prompts],
            response.next_page_token,
        ),
        True,
    )


def batch_create_entities(
    session_id: str,
    entities: Iterable[Entity | Mapping[str, Any]],
    request_id: str | None,
) -> UnaryCall[list[Entity]]:
    request = session_pb2.BatchCreateEntitiesRequest(
        session_id=session_id,
        entities=_convert.entities_to_proto(entities),
        request_id=request_id or new_request_id(),
    )
    return UnaryCall(
        "session",
        "BatchCreateEntities",
        request,
        lambda response: [
            _convert.entity_from_proto(item) for item in response.entities
        ],
        True,
    )


def list_entities(
    session_id: str, page_token: str = ""
) -> UnaryCall[tuple[list[Entity], str]]:
    request = session_pb2.ListEntitiesRequest(
        session_id=session_id, page_token=page_token
    )
    return UnaryCall(
        "session",
        "ListEntities",
        request,
        lambda response: (
            [_convert.entity_from_proto(item) for item in response.entities],
            response.next_page_token,
        ),
        True,
    )


def create_validation(
    session_id: str,
    attempt_number: int,
    alignment_score: float | None,
    preserved_count: int,
    modified_count: int,
    unintended_count: int,
    user_feedback: str,
    request_id: str | None,
) -> UnaryCall[Validation]:
    validation = session_pb2.Validation(
        session_id=session_id,
        attempt_number=attempt_number,
        preserved_count=preserved_count,
        modified_count=modified_count,
        unintended_count=unintended_count,
        user_feedback=user_feedback,
    )
    if alignment_score is not None:
        validation.alignment_score = alignment_score
    request = session_pb2.CreateValidationRequest(
        validation=validation, request_id=request_id or new_request_id()
    )
    return UnaryCall(
        "session", "CreateValidation", request, _convert.validation_from_proto, True
    )


def list_validations(
    session_id: str, page_token: str = ""
) -> UnaryCall[tuple[list[Validation], str]]:
    request = session_pb2.ListValidationsRequest(
        session_id=session_id, page_token=page_token
    )
    return UnaryCall(
        "session",
        "ListValidations",
        request,
        lambda response: (
            [_convert.validation_from_proto(item) for item in response.validations],
            response.next_page_token,
        ),
        True,
    )


def create_user_feedback(
    session_id: str,
    feedback_type: FeedbackType | str,
    comments: str,
    rating: int | None,
    request_id: str | None,
) -> UnaryCall[UserFeedback]:
    feedback = session_pb2.UserFeedback(
        session_id=session_id,
        feedback_type=_convert.feedback_type_to_proto(feedback_type),
        comments=comments,
    )
    if rating is not None:
        feedback.rating = rating
    request = session_pb2.CreateUserFeedbackRequest(
        user_feedback=feedback, request_id=request_id or new_request_id()
    )
    return UnaryCall(
        "session",
        "CreateUserFeedback",
        request,
        _convert.user_feedback_from_proto,
        True,
    )


def list_user_feedback(
    session_id: str, page_token: str = ""
) -> UnaryCall[tuple[list[UserFeedback], str]]:
    request = session_pb2.ListUserFeedbackRequest(
        session_id=session_id, page_token=page_token
    )
    return UnaryCall(
        "session",
        "ListUserFeedback",
        request,
        lambda response: (
            [
                _convert.user_feedback_from_proto(item)
                for item in response.user_feedback
            ],
            response.next_page_token,
        ),
        True,
    )


RECORD_KINDS = ("prompts", "entities", "validations", "user_feedback")


def list_records(
    kind: str, session_id: str, page_token: str
) -> UnaryCall[tuple[list[Any], str]]:
    """Return the call that lists one page of a kind of record."""
    factory = {
        "prompts": list_prompts,
        "entities": list_entities,
        "validations": list_validations,
        "user_feedback": list_user_feedback,
    }[kind]
    return factory(session_id, page_token)  # type: ignore[return-value]


def resume_session(
    session_id: str,
) -> UnaryCall[tuple[ResumedSession, dict[str, str]]]:
    """Return the call of ResumeSession; its result also carries, for each kind
    of record, the page token where the rest of that list goes on ("" if none).
    """
    request = session_pb2.ResumeSessionRequest(id=session_id)

    def convert(
        response: session_pb2.ResumeSessionResponse,
    ) -> tuple[ResumedSession, dict[str, str]]:
        tokens = {
            kind: getattr(response, f"{kind}_next_page_token") for kind in RECORD_KINDS
        }
        return _convert.resumed_from_proto(response), tokens

    return UnaryCall("session", "ResumeSession", request, convert, True)


def get_state(session_id: str) -> UnaryCall[StateDocument]:
    request = state_pb2.GetStateRequest(session_id=session_id)
    return UnaryCall("state", "GetState", request, _convert.state_from_proto, True)


def put_state(
    session_id: str,
    document: Mapping[str, Any],
    expected_version: int | None,
    request_id: str | None,
) -> UnaryCall[StateDocument]:
    request = state_pb2.PutStateRequest(
        session_id=session_id,
        document_json=jsondoc.dumps(_require_object(document, "document")),
        request_id=request_id or new_request_id(),
    )
    if expected_version is not None:
        request.expected_version = expected_version
    return UnaryCall("state", "PutState", request, _convert.state_from_proto, True)


def patch_state(
    session_id: str,
    patch: Mapping[str, Any],
    expected_version: int | None,
    request_id: str | None,
) -> UnaryCall[StateDocument]:
    request = state_pb2.PatchStateRequest(
        session_id=session_id,
        merge_patch_json=jsondoc.dumps(_require_object(patch, "patch")),
        request_id=request_id or new_request_id(),
    )
    if expected_version is not None:
        request.expected_version = expected_version
    return UnaryCall("state", "PatchState", request, _convert.state_from_proto, True)


def list_state_versions(
    session_id: str, after_version: int, page_size: int
) -> UnaryCall[StateVersions]:
    request = state_pb2.ListStateVersionsRequest(
        session_id=session_id, after_version=after_version, page_size=page_size
    )
    return UnaryCall(
        "state",
        "ListStateVersions",
        request,
        _convert.state_versions_from_proto,
        True,
    )


def stream_update_request(
    sequence: int,
    session_id: str,
    document: Mapping[str, Any] | None,
    patch: Mapping[str, Any] | None,
    expected_version: int | None,
    request_id: str | None,
) -> state_pb2.StreamStateUpdatesRequest:
    """Build one update of a StreamStateUpdates call: a document or a patch."""
    if (document is None) == (patch is None):
        raise ValueError("give exactly one of document and patch")
    request = state_pb2.StreamStateUpdatesRequest(
        sequence=sequence,
        session_id=session_id,
        request_id=request_id or new_request_id(),
        combine_acknowledgement=True,
    )
    if document is not None:
        request.document_json = jsondoc.dumps(_require_object(document, "document"))
    else:
        assert patch is not None
        request.merge_patch_json = jsondoc.dumps(_require_object(patch, "patch"))
    if expected_version is not None:
        request.expected_version = expected_version
    return request


def _require_object(value: Mapping[str, Any], name: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict, got {type(value).__name__}")
    return value if isinstance(value, dict) else dict(value)
