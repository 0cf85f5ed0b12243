"""The watch hub: fans committed changes out to the watchers of each session.

The hub lives on the event loop. ``publish`` appends each event to the queue of
every watcher of its session and never waits, so a slow watcher cannot slow
the writer or the other watchers. A watcher whose queue is full, in events or
in bytes of documents, is marked lagged and its queue dropped: its stream then
sends a snapshot of the current document instead of the changes it missed,
which bounds the memory it holds.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import Iterable
from typing import TypeAlias

from editstore.server.events import Event, SessionDeleted, StateChanged

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class StateHint:
    """A version committed by another daemon; the watcher reads it itself."""

    session_id: str
    version: int


@dataclasses.dataclass(frozen=True, slots=True)
class Recheck:
    """A notice that changes of other daemons may have gone unannounced, so
    the watcher reads the versions after the last one it sent."""

    session_id: str


HubEvent: TypeAlias = Event | StateHint | Recheck


class Watcher:
    """One watch stream's queue of events."""

    def __init__(self, session_id: str, capacity: int, max_bytes: int) -> None:
        self.session_id = session_id
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.queued_bytes = 0
        self.events: collections.deque[HubEvent] = collections.deque()
        self.lagged = False
        self.closed = False
        self.wakeup = asyncio.Event()

    def push(self, event: HubEvent) -> None:
        if self.lagged:
            return
        size = len(event.document) if isinstance(event, StateChanged) else 0
        full = len(self.events) >= self.capacity
        if full or (self.events and self.queued_bytes + size > self.max_bytes):
            self.events.clear()
            self.queued_bytes = 0
            self.lagged = True
        else:
            self.events.append(event)
            self.queued_bytes += size
        self.wakeup.set()

    def pop(self) -> HubEvent:
        """Take the oldest queued event."""
        event = self.events.popleft()
        if isinstance(event, StateChanged):
            self.queued_bytes -= len(event.document)
        return event

    async def wait(self, timeout: float) -> bool:
        """Wait until there is something to read; return False on timeout."""
        if self.events or self.lagged or self.closed:
            return True
        self.wakeup.clear()
        try:
            await asyncio.wait_for(self.wakeup.wait(), timeout)
        except TimeoutError:
            return False
        return True


class WatchHub:
    """Route committed events to the watchers of their session."""

    def __init__(self, capacity: int, max_bytes: int) -> None:
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._watchers: dict[str, set[Watcher]] = {}
        self._closed = False

    @property
    def watcher_count(self) -> int:
        return sum(len(watchers) for watchers in self._watchers.values())

    def subscribe(self, session_id: str) -> Watcher:
        watcher = Watcher(session_id, self._capacity, self._max_bytes)
        watcher.closed = self._closed
        self._watchers.setdefault(session_id, set()).add(watcher)
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        watchers = self._watchers.get(watcher.session_id)
        if watchers is None:
            return
        watchers.discard(watcher)
        if not watchers:
            del self._watchers[watcher.session_id]

    def publish(self, events: Iterable[HubEvent]) -> None:
        """Hand committed events to their watchers; never blocks."""
        for event in events:
            watchers = self._watchers.get(event.session_id)
            if not watchers:
                continue
            for watcher in watchers:
                watcher.push(event)

    def recheck_all(self) -> None:
        """Make every watcher read the versions it may have missed.

        Called when notifications of other daemons may have been lost, such
        as while the LISTEN connection was down.
        """
        self.publish(Recheck(session_id) for session_id in list(self._watchers))

    def close(self) -> None:
        """End every watch: the daemon is stopping."""
        self._closed = True
        for watchers in self._watchers.values():
            for watcher in watchers:
                watcher.closed = True
                watcher.wakeup.set()


__all__ = [
    "HubEvent",
    "Recheck",
    "SessionDeleted",
    "StateChanged",
    "StateHint",
    "WatchHub",
    "Watcher",
]
