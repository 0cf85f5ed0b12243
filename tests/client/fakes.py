"""A fake clock and a fake state service for the state writer's unit tests.

The fake service applies merge patches as the daemon does, and like the
daemon applies a request id once and returns the first response to its
repeats.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from editstore.client import jsondoc
from editstore.client.errors import EditstoreError, Unavailable
from editstore.client.models import StateDocument
from editstore.client.settings import RetryPolicy


class FakeClock:
    """A clock that moves only when the test moves it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class PatchCall:
    request_id: str | None
    patch: dict[str, Any]


class FakeStateService:
    """Stands in for `Client.patch_state` of one session."""

    def __init__(self, session_id: str = "s-1") -> None:
        self.session_id = session_id
        self.document: dict[str, Any] = {}
        self.version = 0
        self.calls: list[PatchCall] = []
        self.responses: dict[str, StateDocument] = {}
        self.failures: list[EditstoreError] = []
        """Errors to raise, one per call, before responding normally."""
        self.down = False
        """While true, every call fails with UNAVAILABLE."""
        self.gate: threading.Event | None = None
        """When set, calls wait for this event before responding."""
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def patch_state(
        self,
        session_id: str,
        patch: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> StateDocument:
        assert session_id == self.session_id
        # Round-trip through JSON text as the real client does.
        sent = jsondoc.loads_object(jsondoc.dumps(dict(patch)))
        with self._lock:
            self.calls.append(PatchCall(request_id, sent))
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        with self._lock:
            if self.down:
                raise Unavailable("connection refused")
            if self.failures:
                raise self.failures.pop(0)
            if request_id is not None and request_id in self.responses:
                return self.responses[request_id]
            self.document = jsondoc.apply_merge_patch(self.document, sent)
            self.version += 1
            response = StateDocument(
                session_id=session_id, version=self.version, document=self.document
            )
            if request_id is not None:
                self.responses[request_id] = response
            return response
