"""`StateWriter`: buffered, background updates of one session's state.

An agent calls `StateWriter.update` with a JSON merge patch whenever its
state changes. The call copies the patch, queues it and returns, because a
background thread does all the I/O. That thread merges the queued patches
into one and sends it with ``PatchState``:

- every ``flush_interval`` seconds (5 unless set): a queued update waits at
  most that long after the previous send;
- at once for an important update: ``update(patch, important=True)``, or a
  patch that sets a top-level ``current_stage`` different from the last one
  given to this writer, sets a top-level ``status`` (e.g. ``"completed"`` or
  ``"failed"``), or sets a top-level ``completed`` to a true value;
- at once on `StateWriter.flush`, which waits for the acknowledgement;
- on `StateWriter.close`, on leaving a ``with`` block and at interpreter
  exit, each waiting at most ``exit_timeout`` seconds (10 unless set).

Each merged batch is sent with a request id. A batch that fails with a
transient error (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN) is sent
again with the same id after a backoff with full jitter. The daemon applies
a request id once, so every update is applied exactly once however often it
is down, as long as it still keeps the id (``editstore serve
--request-id-retention-hours``). Updates
queued while a batch is in flight wait in a separate pending patch and go in
the next batch. A batch the daemon rejects (INVALID_ARGUMENT, NOT_FOUND,
RESOURCE_EXHAUSTED, ...) is logged, dropped and raised by the next `flush`;
because updates are merged, the updates merged with the rejected one are
dropped with it.

With ``journal_path`` the writer keeps a journal (see
`editstore.client.journal`): the last acknowledged document and every patch
not yet acknowledged, rewritten atomically within 0.1 s of an update,
before each send, after each acknowledgement and at close. A writer built
on a journal that contains unsent patches sends them at once, with the request
ids they had::

    writer = StateWriter.recover(client, "state/session.json")
    writer.flush()

The writer only applies patches. It never reads the document back, so other
writers of the same session keep their changes. It sends through the client
it was given, so close the writer before closing that client.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

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
from editstore.client.models import StateDocument
from editstore.client.settings import RetryPolicy

__all__ = ["StateTransport", "StateWriter"]

logger = logging.getLogger(__name__)

# Writers not closed yet, closed together at interpreter exit.
_OPEN_WRITERS: set[StateWriter] = set()
_OPEN_WRITERS_LOCK = threading.Lock()


class StateTransport(Protocol):
    """The part of a client the writer uses; `Client` implements it."""

    def patch_state(
        self,
        session_id: str,
        patch: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> StateDocument: ...


class _FlushRequest(FlushRequest):
    """A `flush` or `close` waiting for the updates queued before it."""

    def __init__(self, closing: bool) -> None:
        super().__init__(closing)
        self.done = threading.Event()

    def release(self) -> None:
        self.done.set()


class StateWriter(WriterBase[StateTransport]):
    """Buffers state updates of one session and sends them in the background.

    Args:
        client: A `Client` (or any object with its ``patch_state``).
        session_id: The session whose document is updated.
        flush_interval: Seconds between sends of queued updates.
        journal_path: Where to keep the journal; ``None`` for no journal.
        exit_timeout: Seconds `close`, the ``with`` block and interpreter
            exit wait for the last acknowledgement.
        call_timeout: The deadline of each send, in seconds; ``None`` uses
            the client's.
        backoff: The waits between attempts to send a batch after a
            transient error. Only its backoff is used: the writer retries
            until the batch is acknowledged or the writer is closed.
        clock: The time source, in seconds; tests pass a fake one and call
            `wake` after moving it.

    Raises:
        ValueError: The journal at ``journal_path`` belongs to another
            session or cannot be parsed.
    """

    def __init__(
        self,
        client: StateTransport,
        session_id: str,
        *,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        journal_path: str | os.PathLike[str] | None = None,
        exit_timeout: float = DEFAULT_EXIT_TIMEOUT,
        call_timeout: float | None = None,
        backoff: RetryPolicy = DEFAULT_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wakeup = threading.Event()
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
        # The queue is owned by the background thread and guarded by _lock,
        # so that close() can take over the journal when the thread does not
        # finish in time.
        self._lock = threading.Lock()
        self._abandoned = False

        # Lets wake() wait for a pass of the loop that began after it.
        self._progress = threading.Condition()
        self._passes_started = 0
        self._passes_done = 0

        self._thread = threading.Thread(
            target=self._run, name=f"editstore-state-writer-{session_id}", daemon=True
        )
        with _OPEN_WRITERS_LOCK:
            _OPEN_WRITERS.add(self)
        self._thread.start()

    # The caller's side.

    def flush(self, timeout: float | None = None) -> bool:
        """Send every queued update now and wait for the acknowledgement.

        Args:
            timeout: Seconds to wait; ``None`` waits until acknowledged.

        Returns:
            True when every update queued before the call is acknowledged;
            False when the timeout came first (they stay queued).

        Raises:
            EditstoreError: The daemon rejected a batch holding one of them.
            RuntimeError: The writer is closed.
        """
        if self._closed:
            raise RuntimeError(f"state writer of session {self.session_id} is closed")
        request = _FlushRequest(closing=False)
        self._inbox.append(request)
        self._wake_now()
        if not request.done.wait(timeout):
            return False
        if request.error is not None:
            raise request.error
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Send what is queued, wait for it, and stop the background thread.

        Waits at most ``timeout`` seconds (``exit_timeout`` when ``None``).
        When the daemon has not acknowledged everything by then, the journal
        (if any) keeps what is unsent for `recover`.

        Returns:
            True when everything was acknowledged.
        """
        request = self._begin_close()
        if request is None:
            return not self._thread.is_alive() and not self._has_unsent()
        return self._finish_close(
            request, self.exit_timeout if timeout is None else timeout
        )

    def _begin_close(self) -> _FlushRequest | None:
        """Queue the final send; ``None`` when the writer is already closed."""
        with _OPEN_WRITERS_LOCK:
            if not self._mark_closed():
                return None
            _OPEN_WRITERS.discard(self)
        request = _FlushRequest(closing=True)
        self._inbox.append(request)
        self._wake_now()
        return request

    def _finish_close(self, request: _FlushRequest, timeout: float) -> bool:
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon()
            return False
        self._release_journal()
        if request.error is not None:
            logger.error(
                "state writer of session %s closed after an error: %s",
                self.session_id,
                request.error,
            )
        return not self._has_unsent()

    def __enter__(self) -> StateWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def last_state(self) -> StateDocument | None:
        """The document the daemon returned for the last acknowledged batch."""
        with self._lock:
            return self._queue.last_state()

    def wake(self, wait: bool = True, timeout: float | None = 10.0) -> None:
        """Make the background thread look at the clock and its queue now.

        With ``wait``, return once a pass of the thread that began after
        this call has finished, e.g. after moving a fake clock.
        """
        with self._progress:
            target = self._passes_started + 1
        self._wake_now()
        if not wait:
            return
        with self._progress:
            self._progress.wait_for(
                lambda: self._passes_done >= target or not self._thread.is_alive(),
                timeout,
            )

    def _has_unsent(self) -> bool:
        with self._lock:
            return bool(self._inbox) or self._queue.has_unsent()

    # The background thread's side.

    def _run(self) -> None:
        keep_running = True
        while keep_running:
            self._wakeup.wait(self._seconds_until_due())
            self._wakeup.clear()
            self._urgent_wake = False
            with self._progress:
                self._passes_started += 1
            try:
                keep_running = self._run_pass()
            except Exception:
                logger.exception(
                    "state writer of session %s failed; retrying", self.session_id
                )
                with self._lock:
                    self._queue.schedule_retry()
            finally:
                with self._progress:
                    self._passes_done += 1
                    self._progress.notify_all()
            if keep_running and self._should_gather_journal():
                self._gather_journal()

    def _gather_journal(self) -> None:
        """Wait JOURNAL_DELAY seconds, so that the updates meanwhile go into
        one journal write. Only a flush, a close or an important update ends
        the wait early."""
        deadline = time.monotonic() + JOURNAL_DELAY
        while not self._urgent_wake:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.wait(remaining)
            if not self._urgent_wake:
                self._wakeup.clear()
        self._end_journal_gathering()

    def _seconds_until_due(self) -> float:
        # flush(), close() and important updates set _wakeup, which ends the
        # wait at once whatever this returns.
        with self._lock:
            return self._queue.seconds_until_due()

    def _run_pass(self) -> bool:
        with self._lock:
            if self._abandoned:
                return False
            queue = self._queue
            queue.drain(self._inbox)
            while not self._abandoned and queue.send_is_due():
                queue.prepare_send()
                self._save_journal()
                self._send_batches()
            queue.end_pass()
            self._save_journal()
            queue.release_waiters()
            if queue.is_finished():
                return False
            return not self._abandoned

    def _send_batches(self) -> None:
        """Send the batches in order; called and returns with _lock held."""
        queue = self._queue
        while queue.batches and not self._abandoned:
            batch = queue.batches[0]
            self._lock.release()
            error: EditstoreError | None = None
            state: StateDocument | None = None
            try:
                state = self._client.patch_state(
                    self.session_id,
                    batch.patch,
                    request_id=batch.request_id,
                    timeout=self._call_timeout,
                    retry=NO_RETRY,
                )
            except EditstoreError as caught:
                error = caught
            except ValueError as caught:
                # grpc raises ValueError on a closed channel.
                error = closed_client_error(caught, "StateWriter", "Client")
            finally:
                self._lock.acquire()
            if not queue.finish_attempt(batch, state, error):
                return

    # The journal.

    def _save_journal(self, force: bool = False) -> None:
        """Write the journal if it changed; called with _lock held."""
        queue = self._queue
        if self.journal_path is None or not (queue.journal_dirty or force):
            return
        try:
            queue.journal().save(self.journal_path)
        except OSError as error:
            self._journal_failed(error)
            return
        queue.journal_dirty = False

    def _abandon(self) -> None:
        """Stop the background thread and journal every update it has.

        Runs on the caller's thread when `close` times out, e.g. while the
        daemon is down. A batch in flight stays in the journal with its
        request id, so sending it again later cannot apply it twice.
        """
        with self._lock:
            self._abandoned = True
            self._queue.drain(self._inbox)
            self._save_journal(force=True)
            unsent = self._queue.unsent_count()
            self._release_journal()
        self._wake_now()
        log_unsent_at_stop(
            logger, self.session_id, unsent, self.journal_path, "StateWriter"
        )


def _close_open_writers() -> None:
    """Close every open writer at interpreter exit, all at the same time.

    Each writer waits at most its ``exit_timeout``, counted from the start of
    this function, so many writers do not add up their waits.
    """
    with _OPEN_WRITERS_LOCK:
        writers = list(_OPEN_WRITERS)
    started = time.monotonic()
    requests = [(writer, writer._begin_close()) for writer in writers]
    for writer, request in requests:
        if request is None:
            continue
        remaining = max(0.0, writer.exit_timeout - (time.monotonic() - started))
        try:
            # A writer that gives up logs what it left unsent.
            writer._finish_close(request, remaining)
        except Exception:
            logger.exception(
                "state writer of session %s failed at exit", writer.session_id
            )


# atexit handlers run after the main thread ends and before daemon threads
# stop, so the writers' threads can still send. Not on os._exit or SIGKILL:
# the journal is for those.
atexit.register(_close_open_writers)
