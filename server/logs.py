"""Log lines that a burst of failures would repeat, at most one per interval."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any


class RateLimitedLog:
    """Log one line per interval; the lines dropped meanwhile are counted.

    A full disk fails every write, and a client with a wrong token may call
    thousands of times a second: a line for each would flood the log. The
    count of dropped lines goes with the next line, or is logged alone at
    the end of the interval when no line comes.

    Args:
        logger: The logger to write to.
        interval: Seconds between two lines.
        topic: What the lines are about, for the line that counts dropped
            ones, such as "write failures".
    """

    def __init__(self, logger: logging.Logger, interval: float, topic: str) -> None:
        self._logger = logger
        self._interval = interval
        self._topic = topic
        self._next = 0.0
        self._dropped = 0
        self._level = logging.WARNING
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def warning(self, message: str, *args: Any) -> None:
        """Log a warning, unless one was logged less than an interval ago."""
        self.log(logging.WARNING, message, *args)

    def info(self, message: str, *args: Any) -> None:
        """Log an info line, unless one was logged less than an interval ago."""
        self.log(logging.INFO, message, *args)

    def log(self, level: int, message: str, *args: Any) -> None:
        """Log at ``level``, unless a line was logged less than an interval ago."""
        now = time.monotonic()
        with self._lock:
            self._level = level
            if now < self._next:
                self._dropped += 1
                if self._timer is None:
                    self._timer = threading.Timer(
                        self._next - now, self._report_dropped
                    )
                    self._timer.daemon = True
                    self._timer.start()
                return
            dropped = self._take_dropped()
            self._next = now + self._interval
        if dropped:
            message += (
                f" ({dropped} similar lines in the last {self._interval:g} s "
                "were not logged)"
            )
        self._logger.log(level, message, *args)

    def _take_dropped(self) -> int:
        dropped, self._dropped = self._dropped, 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return dropped

    def _report_dropped(self) -> None:
        with self._lock:
            self._timer = None
            dropped, self._dropped = self._dropped, 0
            level = self._level
        if dropped:
            self._logger.log(
                level,
                "%d similar lines of %s in the last %g s were not logged",
                dropped,
                self._topic,
                self._interval,
            )
