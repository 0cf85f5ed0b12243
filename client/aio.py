"""The asyncio client: the methods of `Client` as coroutines on ``grpc.aio``.

Example::

    from editstore.client import AsyncClient

    async with AsyncClient("127.0.0.1:50051") as client:
        session = await client.create_session("/photos/1.jpg", "brighten it")
        async for event in client.watch_state(session.id):
            print(event.type, event.state)

Deadlines, retries, request ids and errors work as in `Client`. Create the
client inside the event loop that uses it.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, TypeVar

import grpc
import grpc.aio

from editstore.client import _calls, _convert
from editstore.client._calls import UNSET, Unset
from editstore.client.client import make_settings
from editstore.client.errors import error_from_rpc
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
    WatchEvent,
    WatchEventType,
)
from editstore.client.settings import DEFAULT_TIMEOUT, ClientSettings, RetryPolicy
from editstore.client.streams import AsyncStateUpdateStream
from editstore.v1 import session_pb2_grpc, state_pb2, state_pb2_grpc

__all__ = ["AsyncClient"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class AsyncClient:
    """A ``grpc.aio`` connection to one editstore daemon.

    Takes the same arguments as `Client`. Close it with ``await
    client.close()``, or use it as an async context manager.
    """

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
        server_name_override: str | None = None,
        options: Iterable[tuple[str, Any]] = (),
        settings: ClientSettings | None = None,
    ) -> None:
        self.settings = settings or make_settings(
            address,
            timeout=timeout,
            retry=retry,
            token=token,
            tls=tls,
            root_certificates=root_certificates,
            certificate_chain=certificate_chain,
            private_key=private_key,
            server_name_override=server_name_override,
            options=options,
        )
        if self.settings.uses_tls:
            self._channel = grpc.aio.secure_channel(
                self.settings.address,
                self.settings.channel_credentials(),
                options=self.settings.channel_options(),
            )
        else:
            self._channel = grpc.aio.insecure_channel(
                self.settings.address, options=self.settings.channel_options()
            )
        self._metadata = self.settings.metadata()
        self._session_stub = session_pb2_grpc.SessionServiceStub(self._channel)
        self._state_stub = state_pb2_grpc.StateServiceStub(self._channel)

    @property
    def address(self) -> str:
        return self.settings.address

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # When mypy checks the folder client/, it resolves the editstore.client
    # imports to Any and then flags the TypeVar of the return type.
    async def _invoke(
        self,
        call: _calls.UnaryCall[T],
        timeout: float | None,
        retry: RetryPolicy | None = None,
    ) -> T:  # type: ignore[type-var,unused-ignore]
        stub = self._session_stub if call.service == "session" else self._state_stub
        method = getattr(stub, call.method)
        deadline = self.settings.timeout if timeout is None else timeout
        policy = self.settings.retry if retry is None else retry
        started = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            try:
                response = await method(
                    call.request, timeout=deadline, metadata=self._metadata
                )
            except grpc.RpcError as error:
                wait = policy.backoff(attempts - 1)
                elapsed = time.monotonic() - started
                if (
                    call.retryable
                    and error.code() == grpc.StatusCode.UNAVAILABLE
                    and policy.allows(attempts, elapsed, wait)
                ):
                    logger.info(
                        "%s unavailable, retry %d in %.2f s: %s",
                        call.method,
                        attempts,
                        wait,
                        error.details(),
                    )
                    await asyncio.sleep(wait)
                    continue
                raise error_from_rpc(error) from error
            return call.convert(response)

    # SessionService

    async def create_session(
        self,
        image_path: str,
        naive_prompt: str,
        *,
        status: SessionStatus | str | None = None,
        final_alignment_score: float | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Session:
        """Create a session, IN_PROGRESS unless another ``status`` is given.

        Raises:
            InvalidArgument: ``image_path`` or ``naive_prompt`` is empty.
        """
        call = _calls.create_session(
            image_path, naive_prompt, status, final_alignment_score, request_id
        )
        return await self._invoke(call, timeout)

    async def get_session(
        self, session_id: str, *, timeout: float | None = None
    ) -> Session:
        """Return one session.

        Raises:
            NotFound: The session does not exist.
        """
        return await self._invoke(_calls.get_session(session_id), timeout)

    async def list_sessions(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        status: SessionStatus | str | None = None,
        created_after: datetime.datetime | None = None,
        created_before: datetime.datetime | None = None,
        timeout: float | None = None,
    ) -> SessionPage:
        """Return one page of sessions, newest first.

        ``page_size`` 0 means the daemon's default (50). Pass the page's
        ``next_page_token`` with the same filters to get the next page, or
        use `iter_sessions`.
        """
        call = _calls.list_sessions(
            page_size, page_token, status, created_after, created_before
        )
        return await self._invoke(call, timeout)

    async def iter_sessions(
        self,
        *,
        page_size: int = 0,
        status: SessionStatus | str | None = None,
        created_after: datetime.datetime | None = None,
        created_before: datetime.datetime | None = None,
    ) -> AsyncIterator[Session]:
        """Yield every session that matches, newest first, page by page."""
        token = ""
        while True:
            page = await self.list_sessions(
                page_size=page_size,
                page_token=token,
                status=status,
                created_after=created_after,
                created_before=created_before,
            )
            for session in page.sessions:
                yield session
            token = page.next_page_token
            if not token:
                return

    async def update_session(
        self,
        session_id: str,
        *,
        image_path: str | Unset = UNSET,
        naive_prompt: str | Unset = UNSET,
        status: SessionStatus | str | Unset = UNSET,
        final_alignment_score: float | None | Unset = UNSET,
        etag: str | None = None,
        timeout: float | None = None,
    ) -> Session:
        """Change the fields given and leave the others as they are.

        ``final_alignment_score=None`` clears the score. With ``etag`` (from
        a `Session` read earlier) the update applies only to that version.

        Raises:
            NotFound: The session does not exist.
            FailedPrecondition: The session is COMPLETED or FAILED and the
                status would change.
            Aborted: ``etag`` does not match the stored session.
        """
        call = _calls.update_session(
            session_id, image_path, naive_prompt, status, final_alignment_score, etag
        )
        return await self._invoke(call, timeout)

    async def delete_session(
        self, session_id: str, *, timeout: float | None = None
    ) -> int:
        """Delete a session with everything that belongs to it.

        Returns:
            How many prompts, entities, validations and feedback rows were
            deleted with it.

        Raises:
            NotFound: The session does not exist.
        """
        return await self._invoke(_calls.delete_session(session_id), timeout)

    async def create_prompt(
        self,
        session_id: str,
        iteration: int,
        *,
        positive_prompt: str = "",
        negative_prompt: str = "",
        quality_score: float | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Prompt:
        """Add one prompt iteration to a session.

        Raises:
            NotFound: The session does not exist.
            AlreadyExists: The iteration number is already used.
        """
        call = _calls.create_prompt(
            session_id,
            iteration,
            positive_prompt,
            negative_prompt,
            quality_score,
            request_id,
        )
        return await self._invoke(call, timeout)

    async def list_prompts(
        self, session_id: str, *, timeout: float | None = None
    ) -> list[Prompt]:
        """Return a session's prompts in order of iteration."""
        return await self._all_records("prompts", session_id, "", timeout)

    async def batch_create_entities(
        self,
        session_id: str,
        entities: Iterable[Entity | Mapping[str, Any]],
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> list[Entity]:
        """Add 1 to 1000 entities to a session, all or none.

        Each entity is an `Entity` or a dict of its fields; ``id`` and
        ``session_id`` are ignored.

        Raises:
            NotFound: The session does not exist.
            AlreadyExists: An ``entity_id`` is already used in the session.
            InvalidArgument: An entity breaks a rule; the message gives its
                index in ``entities``.
        """
        call = _calls.batch_create_entities(session_id, entities, request_id)
        return await self._invoke(call, timeout)

    async def list_entities(
        self, session_id: str, *, timeout: float | None = None
    ) -> list[Entity]:
        """Return a session's entities in the order they were added."""
        return await self._all_records("entities", session_id, "", timeout)

    async def create_validation(
        self,
        session_id: str,
        attempt_number: int,
        *,
        alignment_score: float | None = None,
        preserved_count: int = 0,
        modified_count: int = 0,
        unintended_count: int = 0,
        user_feedback: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Validation:
        """Add the validation of one edit attempt.

        Raises:
            NotFound: The session does not exist.
            InvalidArgument: A count or the attempt number is negative, or
                the score is not finite.
        """
        call = _calls.create_validation(
            session_id,
            attempt_number,
            alignment_score,
            preserved_count,
            modified_count,
            unintended_count,
            user_feedback,
            request_id,
        )
        return await self._invoke(call, timeout)

    async def list_validations(
        self, session_id: str, *, timeout: float | None = None
    ) -> list[Validation]:
        """Return a session's validations in the order they were added."""
        return await self._all_records("validations", session_id, "", timeout)

    async def create_user_feedback(
        self,
        session_id: str,
        feedback_type: FeedbackType | str,
        *,
        comments: str = "",
        rating: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> UserFeedback:
        """Add the person's feedback on a session.

        Raises:
            NotFound: The session does not exist.
            InvalidArgument: ``rating`` is outside 1 to 5.
        """
        call = _calls.create_user_feedback(
            session_id, feedback_type, comments, rating, request_id
        )
        return await self._invoke(call, timeout)

    async def list_user_feedback(
        self, session_id: str, *, timeout: float | None = None
    ) -> list[UserFeedback]:
        """Return a session's feedback in the order it was given."""
        return await self._all_records("user_feedback", session_id, "", timeout)

    async def resume_session(
        self, session_id: str, *, timeout: float | None = None
    ) -> ResumedSession:
        """Return a session with all its records and its state document.

        Everything is read in one transaction, so the parts agree.
        """
        call = _calls.resume_session(session_id)
        result: tuple[ResumedSession, dict[str, str]] = await self._invoke(
            call, timeout
        )
        resumed, tokens = result
        # A session too large for one message comes with page tokens for the
        # rest of its records, read here before returning.
        for kind, token in tokens.items():
            if token:
                rest = await self._all_records(kind, session_id, token, timeout)
                getattr(resumed, kind).extend(rest)
        return resumed

    async def _all_records(
        self, kind: str, session_id: str, page_token: str, timeout: float | None
    ) -> list[Any]:
        """Return every record of a kind from ``page_token`` on, page by page."""
        records: list[Any] = []
        while True:
            call = _calls.list_records(kind, session_id, page_token)
            result: tuple[list[Any], str] = await self._invoke(call, timeout)
            page, page_token = result
            records.extend(page)
            if not page_token:
                return records

    # StateService

    async def get_state(
        self, session_id: str, *, timeout: float | None = None
    ) -> StateDocument:
        """Return a session's state document; version 0 when none was written."""
        return await self._invoke(_calls.get_state(session_id), timeout)

    async def put_state(
        self,
        session_id: str,
        document: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> StateDocument:
        """Replace a session's state document.

        ``retry`` replaces the client's retry policy for this call.

        Raises:
            Aborted: ``expected_version`` is not the current version.
            InvalidArgument: The document breaks a rule of state documents.
            ResourceExhausted: The document is over the daemon's size limit.
            ValueError: The document contains NaN or Infinity.
        """
        call = _calls.put_state(session_id, document, expected_version, request_id)
        return await self._invoke(call, timeout, retry)

    async def patch_state(
        self,
        session_id: str,
        patch: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> StateDocument:
        """Apply a JSON merge patch (RFC 7386) to a session's document.

        Members of ``patch`` replace members of the document, ``None``
        removes a member, and dicts merge recursively.

        Raises:
            As `put_state`.
        """
        call = _calls.patch_state(session_id, patch, expected_version, request_id)
        return await self._invoke(call, timeout, retry)

    async def list_state_versions(
        self,
        session_id: str,
        *,
        after_version: int = 0,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> StateVersions:
        """Return the kept versions after ``after_version``, oldest first."""
        call = _calls.list_state_versions(session_id, after_version, page_size)
        return await self._invoke(call, timeout)

    def open_state_stream(
        self, *, timeout: float | None = None
    ) -> AsyncStateUpdateStream:
        """Open a StreamStateUpdates call for sending many updates.

        Call it inside the event loop. ``timeout`` bounds the whole stream;
        ``None`` leaves it open until closed. See `AsyncStateUpdateStream`.
        """
        return AsyncStateUpdateStream(self._state_stub, self._metadata, timeout)

    async def watch_state(
        self,
        session_id: str,
        *,
        from_version: int = 0,
        reconnect: bool = True,
        timeout: float | None = None,
    ) -> AsyncIterator[WatchEvent]:
        """Yield the changes of a session's state document as they commit.

        Works as `Client.watch_state`.
        """
        policy = self.settings.retry
        version = from_version
        failures = 0
        started = time.monotonic()
        while True:
            request = state_pb2.WatchStateRequest(
                session_id=session_id, from_version=version
            )
            call = self._state_stub.WatchState(
                request, metadata=self._metadata, timeout=timeout
            )
            try:
                async for response in call:
                    failures = 0
                    event = _convert.watch_event_from_proto(response)
                    if event is None:
                        continue
                    if event.state is not None:
                        version = event.state.version
                    yield event
                    if event.type == WatchEventType.SESSION_DELETED:
                        return
                return
            except grpc.RpcError as error:
                if failures == 0:
                    started = time.monotonic()
                failures += 1
                wait = policy.backoff(failures - 1)
                if (
                    reconnect
                    and error.code() == grpc.StatusCode.UNAVAILABLE
                    and policy.allows(failures, time.monotonic() - started, wait)
                ):
                    logger.info(
                        "watch of session %s lost, reconnecting from version %d",
                        session_id,
                        version,
                    )
                    await asyncio.sleep(wait)
                    continue
                raise error_from_rpc(error) from error
            finally:
                call.cancel()
