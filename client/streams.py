"""Helpers around StreamStateUpdates: many state updates on one stream.

Each update sent gets a future that resolves once the daemon has made the
update durable, or fails with the `EditstoreError` of its status code. The
daemon keeps reading while earlier updates commit, so a caller can send many
updates before the first acknowledgement::

    with client.open_state_stream() as stream:
        futures = [stream.send_patch(sid, {"step": i}) for i in range(100)]
        versions = [future.result().version for future in futures]

Streams are not retried: when the connection is lost, every update not yet
acknowledged fails with `Unavailable`. Each update carries a request id, so
sending it again on a new stream (with the same ``request_id``) is safe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import queue
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import grpc

from editstore.client import _calls
from editstore.client.errors import (
    EditstoreError,
    Internal,
    Unavailable,
    error_for_code,
    error_from_rpc,
)
from editstore.client.models import StateUpdateResult

__all__ = ["AsyncStateUpdateStream", "StateUpdateStream"]

logger = logging.getLogger(__name__)

_END = object()
# Seconds a failed write waits for the stream's reader to see how it ended.
STREAM_END_WAIT = 5.0


class _Acknowledgements:
    """The futures of the updates sent and not yet acknowledged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sequences = itertools.count(1)
        self._waiting: dict[int, Any] = {}
        self.error: EditstoreError | None = None

    def register(self, future: Any) -> int:
        with self._lock:
            if self.error is not None:
                raise self.error
            sequence = next(self._sequences)
            self._waiting[sequence] = future
            return sequence

    def resolve(self, sequence: int, version: int, code: int, message: str) -> None:
        with self._lock:
            future = self._waiting.pop(sequence, None)
        if future is None:
            logger.warning("acknowledgement for unknown sequence %s", sequence)
            return
        if code == 0:
            _settle(future, StateUpdateResult(sequence=sequence, version=version))
        else:
            _settle(future, error_for_code(code, message))

    def resolve_all(self, response: Any) -> None:
        """Resolve the futures of every update that a response acknowledges,
        including those in its ``applied_sequences``."""
        self.resolve(
            response.sequence, response.version, response.code, response.message
        )
        for sequence, version in zip(
            response.applied_sequences, response.applied_versions, strict=True
        ):
            self.resolve(sequence, version, 0, "")

    def fail_all(self, error: EditstoreError) -> None:
        with self._lock:
            self.error = error
            waiting = list(self._waiting.values())
            self._waiting.clear()
        for future in waiting:
            _settle(future, error)

    def forget(self, sequence: int) -> None:
        """Drop the future of an update that was never sent."""
        with self._lock:
            self._waiting.pop(sequence, None)


def _stream_error(rpc_error: grpc.RpcError) -> EditstoreError:
    """Return the error of a stream that ended with ``rpc_error``.

    The daemon never ends a call with INTERNAL, so an INTERNAL status comes
    from the connection breaking, as when the daemon is killed. It becomes
    `Unavailable`, like other lost connections, so the caller resends.
    """
    error = error_from_rpc(rpc_error)
    if isinstance(error, Internal):
        return Unavailable(f"the stream broke: {error.message}")
    return error


def _settle(future: Any, outcome: StateUpdateResult | EditstoreError) -> None:
    """Set a future's result or error, unless its caller cancelled it (for
    example ``asyncio.wait_for`` on a timeout): the updates after it are
    still resolved."""
    if future.done():
        return
    try:
        if isinstance(outcome, EditstoreError):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except (asyncio.InvalidStateError, concurrent.futures.InvalidStateError):
        pass  # cancelled meanwhile, by another thread


