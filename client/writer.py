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
not yet acknowledged, rewritten atomically before each send, after each
acknowledgement and at close. A writer built on a journal that holds unsent
patches sends them at once, with the request ids they had::

    writer = StateWriter.recover(client, "state/session.json")
    writer.flush()

The writer only applies patches. It never reads the document back, so other
writers of the same session keep their changes. It sends through the client
it was given, so close the writer before closing that client.
"""

from __future__ import annotations

import atexit
import collections
import logging
import marshal
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from editstore.client import _calls, jsondoc
from editstore.client.errors import Cancelled, EditstoreError
from editstore.client.journal import Journal, JournalPatch
from editstore.client.models import StateDocument
from editstore.client.settings import RetryPolicy

__all__ = ["StateTransport", "StateWriter"]

logger = logging.getLogger(__name__)

DEFAULT_FLUSH_INTERVAL = 5.0
DEFAULT_EXIT_TIMEOUT = 10.0
DEFAULT_BACKOFF = RetryPolicy(initial_backoff=0.2, max_backoff=5.0)

# Codes after which the daemon may not have seen the batch, or may have
# applied it and failed to send the response. Sending it again is safe in
# both cases because the batch carries its request id.
_TRANSIENT_CODES = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN"}
)
_NO_RETRY = RetryPolicy(max_attempts=1)

# Writers not closed yet, closed together at interpreter exit.
_OPEN_WRITERS: set[StateWriter] = set()
_OPEN_WRITERS_LOCK = threading.Lock()
_marshal_dumps = marshal.dumps
_MISSING = object()


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


def _restore(snapshot: bytes | str) -> dict[str, Any]:
    """Rebuild a patch queued by `StateWriter.update`, checked as JSON.

    Raises:
        ValueError: The patch contains NaN or Infinity.
        TypeError: The patch contains a value JSON cannot represent.
    """
    if isinstance(snapshot, str):
        return jsondoc.loads_object(snapshot)
    patch = marshal.loads(snapshot)
    # Round-trip through JSON text: checks the values, and turns tuples into
    # lists as the daemon will store them.
    return jsondoc.loads_object(jsondoc.dumps(patch))


@dataclass
class _Batch:
    """Merged updates sent, or about to be sent, under one request id."""

    request_id: str
    patch: dict[str, Any]
    last_sequence: int
    """The sequence number of the last update merged into it."""


class _FlushRequest:
    """A `flush` or `close` waiting for the updates queued before it."""

    def __init__(self, closing: bool) -> None:
        self.closing = closing
        self.target = -1
        self.done = threading.Event()
        self.error: Exception | None = None


class StateWriter:
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
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be positive, got {flush_interval}")
        self.session_id = session_id
        self.flush_interval = flush_interval
        self.journal_path = journal_path
        self.exit_timeout = exit_timeout
        self._client = client
        self._call_timeout = call_timeout
        self._backoff = backoff
        self._clock = clock

        # Written by callers of update(); read by the background thread.
        self._inbox: collections.deque[tuple[bytes | str, bool] | _FlushRequest] = (
            collections.deque()
        )
        self._wakeup = threading.Event()
        self._closed = False
        self._last_stage: Any = _MISSING

        # Owned by the background thread, guarded by _lock so that close()
        # can take over the journal when the thread does not finish in time.
        self._lock = threading.Lock()
        self._sequence = 0
        self._acknowledged = 0
        self._pending: list[tuple[dict[str, Any], int]] = []
        self._batches: collections.deque[_Batch] = collections.deque()
        self._waiters: list[_FlushRequest] = []
        self._urgent = False
        self._stopping = False
        self._abandoned = False
        self._failures = 0
        self._retry_at: float | None = None
        self._next_send_at = clock() + flush_interval
        self._journal_dirty = False
        self._document: dict[str, Any] | None = None
        self._version = 0
        self.last_error: Exception | None = None
        """The last error of a batch or an update, kept for callers."""
        self._unreported_error: Exception | None = None
        self.acknowledged_batches = 0
        """How many batches the daemon applied; each made one new version."""

        # Lets wake() wait for a pass of the loop that began after it.
        self._progress = threading.Condition()
        self._passes_started = 0
        self._passes_done = 0

        if journal_path is not None:
            self._load_journal(journal_path)

        self._thread = threading.Thread(
            target=self._run, name=f"editstore-state-writer-{session_id}", daemon=True
        )
        with _OPEN_WRITERS_LOCK:
            _OPEN_WRITERS.add(self)
        self._thread.start()

    @classmethod
    def recover(
        cls,
        client: StateTransport,
        journal_path: str | os.PathLike[str],
        **kwargs: Any,
    ) -> StateWriter:
        """Build a writer for the session of an existing journal.

        The writer sends the journal's unsent patches at once, each with the
        request id it was sent with before, so a patch that reached the
        daemon just before the earlier process died is not applied twice.

        Raises:
            FileNotFoundError: There is no journal at ``journal_path``.
            ValueError: The file is not a state journal.
        """
        journal = Journal.load(journal_path)
        if journal is None:
            raise FileNotFoundError(f"no state journal at {os.fspath(journal_path)}")
        return cls(client, journal.session_id, journal_path=journal_path, **kwargs)

    # The caller's side.

    def update(self, patch: Mapping[str, Any], important: bool = False) -> None:
        """Queue a JSON merge patch of the session's document.

        Returns at once: the patch is copied here, so later changes to the
        caller's dict do not leak in, and sent by the background thread.
        The copy is a ``marshal`` snapshot, several times cheaper than JSON
        text, so values that JSON rejects but ``marshal`` copies (NaN, sets)
        are found by the background thread. It drops such an update, logs
        it, and the next `flush` raises its error.

        Raises:
            RuntimeError: The writer is closed.
            TypeError: The patch is not a dict or contains an object that
                neither ``marshal`` nor JSON can represent.
        """
        if self._closed:
            raise RuntimeError(f"state writer of session {self.session_id} is closed")
        if type(patch) is not dict:
            if not isinstance(patch, Mapping):
                raise TypeError(f"patch must be a dict, got {type(patch).__name__}")
            patch = dict(patch)
        try:
            snapshot: bytes | str = _marshal_dumps(patch)
        except ValueError:
            # Subclasses of dict, str or int (enums, for one) are not
            # marshallable; JSON text copies them as their base type.
            snapshot = jsondoc.dumps(patch)
        if not important and (
            "current_stage" in patch or "status" in patch or "completed" in patch
        ):
            important = self._is_significant(patch)
        self._inbox.append((snapshot, important))
        if important:
            self._wakeup.set()

    def _is_significant(self, patch: Mapping[str, Any]) -> bool:
        stage = patch.get("current_stage", _MISSING)
        if stage is not _MISSING and stage != self._last_stage:
            self._last_stage = stage
            return True
        return "status" in patch or bool(patch.get("completed"))

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
        self._wakeup.set()
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
            if self._closed:
                return None
            self._closed = True
            _OPEN_WRITERS.discard(self)
        request = _FlushRequest(closing=True)
        self._inbox.append(request)
        self._wakeup.set()
        return request

    def _finish_close(self, request: _FlushRequest, timeout: float) -> bool:
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon()
            return False
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
            if self._document is None:
                return None
            return StateDocument(
                session_id=self.session_id,
                version=self._version,
                document=self._document,
            )

    def wake(self, wait: bool = True, timeout: float | None = 10.0) -> None:
        """Make the background thread look at the clock and its queue now.

        With ``wait``, return once a pass of the thread that began after
        this call has finished, e.g. after moving a fake clock.
        """
        with self._progress:
            target = self._passes_started + 1
        self._wakeup.set()
        if not wait:
            return
        with self._progress:
            self._progress.wait_for(
                lambda: self._passes_done >= target or not self._thread.is_alive(),
                timeout,
            )

    def _has_unsent(self) -> bool:
        with self._lock:
            return bool(self._inbox or self._pending or self._batches)

    # The background thread's side.

    def _run(self) -> None:
        keep_running = True
        while keep_running:
            self._wakeup.wait(self._seconds_until_due())
            self._wakeup.clear()
            with self._progress:
                self._passes_started += 1
            try:
                keep_running = self._run_pass()
            except Exception:
                logger.exception(
                    "state writer of session %s failed; retrying", self.session_id
                )
                with self._lock:
                    self._schedule_retry()
            finally:
                with self._progress:
                    self._passes_done += 1
                    self._progress.notify_all()

    def _seconds_until_due(self) -> float:
        # flush(), close() and important updates set _wakeup, which ends the
        # wait at once whatever this returns.
        with self._lock:
            if self._batches and self._retry_at is not None:
                due = self._retry_at
            elif self._urgent and (self._pending or self._batches):
                return 0.0
            else:
                due = self._next_send_at
        return max(0.0, min(due - self._clock(), self.flush_interval))

    def _run_pass(self) -> bool:
        with self._lock:
            if self._abandoned:
                return False
            self._drain_inbox()
            now = self._clock()
            # Pending updates held back by a batch that is being retried keep
            # their due time, so they follow it at once when it is through.
            while not self._abandoned and self._send_is_due(now):
                if not self._batches:
                    self._make_batches()
                    self._urgent = False
                    self._next_send_at = now + self.flush_interval
                self._save_journal()
                self._send_batches()
                now = self._clock()
            if not self._pending:
                # A flush with nothing pending must not rush the next update.
                self._urgent = False
                if not self._batches and self._next_send_at <= now:
                    # Nothing was due at this tick: the next update waits at
                    # most one interval.
                    self._next_send_at = now + self.flush_interval
            self._save_journal()
            self._release_waiters()
            if self._stopping and not (self._batches or self._pending):
                return False
            return not self._abandoned

    def _drain_inbox(self) -> None:
        while self._inbox:
            item = self._inbox.popleft()
            if isinstance(item, _FlushRequest):
                item.target = self._sequence
                self._waiters.append(item)
                self._urgent = True
                self._stopping = self._stopping or item.closing
                if self._unreported_error is not None:
                    item.error = self._unreported_error
                    self._unreported_error = None
                continue
            snapshot, important = item
            try:
                patch = _restore(snapshot)
            except (TypeError, ValueError) as error:
                logger.error(
                    "state update of session %s dropped: %s", self.session_id, error
                )
                self.last_error = error
                self._unreported_error = error
                continue
            self._sequence += 1
            self._add_pending(patch)
            self._urgent = self._urgent or important
            self._journal_dirty = True

    def _add_pending(self, patch: dict[str, Any]) -> None:
        if self._pending:
            last, _ = self._pending[-1]
            composed = jsondoc.compose_merge_patches(last, patch)
            if composed is not None:
                self._pending[-1] = (composed, self._sequence)
                return
        self._pending.append((patch, self._sequence))

    def _send_is_due(self, now: float) -> bool:
        if self._batches:
            return self._retry_at is None or now >= self._retry_at
        if not self._pending:
            return False
        return self._urgent or now >= self._next_send_at

    def _make_batches(self) -> None:
        for patch, last_sequence in self._pending:
            self._batches.append(_Batch(_calls.new_request_id(), patch, last_sequence))
        self._pending.clear()
        self._journal_dirty = True

    def _send_batches(self) -> None:
        """Send the batches in order; called and returns with _lock held."""
        while self._batches and not self._abandoned:
            batch = self._batches[0]
            self._lock.release()
            error: EditstoreError | None = None
            state: StateDocument | None = None
            try:
                state = self._client.patch_state(
                    self.session_id,
                    batch.patch,
                    request_id=batch.request_id,
                    timeout=self._call_timeout,
                    retry=_NO_RETRY,
                )
            except EditstoreError as caught:
                error = caught
            except ValueError as caught:
                # grpc raises ValueError on a closed channel: no retry can
                # succeed, so the updates fail and flush() raises.
                error = Cancelled(
                    f"the client was closed before the state writer could send: "
                    f"{caught}; close the StateWriter before its Client"
                )
            finally:
                self._lock.acquire()
            if error is not None and error.code.name in _TRANSIENT_CODES:
                # The first failure is logged; the retries of one outage only
                # at debug level, and their count once the batch is through.
                logger.log(
                    logging.WARNING if self._failures == 0 else logging.DEBUG,
                    "state of session %s not sent, retrying: %s",
                    self.session_id,
                    error,
                )
                self._schedule_retry()
                return
            failed_attempts = self._failures
            self._batches.popleft()
            dropped = batch.last_sequence - self._acknowledged
            if error is not None:
                self._fail_waiters(self._acknowledged, error)
            self._acknowledged = batch.last_sequence
            self._failures = 0
            self._retry_at = None
            self._journal_dirty = True
            if error is not None:
                logger.error(
                    "state of session %s rejected, %d update(s) dropped: %s",
                    self.session_id,
                    dropped,
                    error,
                )
                self.last_error = error
            elif state is not None:
                if failed_attempts:
                    logger.info(
                        "state of session %s sent after %d failed attempts",
                        self.session_id,
                        failed_attempts,
                    )
                self.acknowledged_batches += 1
                self._document = state.document
                self._version = state.version

    def _schedule_retry(self) -> None:
        wait = self._backoff.backoff(self._failures)
        self._failures += 1
        self._retry_at = self._clock() + wait

    def _fail_waiters(self, acknowledged: int, error: Exception) -> None:
        """Give the error to waiters for updates after ``acknowledged``."""
        for waiter in self._waiters:
            if waiter.error is None and waiter.target > acknowledged:
                waiter.error = error

    def _release_waiters(self) -> None:
        remaining = []
        for waiter in self._waiters:
            if self._acknowledged >= waiter.target:
                waiter.done.set()
            else:
                remaining.append(waiter)
        self._waiters = remaining

    # The journal.

    def _load_journal(self, path: str | os.PathLike[str]) -> None:
        journal = Journal.load(path)
        if journal is None:
            return
        if journal.session_id != self.session_id:
            raise ValueError(
                f"journal {os.fspath(path)} belongs to session "
                f"{journal.session_id}, not {self.session_id}"
            )
        self._document = journal.document
        self._version = journal.version
        for item in journal.unsent:
            self._sequence += 1
            if item.request_id is not None:
                self._batches.append(
                    _Batch(item.request_id, item.merge_patch, self._sequence)
                )
            else:
                self._pending.append((item.merge_patch, self._sequence))
        if journal.unsent:
            logger.info(
                "state of session %s: %d unsent patch(es) recovered from %s",
                self.session_id,
                len(journal.unsent),
                os.fspath(path),
            )
            self._urgent = True
            self._wakeup.set()

    def _journal(self) -> Journal:
        unsent = [
            JournalPatch(merge_patch=batch.patch, request_id=batch.request_id)
            for batch in self._batches
        ]
        unsent.extend(JournalPatch(merge_patch=patch) for patch, _ in self._pending)
        return Journal(self.session_id, self._document, self._version, unsent)

    def _save_journal(self, force: bool = False) -> None:
        """Write the journal if it changed; called with _lock held."""
        if self.journal_path is None or not (self._journal_dirty or force):
            return
        try:
            self._journal().save(self.journal_path)
        except OSError:
            logger.exception(
                "state journal of session %s not written to %s",
                self.session_id,
                os.fspath(self.journal_path),
            )
            return
        self._journal_dirty = False

    def _abandon(self) -> None:
        """Stop the background thread and journal every update it has.

        Runs on the caller's thread when `close` times out, e.g. while the
        daemon is down. A batch in flight stays in the journal with its
        request id, so sending it again later cannot apply it twice.
        """
        with self._lock:
            self._abandoned = True
            self._drain_inbox()
            self._save_journal(force=True)
            unsent = len(self._batches) + len(self._pending)
        self._wakeup.set()
        if self.journal_path is None:
            logger.warning(
                "state writer of session %s stopped with %d patch(es) unsent "
                "and no journal: they are lost",
                self.session_id,
                unsent,
            )
        else:
            logger.warning(
                "state writer of session %s stopped with %d patch(es) unsent; "
                "StateWriter.recover() sends them from %s",
                self.session_id,
                unsent,
                os.fspath(self.journal_path),
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
