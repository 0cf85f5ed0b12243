"""`AsyncStateWriter`: `StateWriter` for asyncio agents and `AsyncClient`.

The writer has the contract of `editstore.client.writer.StateWriter`, with a
task on the running event loop in place of a thread:

- `AsyncStateWriter.update` is a plain method. It copies the patch, queues
  it and returns without I/O;
- the task merges the queued patches and sends them with ``PatchState``
  every ``flush_interval`` seconds (5 unless set), and at once for an
  important update: ``important=True``, a change of the top-level
  ``current_stage``, a top-level ``status``, or a true top-level
  ``completed``;
- ``await flush()`` sends at once and waits for the acknowledgement, and
  raises the error of a batch the daemon rejected;
- each batch carries a request id and is sent again with it after a
  transient error, with backoff and full jitter, until it is acknowledged
  or the writer is closed;
- with ``journal_path`` it keeps the same journal as `StateWriter`, so
  either writer can recover the other's. The journal is written on a worker
  thread (``asyncio.to_thread``) and always before the send it records.

No interpreter-exit hook can send for a loop that has stopped, so close the
writer: ``await writer.close()``, or use it as an async context manager::

    async with AsyncClient("127.0.0.1:50051") as client:
        session = await client.create_session("/photos/1.jpg", "brighten it")
        async with AsyncStateWriter(client, session.id) as writer:
            writer.update({"current_stage": "analysis"})
            writer.update({"scene_analysis": {"spatial_layout": "sky on top"}})

A writer left open when its event loop stops (``asyncio.run`` cancels its
task) writes what is unsent to its journal and logs a warning. A writer
that is garbage-collected with updates unsent logs a warning too. Without a
journal, those updates are lost. To resume from a journal::

    writer = AsyncStateWriter.recover(client, "state/session.json")
    await writer.flush()

Create the writer inside the event loop that uses it, call its methods from
that loop's thread only, and close it before its client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import grpc.aio

from editstore.client._patch_queue import (
    DEFAULT_BACKOFF,
    DEFAULT_EXIT_TIMEOUT,
    DEFAULT_FLUSH_INTERVAL,
    JOURNAL_DELAY,
    NO_RETRY,
    FlushRequest,
    closed_client_error,
    log_unsent_at_stop,
)
from editstore.client._writer_base import WriterBase
from editstore.client.errors import EditstoreError
from editstore.client.journal import write_atomic
from editstore.client.models import StateDocument
from editstore.client.settings import RetryPolicy

__all__ = ["AsyncStateTransport", "AsyncStateWriter"]

logger = logging.getLogger(__name__)


class AsyncStateTransport(Protocol):
    """The part of a client the writer uses; `AsyncClient` implements it."""

    async def patch_state(
        self,
        session_id: str,
        patch: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> StateDocument: ...


class _AsyncFlushRequest(FlushRequest):
    """A `flush` or `close` waiting for the updates queued before it."""

    def __init__(self, closing: bool, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(closing)
        self.done: asyncio.Future[None] = loop.create_future()

    def release(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class AsyncStateWriter(WriterBase[AsyncStateTransport]):
    """Buffers state updates of one session and sends them from a task.

    Args:
        client: An `AsyncClient` (or any object with its ``patch_state``).
        session_id: The session whose document is updated.
        flush_interval: Seconds between sends of queued updates.
        journal_path: Where to keep the journal; ``None`` for no journal.
            An existing journal is read here, on the calling thread.
        exit_timeout: Seconds `close` and the ``async with`` block wait for
            the last acknowledgement.
        call_timeout: The deadline of each send, in seconds; ``None`` uses
            the client's.
        backoff: The waits between attempts to send a batch after a
            transient error. Only its backoff is used: the writer retries
            until the batch is acknowledged or the writer is closed.
        clock: The time source, in seconds; tests pass a fake one and call
            `wake` after moving it.

    Raises:
        RuntimeError: No event loop is running in this thread.
        ValueError: The journal at ``journal_path`` belongs to another
            session or cannot be parsed.
    """

    def __init__(
        self,
        client: AsyncStateTransport,
        session_id: str,
        *,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        journal_path: str | os.PathLike[str] | None = None,
        exit_timeout: float = DEFAULT_EXIT_TIMEOUT,
        call_timeout: float | None = None,
        backoff: RetryPolicy = DEFAULT_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        super().__init__(
            client,
            session_id,
            flush_interval=flush_interval,
            journal_path=journal_path,
            exit_timeout=exit_timeout,
            call_timeout=call_timeout,
            backoff=backoff,
            clock=clock,
            logger=logger,
        )
        self._stop_logged = False
        self._journal_write: asyncio.Future[None] | None = None

        # Let wake() wait for a pass of the task that began after it.
        self._passes_started = 0
        self._passes_done = 0
        self._pass_waiters: list[tuple[int, asyncio.Future[None]]] = []

        self._task = self._loop.create_task(
            self._run(), name=f"editstore-state-writer-{session_id}"
        )

    @property
    def last_state(self) -> StateDocument | None:
        """The document the daemon returned for the last acknowledged batch."""
        return self._queue.last_state()

    # The caller's side.

    async def flush(self, timeout: float | None = None) -> bool:
        """Send every queued update now and wait for the acknowledgement.

        Args:
            timeout: Seconds to wait; ``None`` waits until acknowledged.

        Returns:
            True when every update queued before the call is acknowledged;
            False when the timeout came first (they stay queued) or the
            writer's task has stopped.

        Raises:
            EditstoreError: The daemon rejected a batch holding one of them.
            RuntimeError: The writer is closed.
        """
        if self._closed:
            raise RuntimeError(f"state writer of session {self.session_id} is closed")
        request = _AsyncFlushRequest(False, self._loop)
        self._inbox.append(request)
        self._wake_now()
        await asyncio.wait(
            [request.done, self._task],
            timeout=timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if not request.done.done():
            return False
        if request.error is not None:
            raise request.error
        return True

    async def close(self, timeout: float | None = None) -> bool:
        """Send what is queued, wait for it, and stop the writer's task.

        Waits at most ``timeout`` seconds (``exit_timeout`` when ``None``).
        When the daemon has not acknowledged everything by then, the task is
        cancelled and the journal (if any) keeps what is unsent for
        `recover`.

        Returns:
            True when everything was acknowledged.
        """
        if not self._mark_closed():
            return self._task.done() and not self._has_unsent()
        request = _AsyncFlushRequest(True, self._loop)
        self._inbox.append(request)
        self._wake_now()
        limit = self.exit_timeout if timeout is None else timeout
        await asyncio.wait([self._task], timeout=limit)
        if not self._task.done():
            # The task journals and logs what it leaves unsent.
            self._task.cancel()
            await asyncio.wait([self._task])
            return False
        if request.error is not None:
            logger.error(
                "state writer of session %s closed after an error: %s",
                self.session_id,
                request.error,
            )
        return not self._has_unsent()

    async def __aenter__(self) -> AsyncStateWriter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def wake(self, wait: bool = True) -> None:
        """Make the task look at the clock and its queue now.

        With ``wait``, return once a pass of the task that began after this
        call has finished, e.g. after moving a fake clock.
        """
        target = self._passes_started + 1
        self._wake_now()
        if not wait or self._task.done():
            return
        passed: asyncio.Future[None] = self._loop.create_future()
        self._pass_waiters.append((target, passed))
        await asyncio.wait([passed, self._task], return_when=asyncio.FIRST_COMPLETED)

    def _has_unsent(self) -> bool:
        return self._unsent_count() > 0

    def _unsent_count(self) -> int:
        """Count the updates not drained yet and the patches not acknowledged."""
        queued = sum(not isinstance(item, FlushRequest) for item in self._inbox)
        return queued + self._queue.unsent_count()

    def __del__(self) -> None:
        # Runs when the writer's loop was closed without cancelling its task.
        # After a failed __init__ some attributes are missing.
        if getattr(self, "_closed", True) or getattr(self, "_stop_logged", True):
            return
        unsent = self._unsent_count()
        if unsent:
            logger.warning(
                "state writer of session %s was garbage-collected with %d "
                "update(s) unsent and never closed; await close() or use "
                "'async with' to send them",
                self.session_id,
                unsent,
            )

    # The task's side.

    async def _run(self) -> None:
        try:
            keep_running = True
            while keep_running:
                await self._wait_for_wakeup(self._queue.seconds_until_due())
                self._urgent_wake = False
                self._passes_started += 1
                try:
                    keep_running = await self._run_pass()
                except Exception:
                    logger.exception(
                        "state writer of session %s failed; retrying", self.session_id
                    )
                    self._queue.schedule_retry()
                finally:
                    self._passes_done += 1
                    self._release_pass_waiters()
                if keep_running and self._should_gather_journal():
                    await self._gather_journal()
        except asyncio.CancelledError:
            await self._stop_with_unsent()
            raise
        finally:
            self._release_journal()

    async def _gather_journal(self) -> None:
        """Wait JOURNAL_DELAY seconds, so that the updates meanwhile go into
        one journal write. Only a flush, a close or an important update ends
        the wait early."""
        deadline = self._loop.time() + JOURNAL_DELAY
        while not self._urgent_wake:
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                break
            await self._wait_for_wakeup(remaining)
        self._end_journal_gathering()

    async def _wait_for_wakeup(self, seconds: float) -> None:
        if seconds <= 0:
            # Still yield, so that a pass that keeps being due cannot starve
            # the loop.
            await asyncio.sleep(0)
        elif not self._wakeup.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._wakeup.wait()
        self._wakeup.clear()

    def _release_pass_waiters(self) -> None:
        remaining = []
        for target, passed in self._pass_waiters:
            if self._passes_done >= target:
                if not passed.done():
                    passed.set_result(None)
            else:
                remaining.append((target, passed))
        self._pass_waiters = remaining

    async def _run_pass(self) -> bool:
        queue = self._queue
        queue.drain(self._inbox)
        while queue.send_is_due():
            queue.prepare_send()
            await self._save_journal()
            await self._send_batches()
        queue.end_pass()
        await self._save_journal()
        queue.release_waiters()
        return not queue.is_finished()

    async def _send_batches(self) -> None:
        queue = self._queue
        while queue.batches:
            batch = queue.batches[0]
            error: EditstoreError | None = None
            state: StateDocument | None = None
            try:
                state = await self._client.patch_state(
                    self.session_id,
                    batch.patch,
                    request_id=batch.request_id,
                    timeout=self._call_timeout,
                    retry=NO_RETRY,
                )
            except EditstoreError as caught:
                error = caught
            except (ValueError, grpc.aio.UsageError) as caught:
                # grpc.aio raises UsageError on a closed channel.
                error = closed_client_error(caught, "AsyncStateWriter", "AsyncClient")
            if not queue.finish_attempt(batch, state, error):
                return

    async def _stop_with_unsent(self) -> None:
        """Journal and log what the cancelled task leaves unsent.

        A batch in flight stays in the journal with its request id, so
        sending it again later cannot apply it twice.
        """
        self._queue.drain(self._inbox)
        unsent = self._queue.unsent_count()
        if unsent == 0:
            return
        await self._save_journal(force=True)
        self._stop_logged = True
        if not self._closed:
            logger.warning(
                "state writer of session %s was cancelled before close(), as "
                "asyncio.run() cancels the tasks left at its end. Await close() "
                "or use 'async with' to send every update",
                self.session_id,
            )
        log_unsent_at_stop(
            logger, self.session_id, unsent, self.journal_path, "AsyncStateWriter"
        )

    # The journal.

    async def _save_journal(self, force: bool = False) -> None:
        """Write the journal if it changed, on a worker thread."""
        queue = self._queue
        if self.journal_path is None or not (queue.journal_dirty or force):
            return
        # Serialised on the loop, where only this task changes the queue, so
        # the thread gets bytes that nothing else can change.
        data = queue.journal().to_json().encode("utf-8")
        previous = self._journal_write
        if previous is not None and not previous.done():
            # A write left running by a cancelled task must land first, or
            # it would replace this newer journal.
            await asyncio.wait([previous])
        write = asyncio.ensure_future(
            asyncio.to_thread(write_atomic, self.journal_path, data)
        )
        self._journal_write = write
        try:
            # Shielded so that a cancelled task leaves the write to finish,
            # and the write after it waits for it.
            await asyncio.shield(write)
        except OSError as error:
            self._journal_failed(error)
            return
        queue.journal_dirty = False
