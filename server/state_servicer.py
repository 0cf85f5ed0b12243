"""StateService: state documents, the update stream and watches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeAlias

import grpc

from editstore.server import convert, errors, handlers, states
from editstore.server.events import SessionDeleted, StateChanged
from editstore.server.metrics import CallStats
from editstore.server.readers import Readers
from editstore.server.status import code_of
from editstore.server.watch import Recheck, Watcher, WatchHub
from editstore.server.writer import Writer
from editstore.v1 import session_pb2, state_pb2

logger = logging.getLogger(__name__)

Context: TypeAlias = grpc.aio.ServicerContext
# Updates read from a stream but not yet acknowledged: the stream stops reading
# while this many, or this many documents' worth of bytes, are in flight, which
# bounds the memory one stream holds.
MAX_UPDATES_IN_FLIGHT = 1024
ENCODED_CHANGES_KEPT = 256
# A watch that catches up reads at most this many documents' worth of bytes
# of versions at a time.
CATCH_UP_DOCUMENTS = 4
UPDATE_BYTES_IN_FLIGHT_FACTOR = 4
# An update read and not yet acknowledged: its sequence, the future of its
# write, its size in bytes, and whether the client let it be acknowledged in
# the response of an earlier update (combine_acknowledgement).
_Pending = tuple[int, "asyncio.Future[Any]", int, bool]


class _InFlight:
    """The updates of one stream read and not yet acknowledged, counted in
    updates and in bytes; reading waits while either is at its limit.

    An update is started only after ``acquire`` returns, and is then queued
    at once. So the stream tracks every started update, and cancels the
    unacknowledged ones however it ends.
    """

    def __init__(self, max_updates: int, max_bytes: int) -> None:
        self._max_updates = max_updates
        self._max_bytes = max_bytes
        self._updates = 0
        self._bytes = 0
        self._released = asyncio.Event()

    async def acquire(self, size: int) -> None:
        # One update is always let through, so no size can stall the stream.
        while self._updates and (
            self._updates >= self._max_updates or self._bytes + size > self._max_bytes
        ):
            self._released.clear()
            await self._released.wait()
        self._updates += 1
        self._bytes += size

    def release(self, size: int) -> None:
        self._updates -= 1
        self._bytes -= size
        self._released.set()


class StreamSlots:
    """Count the long-lived streams, refusing new ones over the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    @contextlib.contextmanager
    def hold(self, method: str) -> Iterator[None]:
        if self.open >= self.limit:
            raise errors.ResourceExhausted(
                f"{method}: the daemon has {self.open} streams open, its limit "
                "(--max-streams); retry later or close other streams"
            )
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1


def _applied(future: asyncio.Future[Any]) -> bool:
    """Return whether a write's future contains its result, not an error."""
    return future.done() and not future.cancelled() and future.exception() is None


def _optional(message: Any, field: str) -> int | None:
    return getattr(message, field) if message.HasField(field) else None


