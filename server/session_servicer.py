"""SessionService: translates its messages to ``records`` calls and back."""

from __future__ import annotations

import logging
from typing import TypeAlias

import grpc

from editstore.server import convert, records
from editstore.server.readers import Readers
from editstore.server.writer import Writer
from editstore.v1 import session_pb2 as pb

logger = logging.getLogger(__name__)

Context: TypeAlias = grpc.aio.ServicerContext


class SessionServicer:
    """The methods of editstore.v1.SessionService."""

    def __init__(self, writer: Writer, readers: Readers) -> None:
        self._writer = writer
        self._readers = readers

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
        rows, token = await self._readers.run(
            records.list_sessions,
            request.page_size,
            request.page_token,
            status,
            after,
            before,
        )
        return pb.ListSessionsResponse(
            sessions=[convert.session_message(row) for row in rows],
            next_page_token=token,
        )

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
        rows = await self._readers.run(records.list_prompts, request.session_id)
        return pb.ListPromptsResponse(
            prompts=[convert.prompt_message(row, request.session_id) for row in rows]
        )

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
        rows = await self._readers.run(records.list_entities, request.session_id)
        return pb.ListEntitiesResponse(
            entities=[convert.entity_message(row, request.session_id) for row in rows]
        )

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
        rows = await self._readers.run(records.list_validations, request.session_id)
        return pb.ListValidationsResponse(
            validations=[
                convert.validation_message(row, request.session_id) for row in rows
            ]
        )

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
        rows = await self._readers.run(records.list_feedback, request.session_id)
        return pb.ListUserFeedbackResponse(
            user_feedback=[
                convert.feedback_message(row, request.session_id) for row in rows
            ]
        )

    async def ResumeSession(
        self, request: pb.ResumeSessionRequest, context: Context
    ) -> pb.ResumeSessionResponse:
        bundle = await self._readers.run(records.resume, request.id)
        session_id = request.id
        return pb.ResumeSessionResponse(
            session=convert.session_message(bundle["session"]),
            prompts=[
                convert.prompt_message(row, session_id) for row in bundle["prompts"]
            ],
            entities=[
                convert.entity_message(row, session_id) for row in bundle["entities"]
            ],
            validations=[
                convert.validation_message(row, session_id)
                for row in bundle["validations"]
            ],
            user_feedback=[
                convert.feedback_message(row, session_id)
                for row in bundle["user_feedback"]
            ],
            state=convert.state_message(session_id, bundle["state"]),
        )
