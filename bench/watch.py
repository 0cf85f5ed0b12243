"""Watch latency: many watchers of one session while a writer patches it.

The writer sends ``PatchState`` at a fixed rate, each patch carrying its
send time from ``time.monotonic_ns()``. Watchers run in other processes
(``python -m bench.watch``) and subtract that time from their own reading
when a CHANGE arrives; CLOCK_MONOTONIC is shared by all processes of one
Linux machine. A change that never reaches a watcher counts as infinitely
late, so the p99 fails when more than 1% of deliveries are missing.

The same watchers and writer run against the echo server, whose WatchState
forwards each patch from memory, as the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import pathlib
import subprocess
import sys
import time
import uuid

import grpc

from bench import servers
from bench.figures import Figure
from bench.load import percentile
from bench.workload import timed_patch_json
from bench.writes import create_sessions
from editstore.v1 import state_pb2, state_pb2_grpc

logger = logging.getLogger(__name__)

DRAIN_SECONDS = 1.0


async def watch_one(
    stub: state_pb2_grpc.StateServiceStub,
    session_id: str,
    ready: asyncio.Event,
    tally: dict[str, list[int] | int],
) -> None:
    call = stub.WatchState(state_pb2.WatchStateRequest(session_id=session_id))
    first = True
    async for event in call:
        received = time.monotonic_ns()
        if first:
            first = False
            ready.set()
            continue
        if event.type == state_pb2.WATCH_EVENT_TYPE_CHANGE:
            patch = event.merge_patch_json or event.state.document_json
            sent_ns = json.loads(patch)["progress"].get("sent_ns")
            if sent_ns is not None and sent_ns >= tally["start_ns"]:
                tally["latencies_us"].append((received - sent_ns) // 1000)  # type: ignore[union-attr]
        elif event.type == state_pb2.WATCH_EVENT_TYPE_SNAPSHOT:
            tally["snapshots"] += 1  # type: ignore[operator]


async def run_watchers(address: str, session_id: str, watchers: int) -> dict:
    tally: dict = {"latencies_us": [], "snapshots": 0, "start_ns": 0}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = state_pb2_grpc.StateServiceStub(channel)
        ready_events = [asyncio.Event() for _ in range(watchers)]
        tasks = [
            asyncio.create_task(watch_one(stub, session_id, ready, tally))
            for ready in ready_events
        ]
        await asyncio.wait_for(
            asyncio.gather(*(event.wait() for event in ready_events)), 60
        )
        loop = asyncio.get_running_loop()
        print("ready", flush=True)
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] != "go":
            raise SystemExit(f"expected 'go START_NS END_NS' on stdin, got {line!r}")
        tally["start_ns"] = int(line[1])
        end_ns = int(line[2]) + int(DRAIN_SECONDS * 1e9)
        await asyncio.sleep(max(0.0, (end_ns - time.monotonic_ns()) / 1e9))
        failed = [task for task in tasks if task.done() and task.exception()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    errors = [repr(task.exception()) for task in failed]
    return {
        "latencies_us": tally["latencies_us"],
        "snapshots": tally["snapshots"],
        "errors": errors,
    }


def write_changes(
    address: str, session_id: str, rate: float, start_ns: int, end_ns: int
) -> int:
    """Patch the session at rate changes a second between start and end.

    Each patch is sent on schedule without waiting for the previous one to
    commit, so a slow commit delays that change only.
    """
    interval_ns = int(1e9 / rate)
    futures: list[grpc.Future] = []
    with grpc.insecure_channel(address) as channel:
        stub = state_pb2_grpc.StateServiceStub(channel)
        next_ns = start_ns
        while next_ns < end_ns:
            delay = (next_ns - time.monotonic_ns()) / 1e9
            if delay > 0:
                time.sleep(delay)
            request = state_pb2.PatchStateRequest(
                session_id=session_id,
                merge_patch_json=timed_patch_json(len(futures) + 1),
            )
            futures.append(stub.PatchState.future(request, timeout=30))
            next_ns += interval_ns
        for future in futures:
            future.result()
    return len(futures)


def measure_watch(
    address: str,
    session_id: str,
    watchers: int,
    rate: float,
    seconds: float,
    processes: int,
) -> tuple[list[int], int, int, list[str]]:
    """Return the latencies, the expected deliveries, snapshots and errors."""
    children = []
    for index in range(processes):
        count = watchers // processes + (1 if index < watchers % processes else 0)
        children.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.watch",
                    "--address",
                    address,
                    "--session",
                    session_id,
                    "--watchers",
                    str(count),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=servers.bench_env(),
                text=True,
            )
        )
    try:
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"watcher process did not start: {line!r}")
        start_ns = time.monotonic_ns() + 200_000_000
        end_ns = start_ns + int(seconds * 1e9)
        for child in children:
            assert child.stdin is not None
            child.stdin.write(f"go {start_ns} {end_ns}\n")
            child.stdin.flush()
        sent = write_changes(address, session_id, rate, start_ns, end_ns)
        results = []
        for child in children:
            output, _ = child.communicate(timeout=seconds + 60)
            if child.returncode != 0:
                raise RuntimeError(f"watcher process exited with {child.returncode}")
            results.append(json.loads(output.strip().splitlines()[-1]))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    latencies = [value for result in results for value in result["latencies_us"]]
    snapshots = sum(result["snapshots"] for result in results)
    errors = [error for result in results for error in result["errors"]]
    return latencies, sent * watchers, snapshots, errors


def p99_ms(latencies: list[int], expected: int) -> float:
    """Return the p99 in ms, counting undelivered changes as infinitely late."""
    missing = max(0, expected - len(latencies))
    values = sorted(latencies) + [math.inf] * missing
    return percentile(values, 0.99) / 1000  # type: ignore[arg-type]


@dataclasses.dataclass
class WatchRuns:
    """The deliveries of one server's watch runs, pooled."""

    latencies: list[int] = dataclasses.field(default_factory=list)
    expected: int = 0
    snapshots: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    round_p99_ms: list[float] = dataclasses.field(default_factory=list)