class StateServicer:
    """The methods of editstore.v1.StateService."""

    def __init__(
        self,
        writer: Writer,
        readers: Readers,
        hub: WatchHub,
        limits: states.StateLimits,
        slots: StreamSlots,
        heartbeat_seconds: float,
        stats: CallStats | None = None,
    ) -> None:
        self._writer = writer
        self._readers = readers
        self._hub = hub
        self._limits = limits
        self._slots = slots
        self._heartbeat = heartbeat_seconds
        self._stats = CallStats() if stats is None else stats
        # The latest changes, serialized: a hundred watchers of one session
        # share one encoding of each change instead of building their own.
        self._encoded_changes: dict[tuple[str, int], bytes] = {}

    async def GetState(
        self, request: state_pb2.GetStateRequest, context: Context
    ) -> session_pb2.StateDocument:
        state = await self._readers.run(states.get_state, request.session_id)
        return convert.state_message(request.session_id, state)

    async def PutState(
        self, request: state_pb2.PutStateRequest, context: Context
    ) -> session_pb2.StateDocument:
        operation = states.put_state(
            request.session_id,
            request.document_json,
            _optional(request, "expected_version"),
            request.request_id,
            self._limits,
        )
        result = await self._writer.run(operation)
        return convert.state_message(request.session_id, result)

    async def PatchState(
        self, request: state_pb2.PatchStateRequest, context: Context
    ) -> session_pb2.StateDocument:
        operation = states.patch_state(
            request.session_id,
            request.merge_patch_json,
            _optional(request, "expected_version"),
            request.request_id,
            self._limits,
        )
        result = await self._writer.run(operation)
        return convert.state_message(request.session_id, result)

    async def ListStateVersions(
        self, request: state_pb2.ListStateVersionsRequest, context: Context
    ) -> state_pb2.ListStateVersionsResponse:
        versions, oldest = await self._readers.run(
            states.list_versions,
            request.session_id,
            request.after_version,
            request.page_size,
            self._limits.max_document_bytes,
            self._limits.state_history,
        )
        return state_pb2.ListStateVersionsResponse(
            versions=[convert.state_message(request.session_id, v) for v in versions],
            oldest_kept_version=oldest,
        )

    # The update stream

    def _start_update(
        self, update: state_pb2.StreamStateUpdatesRequest, stream: object
    ) -> asyncio.Future[Any]:
        """Queue one update of ``stream`` on the writer; the future fails with
        its error."""
        expected = _optional(update, "expected_version")
        change = update.WhichOneof("change")
        try:
            if change == "document_json":
                operation = states.put_state(
                    update.session_id,
                    update.document_json,
                    expected,
                    update.request_id,
                    self._limits,
                )
            elif change == "merge_patch_json":
                operation = states.patch_state(
                    update.session_id,
                    update.merge_patch_json,
                    expected,
                    update.request_id,
                    self._limits,
                )
            else:
                raise errors.InvalidArgument(
                    "change is required: set document_json or merge_patch_json"
                )
            return self._writer.enqueue(operation, source=stream)
        except errors.StoreError as error:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.set_exception(error)
            return future

    async def StreamStateUpdates(
        self, requests: handlers.RequestReader, context: Context
    ) -> None:
        with self._slots.hold("StreamStateUpdates"):
            pending: asyncio.Queue[_Pending | None] = asyncio.Queue()
            budget = _InFlight(
                MAX_UPDATES_IN_FLIGHT,
                UPDATE_BYTES_IN_FLIGHT_FACTOR * self._limits.max_document_bytes,
            )
            reader = asyncio.create_task(self._read_updates(requests, pending, budget))
            counts = self._stats.stream_updates
            # The item taken from `pending` that could not join the previous
            # response, which is acknowledged next.
            next_items: list[_Pending | None] = []
            item: _Pending | None = None
            try:
                while True:
                    item = next_items.pop() if next_items else await pending.get()
                    if item is None:
                        break
                    sequence, future, size, _ = item
                    # Under load most updates are committed by the time their
                    # turn comes, and reading the result costs less than an await.
                    # The shield keeps a cancelled stream from cancelling this
                    # update alone: `finally` cancels it with the later ones at
                    # once, so the writer never applies a later one without it.
                    try:
                        result = (
                            future.result()
                            if future.done()
                            else await asyncio.shield(future)
                        )
                    except errors.StoreError as error:
                        code = code_of(error)
                        counts[code.name] += 1
                        budget.release(size)
                        await context.write(
                            state_pb2.StreamStateUpdatesResponse(
                                sequence=sequence,
                                code=code.value[0],
                                message=str(error),
                            )
                        )
                        continue
                    counts["OK"] += 1
                    budget.release(size)
                    response = state_pb2.StreamStateUpdatesResponse(
                        sequence=sequence, version=result["version"]
                    )
                    # A response costs the event loop about twice as much as
                    # reading an update. So when the client allows it, this
                    # response also acknowledges the applied updates after it.
                    while not pending.empty():
                        after = pending.get_nowait()
                        if after is None or not after[3] or not _applied(after[1]):
                            next_items.append(after)
                            break
                        response.applied_sequences.append(after[0])
                        response.applied_versions.append(after[1].result()["version"])
                        counts["OK"] += 1
                        budget.release(after[2])
                    await context.write(response)
                await reader
            finally:
                reader.cancel()
                # Updates read but not acknowledged have no one to tell:
                # cancelling them lets the writer skip them.
                left = [item, *next_items]
                while not pending.empty():
                    left.append(pending.get_nowait())
                unacknowledged = [entry[1] for entry in left if entry is not None]
                self._writer.cancel_all(unacknowledged)

    async def _read_updates(
        self,
        requests: handlers.RequestReader,
        pending: asyncio.Queue[_Pending | None],
        budget: _InFlight,
    ) -> None:
        try:
            while (update := await requests.read()) is not None:
                size = update.ByteSize()
                await budget.acquire(size)
                # No await between starting the update and queueing it.
                pending.put_nowait(
                    (
                        update.sequence,
                        self._start_update(update, pending),
                        size,
                        update.combine_acknowledgement,
                    )
                )
        finally:
            pending.put_nowait(None)

    # Watches

    async def WatchState(
        self, request: state_pb2.WatchStateRequest, context: Context
    ) -> None:
        session_id = request.session_id
        if request.from_version < 0:
            raise errors.InvalidArgument(
                f"from_version must not be negative, got {request.from_version}"
            )
        with self._slots.hold("WatchState"):
            watcher = self._hub.subscribe(session_id)
            try:
                await self._watch(watcher, request.from_version, context.write)
            finally:
                self._hub.unsubscribe(watcher)
            if watcher.closed:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "the daemon is shutting down; reconnect with the last version seen",
                )

    async def _watch(
        self,
        watcher: Watcher,
        from_version: int,
        send: Callable[[state_pb2.WatchStateResponse | bytes], Awaitable[None]],
    ) -> None:
        # Responses are written with `send`, not yielded, because each async
        # generator between here and gRPC costs the event loop time per message.
        session_id = watcher.session_id
        # Subscribed first, read second: a change committed in between is in
        # both, and is sent once because versions at or below `last` are skipped.
        current = await self._readers.run(states.get_state, session_id)
        current_version = 0 if current is None else current.version
        if from_version > current_version:
            raise errors.InvalidArgument(
                f"from_version {from_version} is ahead of the current version "
                f"{current_version} of session {session_id!r}"
            )
        if from_version == 0:
            await send(self._snapshot(session_id, current))
            last = current_version
        else:
            last = from_version
            async for event in self._catch_up(session_id, last, current):
                last = max(last, event.state.version)
                await send(event)
        while True:
            if not await watcher.wait(self._heartbeat):
                await send(
                    state_pb2.WatchStateResponse(
                        type=state_pb2.WATCH_EVENT_TYPE_HEARTBEAT
                    )
                )
                continue
            if watcher.closed:
                return
            if watcher.lagged:
                watcher.lagged = False
                try:
                    latest = await self._readers.run(states.get_state, session_id)
                except errors.NotFound:
                    await send(
                        state_pb2.WatchStateResponse(
                            type=state_pb2.WATCH_EVENT_TYPE_SESSION_DELETED
                        )
                    )
                    return
                if latest is not None and latest.version > last:
                    await send(self._snapshot(session_id, latest))
                    last = latest.version
                continue
            while watcher.events:
                event = watcher.pop()
                if isinstance(event, SessionDeleted):
                    await send(
                        state_pb2.WatchStateResponse(
                            type=state_pb2.WATCH_EVENT_TYPE_SESSION_DELETED
                        )
                    )
                    return
                if isinstance(event, Recheck):
                    try:
                        async for response in self._catch_up(session_id, last, None):
                            last = max(last, response.state.version)
                            await send(response)
                    except errors.NotFound:
                        await send(
                            state_pb2.WatchStateResponse(
                                type=state_pb2.WATCH_EVENT_TYPE_SESSION_DELETED
                            )
                        )
                        return
                    continue
                if event.version <= last:
                    continue
                if isinstance(event, StateChanged) and event.version == last + 1:
                    await send(self._encoded_change(event))
                    last = event.version
                    continue
                # A version made by another daemon, or a gap: read the
                # committed versions after `last` from the database.
                async for response in self._catch_up(session_id, last, None):
                    last = max(last, response.state.version)
                    await send(response)

    async def _catch_up(
        self, session_id: str, after: int, current: StateChanged | None
    ) -> AsyncIterator[state_pb2.WatchStateResponse]:
        """Send the kept versions after ``after``; from a missing one on,
        HISTORY_LOST and a snapshot instead.

        Versions are read a page at a time, each page at most a few documents'
        worth of bytes, so a watcher far behind does not load its whole
        history into memory at once.
        """
        versions = await self._catch_up_page(session_id, after)
        lost = not versions and current is not None and current.version > after
        last = after
        while versions and not lost:
            for version in versions:
                # Each page is read on its own, and versions pruned between
                # two reads leave a gap that must not pass in silence.
                if version.version != last + 1:
                    lost = True
                    break
                yield self._change(version)
                last = version.version
            else:
                versions = await self._catch_up_page(session_id, last)
        if lost:
            yield state_pb2.WatchStateResponse(
                type=state_pb2.WATCH_EVENT_TYPE_HISTORY_LOST
            )
            latest = await self._readers.run(states.get_state, session_id)
            yield self._snapshot(session_id, latest)

    async def _catch_up_page(self, session_id: str, after: int) -> list[StateChanged]:
        versions, _ = await self._readers.run(
            states.list_versions,
            session_id,
            after,
            states.MAX_VERSIONS_PAGE,
            CATCH_UP_DOCUMENTS * self._limits.max_document_bytes,
            self._limits.state_history,
        )
        return versions

    @staticmethod
    def _snapshot(
        session_id: str, state: StateChanged | None
    ) -> state_pb2.WatchStateResponse:
        return state_pb2.WatchStateResponse(
            type=state_pb2.WATCH_EVENT_TYPE_SNAPSHOT,
            state=convert.state_message(session_id, state),
        )

    def _encoded_change(self, event: StateChanged) -> bytes:
        """Return a CHANGE response serialized once for all of its watchers."""
        key = (event.session_id, event.version)
        encoded = self._encoded_changes.get(key)
        if encoded is None:
            encoded = self._change(event).SerializeToString()
            self._encoded_changes[key] = encoded
            if len(self._encoded_changes) > ENCODED_CHANGES_KEPT:
                del self._encoded_changes[next(iter(self._encoded_changes))]
        return encoded

    def _change(self, event: StateChanged) -> state_pb2.WatchStateResponse:
        patch = event.merge_patch or ""
        # A document near the size limit and a patch as large together pass
        # the message limit (the document limit plus 64 KiB), so the patch is
        # left out; the client reads the document instead.
        if patch:
            size = len(event.document.encode()) + len(patch.encode())
            if size > self._limits.max_document_bytes:
                patch = ""
        return state_pb2.WatchStateResponse(
            type=state_pb2.WATCH_EVENT_TYPE_CHANGE,
            state=convert.state_message(event.session_id, event),
            merge_patch_json=patch,
        )
