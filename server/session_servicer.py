"""SessionService: translates its messages to ``records`` calls and back."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeAlias

import grpc

from editstore.server import convert, records
from editstore.server.readers import Readers
from editstore.server.records import Row
from editstore.server.writer import Writer
from editstore.v1 import session_pb2 as pb

logger = logging.getLogger(__name__)

Context: TypeAlias = grpc.aio.ServicerContext
GRPC_DEFAULT_MESSAGE_BYTES = 4 * 1024 * 1024


class SessionServicer:
    """The methods of editstore.v1.SessionService."""

    def __init__(
        self, writer: Writer, readers: Readers, max_message_bytes: int
    ) -> None:
        self._writer = writer
        self._readers = readers
        # Pages, and the records of a resumed session, stay under gRPC's
        # default receive limit of 4 MiB, so clients with default settings
        # can read them. Only a state document near its limit needs the
        # larger limit. The margin is for framing.
        self._page_bytes = min(max_message_bytes, GRPC_DEFAULT_MESSAGE_BYTES) - 1024

    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: Context
    ) -> pb.Session:
        fields = convert.session_fields(request.session)
        row = await self._writer.run(records.create_session(fields, request.request_id))
        logger.debug("created session %s", row["id"])
        return convert.session_message(row)

    async def GetSession(
        self, request: pb.GetSessionRequest, context: Context
    ) -> pb.Session:
        row = await self._readers.run(records.get_session, request.id)
        return convert.session_message(row)

    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: Context
    ) -> pb.ListSessionsResponse:
        status = convert.status_text("status", request.status)
        after = (
            convert.to_datetime("create_time_after", request.create_time_after)
            if request.HasField("create_time_after")
            else None
        )
        before = (
            convert.to_datetime("create_time_before", request.create_time_before)
            if request.HasField("create_time_before")
            else None
        )
        rows, token, filters = await self._readers.run(
            records.list_sessions,
            request.page_size,
            request.page_token,
            status,
            after,
            before,
        )
        sessions = [convert.session_message(row) for row in rows]
        count = fitting(sessions, self._page_bytes)
        if count < len(sessions):
            token = records.encode_page_token(rows[count - 1], filters)
        return pb.ListSessionsResponse(sessions=sessions[:count], next_page_token=token)

    async def UpdateSession(
        self, request: pb.UpdateSessionRequest, context: Context
    ) -> pb.Session:
        paths = list(request.update_mask.paths)
        changes = convert.session_changes(request.session, paths)
        operation = records.update_session(
            request.session.id, changes, request.session.etag
        )
        row = await self._writer.run(operation)
        logger.debug("updated session %s: %s", request.session.id, ", ".join(changes))
        return convert.session_message(row)

    async def DeleteSession(
        self, request: pb.DeleteSessionRequest, context: Context
    ) -> pb.DeleteSessionResponse:
        deleted = await self._writer.run(records.delete_session(request.id))
        logger.info("deleted session %s with %d records", request.id, deleted)
        return pb.DeleteSessionResponse(deleted_records=deleted)

    async def CreatePrompt(
        self, request: pb.CreatePromptRequest, context: Context
    ) -> pb.Prompt:
        session_id = request.prompt.session_id
        fields = convert.prompt_fields(request.prompt)
        operation = records.create_prompt(session_id, fields, request.request_id)
        row = await self._writer.run(operation)
        return convert.prompt_message(row, session_id)

    async def ListPrompts(
        self, request: pb.ListPromptsRequest, context: Context
    ) -> pb.ListPromptsResponse:
        rows, token = await self._list("prompts", request)
        return pb.ListPromptsResponse(prompts=rows, next_page_token=token)

    async def BatchCreateEntities(
        self, request: pb.BatchCreateEntitiesRequest, context: Context
    ) -> pb.BatchCreateEntitiesResponse:
        entities = [convert.entity_fields(entity) for entity in request.entities]
        operation = records.create_entities(
            request.session_id, entities, request.request_id
        )
        rows = await self._writer.run(operation)
        return pb.BatchCreateEntitiesResponse(
            entities=[convert.entity_message(row, request.session_id) for row in rows]
        )

    async def ListEntities(
        self, request: pb.ListEntitiesRequest, context: Context
    ) -> pb.ListEntitiesResponse:
        rows, token = await self._list("entities", request)
        return pb.ListEntitiesResponse(entities=rows, next_page_token=token)

    async def CreateValidation(
        self, request: pb.CreateValidationRequest, context: Context
    ) -> pb.Validation:
        session_id = request.validation.session_id
        fields = convert.validation_fields(request.validation)
        operation = records.create_validation(session_id, fields, request.request_id)
        row = await self._writer.run(operation)
        return convert.validation_message(row, session_id)

    async def ListValidations(
        self, request: pb.ListValidationsRequest, context: Context
    ) -> pb.ListValidationsResponse:
        rows, token = await self._list("validations", request)
        return pb.ListValidationsResponse(validations=rows, next_page_token=token)

    async def CreateUserFeedback(
        self, request: pb.CreateUserFeedbackRequest, context: Context
    ) -> pb.UserFeedback:
        session_id = request.user_feedback.session_id
        fields = convert.feedback_fields(request.user_feedback)
        operation = records.create_feedback(session_id, fields, request.request_id)
        row = await self._writer.run(operation)
        return convert.feedback_message(row, session_id)

    async def ListUserFeedback(
        self, request: pb.ListUserFeedbackRequest, context: Context
    ) -> pb.ListUserFeedbackResponse:
        rows, token = await self._list("user_feedback", request)
        return pb.ListUserFeedbackResponse(user_feedback=rows, next_page_token=token)

    async def _list(self, kind: str, request: Any) -> tuple[list[Any], str]:
        session_id = request.session_id
        rows = await self._readers.run(
            records.list_children,
            kind,
            session_id,
            request.page_size,
            request.page_token,
        )
        page_size = request.page_size or records.DEFAULT_CHILD_PAGE_SIZE
        return self._page(kind, session_id, rows, page_size, self._page_bytes)

    @staticmethod
    def _page(
        kind: str, session_id: str, rows: list[Row], page_size: int, budget: int
    ) -> tuple[list[Any], str]:
        """Return the messages of the rows that fit and the next page's token."""
        to_message = CHILD_MESSAGES[kind]
        messages = [to_message(row, session_id) for row in rows[:page_size]]
        count = fitting(messages, budget)
        if count == len(messages) and len(rows) <= page_size:
            return messages, ""
        last = rows[count - 1] if count else None
        return messages[:count], records.child_page_token(kind, session_id, last)

    async def ResumeSession(
        self, request: pb.ResumeSessionRequest, context: Context
    ) -> pb.ResumeSessionResponse:
        bundle = await self._readers.run(records.resume, request.id)
        session_id = request.id
        response = pb.ResumeSessionResponse(
            session=convert.session_message(bundle["session"]),
            state=convert.state_message(session_id, bundle["state"]),
        )
        # The records fill what the session and its state leave of a page;
        # with a large state they all wait for the next pages.
        budget = max(0, self._page_bytes - response.ByteSize())
        for kind in records.CHILD_KINDS:
            messages, token = self._page(
                kind,
                session_id,
                bundle[kind],
                records.DEFAULT_CHILD_PAGE_SIZE,
                budget,
            )
            getattr(response, kind).extend(messages)
            setattr(response, f"{kind}_next_page_token", token)
            budget -= sum(message.ByteSize() + 8 for message in messages)
        return response


CHILD_MESSAGES: dict[str, Callable[[Row, str], Any]] = {
    "prompts": convert.prompt_message,
    "entities": convert.entity_message,
    "validations": convert.validation_message,
    "user_feedback": convert.feedback_message,
}


def fitting(messages: list[Any], budget: int) -> int:
    """Return how many of the messages fit in ``budget`` bytes as repeated fields."""
    total = 0
    for index, message in enumerate(messages):
        # A repeated field adds a tag and a length prefix to each element.
        total += message.ByteSize() + 8
        if total > budget:
            return index
    return len(messages)
