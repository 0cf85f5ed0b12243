"""How long ``StateWriter.update()`` of the client library takes to return.

The writer is connected to a running daemon and flushes in the background as
it would in an agent. Only the caller's time in ``update()`` is measured,
with ``time.perf_counter_ns()`` around each call. Two loads are timed:

- paced: 1,000 calls a second, already far more than an agent makes, so the
  background thread has the time to send what was queued;
- back to back: calls in a tight loop, where the caller also waits for the
  interpreter lock while the background thread merges the queued patches.

The baseline is the floor of any update() after a pause: a method that
appends the patch to a deque, paced the same way and timed before and after
the writer, so that both see the same state of the machine.
"""

from __future__ import annotations

import collections
import logging
import pathlib
import statistics
import time
from typing import Any

from bench import servers
from bench.figures import Figure
from bench.load import percentile
from bench.writes import create_sessions

logger = logging.getLogger(__name__)


class AppendWriter:
    """The baseline: queues each patch as it is, nothing more."""

    def __init__(self) -> None:
        self.queue: collections.deque[dict[str, Any]] = collections.deque()

    def update(self, patch: dict[str, Any]) -> None:
        self.queue.append(patch)


PACED_CALLS_PER_SECOND = 1000
# The background thread merges queued patches much slower than update()
# queues them, so back-to-back calls are capped to leave a backlog that
# close() sends within its default 10 s.
MAX_BACK_TO_BACK_CALLS = 20_000


def time_updates(
    writer: Any, seconds: float, interval: float, max_calls: int = 10**9
) -> list[int]:
    """Call writer.update() for seconds, every interval seconds (0: no pause)."""
    durations_ns: list[int] = []
    step = 0
    next_call = time.perf_counter()
    end = next_call + seconds
    while next_call < end and len(durations_ns) < max_calls:
        if interval:
            while time.perf_counter() < next_call:
                time.sleep(interval / 4)
            next_call += interval
        else:
            next_call = time.perf_counter()
        step += 1
        patch = {"progress": {"step": step, "stage_done": step % 10 == 0}}
        started = time.perf_counter_ns()
        writer.update(patch)
        durations_ns.append(time.perf_counter_ns() - started)
    durations_ns.sort()
    return durations_ns


def describe(durations_ns: list[int]) -> str:
    return (
        f"mean {statistics.fmean(durations_ns) / 1000:.1f} us, p50 "
        f"{percentile(durations_ns, 0.5) / 1000:.1f} us, p99 "
        f"{percentile(durations_ns, 0.99) / 1000:.1f} us, max "
        f"{durations_ns[-1] / 1000:.0f} us over {len(durations_ns)} calls"
    )


def bench_client_update(workdir: pathlib.Path, seconds: float) -> list[Figure]:
    """Measure update() of a StateWriter; skip when the client has none."""
    try:
        from editstore.client import Client, StateWriter
    except ImportError as error:
        print(f"client: skipped, editstore.client has no StateWriter yet ({error})")
        return []
    daemon = servers.daemon(workdir / "client.db", workdir / "client-daemon.log")
    with servers.running(daemon):
        session_id = create_sessions(daemon.address, 1)[0]
        with Client(daemon.address) as client:
            writer = StateWriter(client, session_id)
            interval = 1 / PACED_CALLS_PER_SECOND
            baseline = time_updates(AppendWriter(), seconds / 4, interval)
            paced = time_updates(writer, seconds, interval)
            baseline += time_updates(AppendWriter(), seconds / 4, interval)
            baseline.sort()
            back_to_back = time_updates(
                writer, seconds / 2, 0, max_calls=MAX_BACK_TO_BACK_CALLS
            )
            started = time.perf_counter()
            sent = writer.close()
            close_seconds = time.perf_counter() - started
    return [
        Figure(
            f"StateWriter.update() time to return, {PACED_CALLS_PER_SECOND:,} calls/s",
            statistics.fmean(paced) / 1000,
            "us",
            "deque append",
            statistics.fmean(baseline) / 1000,
            target=20.0,
            target_on_ratio=False,
            higher_is_better=False,
            note=f"paced: {describe(paced)}; back to back: {describe(back_to_back)}; "
            f"baseline: {describe(baseline)}; close() then took "
            f"{close_seconds:.2f} s and {'sent' if sent else 'did NOT send'} "
            "every update",
        )
    ]