def bench_watch(
    workdir: pathlib.Path,
    watchers: int,
    rate: float,
    seconds: float,
    processes: int,
    rounds: int = 1,
) -> list[Figure]:
    """Measure how late changes reach watchers of the daemon and of the echo.

    Each round runs the echo server and the daemon one after the other, odd
    rounds starting with the daemon; the deliveries of all rounds are pooled.
    """
    echo = servers.echo_server(workdir)
    daemon = servers.daemon(workdir / "watch.db", workdir / "watch-daemon.log")
    runs = {"echo": WatchRuns(), "daemon": WatchRuns()}
    with servers.running(echo, daemon):
        targets = [
            ("echo", echo, str(uuid.uuid4())),
            ("daemon", daemon, create_sessions(daemon.address, 1)[0]),
        ]
        for round_index in range(rounds):
            for name, server, session_id in targets[:: -1 if round_index % 2 else 1]:
                latencies, expected, snapshots, errors = measure_watch(
                    server.address,
                    session_id,
                    watchers,
                    rate,
                    max(seconds, 2.0),
                    processes,
                )
                pooled = runs[name]
                pooled.latencies += latencies
                pooled.expected += expected
                pooled.snapshots += snapshots
                pooled.errors += errors
                pooled.round_p99_ms.append(p99_ms(latencies, expected))
                logger.info(
                    "round %d %s: %d of %d delivered, p99 %.1f ms",
                    round_index,
                    name,
                    len(latencies),
                    expected,
                    pooled.round_p99_ms[-1],
                )
    daemon_runs, echo_runs = runs["daemon"], runs["echo"]
    rounds_p99 = ", ".join(f"{value:.0f}" for value in daemon_runs.round_p99_ms)
    echo_rounds_p99 = ", ".join(f"{value:.0f}" for value in echo_runs.round_p99_ms)
    note = (
        f"{len(daemon_runs.latencies)} of {daemon_runs.expected} deliveries, p50 "
        f"{percentile(sorted(daemon_runs.latencies), 0.5) / 1000:.1f} ms, max "
        f"{max(daemon_runs.latencies, default=0) / 1000:.1f} ms, "
        f"{daemon_runs.snapshots} snapshots in place of changes; p99 of each "
        f"round: daemon {rounds_p99} ms, echo {echo_rounds_p99} ms"
    )
    if daemon_runs.errors:
        note += f"; watch errors: {daemon_runs.errors[0]}"
    return [
        Figure(
            f"WatchState p99 delay, {watchers} watchers, {rate:g} changes/s",
            p99_ms(daemon_runs.latencies, daemon_runs.expected),
            "ms",
            "echo server",
            p99_ms(echo_runs.latencies, echo_runs.expected),
            target=50.0,
            target_on_ratio=False,
            higher_is_better=False,
            note=note,
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description="Watchers of one session.")
    parser.add_argument("--address", required=True)
    parser.add_argument("--session", required=True)
    parser.add_argument("--watchers", type=int, required=True)
    args = parser.parse_args()
    result = asyncio.run(run_watchers(args.address, args.session, args.watchers))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