class StateUpdateStream:
    """A StreamStateUpdates call on a synchronous channel.

    Built by `Client.open_state_stream`. Thread-safe: several threads may
    send on one stream.
    """

    def __init__(
        self,
        stub: Any,
        metadata: tuple[tuple[str, str], ...],
        timeout: float | None,
    ) -> None:
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._acks = _Acknowledgements()
        self._send_lock = threading.Lock()
        self._closed = False
        self._call = stub.StreamStateUpdates(
            self._request_iterator(), metadata=metadata, timeout=timeout
        )
        self._reader = threading.Thread(
            target=self._read, name="editstore-state-stream", daemon=True
        )
        self._reader.start()

    def _request_iterator(self) -> Iterator[Any]:
        while True:
            item = self._requests.get()
            if item is _END:
                return
            yield item

    def _read(self) -> None:
        try:
            for response in self._call:
                self._acks.resolve_all(response)
            error: EditstoreError = Unavailable("the stream ended")
        except grpc.RpcError as rpc_error:
            error = _stream_error(rpc_error)
        self._acks.fail_all(error)

    def send_patch(
        self,
        session_id: str,
        patch: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        request_id: str | None = None,
    ) -> concurrent.futures.Future[StateUpdateResult]:
        """Send a JSON merge patch; the future resolves when it is durable."""
        return self._send(session_id, None, patch, expected_version, request_id)

    def send_document(
        self,
        session_id: str,
        document: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        request_id: str | None = None,
    ) -> concurrent.futures.Future[StateUpdateResult]:
        """Send a whole document; the future resolves when it is durable."""
        return self._send(session_id, document, None, expected_version, request_id)

    def patch(
        self, session_id: str, patch: Mapping[str, Any], **kwargs: Any
    ) -> StateUpdateResult:
        """Send a patch and wait for its acknowledgement."""
        return self.send_patch(session_id, patch, **kwargs).result()

    def _send(
        self,
        session_id: str,
        document: Mapping[str, Any] | None,
        patch: Mapping[str, Any] | None,
        expected_version: int | None,
        request_id: str | None,
    ) -> concurrent.futures.Future[StateUpdateResult]:
        future: concurrent.futures.Future[StateUpdateResult] = (
            concurrent.futures.Future()
        )
        with self._send_lock:
            if self._closed:
                raise RuntimeError("the state stream is closed")
            sequence = self._acks.register(future)
            request = _calls.stream_update_request(
                sequence, session_id, document, patch, expected_version, request_id
            )
            self._requests.put(request)
        return future

    def close(self, timeout: float | None = None) -> None:
        """Stop sending and wait up to ``timeout`` s for the last acks."""
        with self._send_lock:
            if self._closed:
                return
            self._closed = True
            self._requests.put(_END)
        self._reader.join(timeout)
        if self._reader.is_alive():
            self._call.cancel()

    def __enter__(self) -> StateUpdateStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncStateUpdateStream:
    """A StreamStateUpdates call on an asyncio channel.

    Built by `AsyncClient.open_state_stream`; use it from one event loop.
    """

    def __init__(
        self,
        stub: Any,
        metadata: tuple[tuple[str, str], ...],
        timeout: float | None,
    ) -> None:
        self._acks = _Acknowledgements()
        self._closed = False
        self._call = stub.StreamStateUpdates(metadata=metadata, timeout=timeout)
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for response in self._call:
                self._acks.resolve_all(response)
            error: EditstoreError = Unavailable("the stream ended")
        except grpc.RpcError as rpc_error:
            error = _stream_error(rpc_error)
        self._acks.fail_all(error)

    async def send_patch(
        self,
        session_id: str,
        patch: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        request_id: str | None = None,
    ) -> asyncio.Future[StateUpdateResult]:
        """Send a JSON merge patch; the future resolves when it is durable."""
        return await self._send(session_id, None, patch, expected_version, request_id)

    async def send_document(
        self,
        session_id: str,
        document: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        request_id: str | None = None,
    ) -> asyncio.Future[StateUpdateResult]:
        """Send a whole document; the future resolves when it is durable."""
        return await self._send(
            session_id, document, None, expected_version, request_id
        )

    async def patch(
        self, session_id: str, patch: Mapping[str, Any], **kwargs: Any
    ) -> StateUpdateResult:
        """Send a patch and wait for its acknowledgement."""
        return await (await self.send_patch(session_id, patch, **kwargs))

    async def _send(
        self,
        session_id: str,
        document: Mapping[str, Any] | None,
        patch: Mapping[str, Any] | None,
        expected_version: int | None,
        request_id: str | None,
    ) -> asyncio.Future[StateUpdateResult]:
        if self._closed:
            raise RuntimeError("the state stream is closed")
        future: asyncio.Future[StateUpdateResult] = (
            asyncio.get_running_loop().create_future()
        )
        sequence = self._acks.register(future)
        try:
            request = _calls.stream_update_request(
                sequence, session_id, document, patch, expected_version, request_id
            )
            await self._call.write(request)
        except grpc.RpcError as rpc_error:
            self._discard(sequence, future)
            raise await self._ended(_stream_error(rpc_error)) from rpc_error
        except asyncio.InvalidStateError as state_error:
            # gRPC raises this ("RPC already finished") for a write on a call
            # that has already ended.
            self._discard(sequence, future)
            ended = Unavailable(f"the stream ended: {state_error}")
            raise await self._ended(ended) from state_error
        except BaseException:
            self._discard(sequence, future)
            raise
        return future

    def _discard(self, sequence: int, future: asyncio.Future[Any]) -> None:
        """Drop the future of an update whose write failed; the caller gets
        the error from ``_send`` instead."""
        self._acks.forget(sequence)
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            # The reader failed it meanwhile; reading the error keeps asyncio
            # from logging it as never retrieved.
            future.exception()

    async def _ended(self, write_error: EditstoreError) -> EditstoreError:
        """Return why the stream ended, once a write on it failed.

        A write on a call that has just failed can raise INTERNAL ("Internal
        error from Core") where the call itself ended with UNAVAILABLE. The
        reader sees the call's own status, so this waits for it briefly.
        """
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), STREAM_END_WAIT)
        except TimeoutError:
            return write_error
        return self._acks.error or write_error

    async def close(self, timeout: float | None = None) -> None:
        """Stop sending and wait up to ``timeout`` s for the last acks."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._call.done_writing()
        except grpc.RpcError:
            pass
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        except TimeoutError:
            self._call.cancel()

    async def __aenter__(self) -> AsyncStateUpdateStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
