"""The daemon's event loop, which can run a callback when it runs out of work.

asyncio's selector loop calls ``select`` with a timeout of 0 while it has
callbacks ready to run, and with a longer timeout, or none, when it has
nothing to do but wait. ``IdleSelector`` runs the callbacks registered with
``call_when_idle`` at that moment, and then polls without waiting, so that
the loop runs whatever they scheduled in the same pass. The writer uses it
to let a batch gather more writes while the loop is busy, without making
writes wait on a loop that has nothing else to do (``writer.LoopWriter``).
"""

from __future__ import annotations

import asyncio
import selectors
import weakref
from collections.abc import Callable
from typing import Any

_SELECTORS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, IdleSelector] = (
    weakref.WeakKeyDictionary()
)


class IdleSelector(selectors.DefaultSelector):  # type: ignore[misc, valid-type]
    """The platform's default selector, with callbacks run when the loop is idle."""

    def __init__(self) -> None:
        super().__init__()
        self._when_idle: list[Callable[[], None]] = []

    def call_when_idle(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop's thread the next time it has no work."""
        self._when_idle.append(callback)

    def select(self, timeout: float | None = None) -> list[Any]:
        if self._when_idle and timeout != 0:
            callbacks, self._when_idle = self._when_idle, []
            for callback in callbacks:
                callback()
            timeout = 0
        return super().select(timeout)  # type: ignore[no-any-return]


def new_event_loop() -> asyncio.AbstractEventLoop:
    """Return a selector event loop whose selector is an ``IdleSelector``."""
    selector = IdleSelector()
    loop = asyncio.SelectorEventLoop(selector)
    _SELECTORS[loop] = selector
    return loop


def idle_selector(loop: asyncio.AbstractEventLoop) -> IdleSelector | None:
    """Return the ``IdleSelector`` of a loop made by ``new_event_loop``, else None."""
    return _SELECTORS.get(loop)
