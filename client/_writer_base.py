"""The caller's side of `StateWriter` and `AsyncStateWriter`.

`WriterBase` checks the arguments, loads the journal, and implements
``update``, ``recover`` and the counters. The subclasses add the thread or
the asyncio task that sends, and ``flush`` and ``close``.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Generic, Protocol, Self, TypeVar

from editstore.client._patch_queue import (
    FlushRequest,
    ImportantUpdateRule,
    PatchQueue,
    Snapshot,
    snapshot_patch,
)
from editstore.client.journal import Journal, JournalLock, remove_stale
from editstore.client.settings import RetryPolicy

TransportT = TypeVar("TransportT")

# Seconds between two log lines about failed journal writes.
JOURNAL_ERROR_INTERVAL = 60.0


class Wakeup(Protocol):
    """A ``threading.Event`` or an ``asyncio.Event``."""

    def set(self) -> None: ...


class WriterBase(Generic[TransportT]):
    """The caller's side of a state writer. `StateWriter` documents the arguments.

    A subclass sets ``_wakeup`` before calling ``__init__``, because `update`
    and a journal with unsent patches set it to start a send.
    """

    _wakeup: Wakeup
    _journal_requested: bool

    def __init__(
        self,
        client: TransportT,
        session_id: str,
        *,
        flush_interval: float,
        journal_path: str | os.PathLike[str] | None,
        exit_timeout: float,
        call_timeout: float | None,
        backoff: RetryPolicy,
        clock: Callable[[], float],
        logger: logging.Logger,
    ) -> None:
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be positive, got {flush_interval}")
        self.session_id = session_id
        self.flush_interval = flush_interval
        self.journal_path = journal_path
        self.exit_timeout = exit_timeout
        self._client = client
        self._call_timeout = call_timeout

        # Callers of update() and flush() append to the inbox. Only the
        # sending thread or task drains it.
        self._inbox: collections.deque[tuple[Snapshot, bool] | FlushRequest] = (
            collections.deque()
        )
        self._closed = False
        # With a journal, the first update after a journal write wakes the
        # sender to journal it; the later ones wait for that write's turn.
        self._journal_soon = journal_path is not None
        self._journal_requested = False
        # Set with _wakeup by what must not wait: a flush, a close, an
        # important update. A journal write waits for the updates after it.
        self._urgent_wake = False
        self._journal_error_logged_at = -JOURNAL_ERROR_INTERVAL
        self._logger = logger
        self._important = ImportantUpdateRule()
        self._queue = PatchQueue(session_id, flush_interval, backoff, clock, logger)

        self._journal_lock: JournalLock | None = None
        if journal_path is not None:
            self._journal_lock = JournalLock(journal_path)
            self._journal_lock.acquire()
            try:
                journal = Journal.load(journal_path)
                if journal is not None:
                    self._queue.load_journal(journal, journal_path)
            except BaseException:
                self._journal_lock.release()
                raise
            if journal is not None and journal.unsent:
                self._wake_now()

    @classmethod
    def recover(
        cls,
        client: TransportT,
        journal_path: str | os.PathLike[str],
        **kwargs: Any,
    ) -> Self:
        """Build a writer for the session of an existing journal.

        The journal may come from a `StateWriter` or an `AsyncStateWriter`.
        The writer sends its unsent patches at once, each with the request
        id it was sent with before, so a patch that reached the daemon just
        before the earlier process died is not applied twice.

        Raises:
            FileNotFoundError: There is no journal at ``journal_path``.
            ValueError: The file is not a state journal.
        """
        journal = Journal.load(journal_path)
        if journal is None:
            raise FileNotFoundError(f"no state journal at {os.fspath(journal_path)}")
        return cls(client, journal.session_id, journal_path=journal_path, **kwargs)

    @property
    def last_error(self) -> Exception | None:
        """The last error of a batch or an update, kept for callers."""
        return self._queue.last_error

    @property
    def acknowledged_batches(self) -> int:
        """How many batches the daemon applied; each made one new version."""
        return self._queue.acknowledged_batches

    def _wake_now(self) -> None:
        """Wake the sender for something that must not wait."""
        self._urgent_wake = True
        self._wakeup.set()

    def _journal_failed(self, error: OSError) -> None:
        """Remove the journal a write could not replace, and log the failure
        at most once per JOURNAL_ERROR_INTERVAL seconds.

        On a full disk the removal frees room, so writes may fail and succeed
        by turns. One line a minute reports that without flooding the log.
        """
        assert self.journal_path is not None
        removed = remove_stale(self.journal_path)
        now = time.monotonic()
        if now < self._journal_error_logged_at + JOURNAL_ERROR_INTERVAL:
            return
        self._journal_error_logged_at = now
        self._logger.error(
            "state journal of session %s not written to %s: %s; %s",
            self.session_id,
            os.fspath(self.journal_path),
            error,
            "the older journal was removed, so no later writer sends its patches again"
            if removed
            else "the older journal could not be removed either: do not "
            "recover from it, because it holds patches the daemon may have "
            "applied since",
        )

    def _release_journal(self) -> None:
        if self._journal_lock is not None:
            self._journal_lock.release()

    def _should_gather_journal(self) -> bool:
        """Return whether an update asked for a journal write since the last
        gathering wait."""
        return self._journal_requested

    def _end_journal_gathering(self) -> None:
        """Let the next update wake the sender, and wake it for queued ones."""
        self._journal_requested = False
        if self._inbox:
            self._wakeup.set()

    def _mark_closed(self) -> bool:
        """Mark the writer closed, and return False when it already was."""
        if self._closed:
            return False
        self._closed = True
        return True

    def update(self, patch: Mapping[str, Any], important: bool = False) -> None:
        """Queue a JSON merge patch of the session's document.

        Returns at once: the patch is copied here, so later changes to the
        caller's dict do not leak in, and sent by the writer's thread or
        task. The copy is a ``marshal`` snapshot, several times cheaper than
        JSON text, so values that JSON rejects but ``marshal`` copies (NaN,
        sets) are found by that thread or task. It drops such an update,
        logs it, and the next ``flush`` raises its error.

        Raises:
            RuntimeError: The writer is closed.
            TypeError: The patch is not a dict or contains an object that
                neither ``marshal`` nor JSON can represent.
        """
        if self._closed:
            raise RuntimeError(f"state writer of session {self.session_id} is closed")
        snapshot = snapshot_patch(patch)
        # The key test is repeated here because a call costs more than it.
        if not important and (
            "current_stage" in patch or "status" in patch or "completed" in patch
        ):
            important = self._important.matches(patch)
        self._inbox.append((snapshot, important))
        if important:
            self._wake_now()
        elif self._journal_soon and not self._journal_requested:
            self._journal_requested = True
            self._wakeup.set()
