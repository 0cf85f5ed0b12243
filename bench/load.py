"""Drive a server with several ``bench.loadgen`` processes at once.

The callers are split across client processes, so that the client does not
run out of CPU before the server does. Every process counts only what was
acknowledged inside one shared window on the monotonic clock, which all
processes of one Linux machine share.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
import subprocess
import sys
import time

from bench.servers import bench_env

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoadConfig:
    """The settings of the load generator."""

    mode: str
    """``unary`` (PatchState) or ``stream`` (StreamStateUpdates)."""
    callers: int = 64
    """Concurrent unary callers, or streams."""
    processes: int = 2
    """Client processes the callers are split across."""
    client: str = "aio"
    """``aio`` or ``threads``; see ``bench.loadgen``."""
    channels: int = 1
    """Channels, each with its own connection, per client process."""
    window: int = 16
    """Updates each stream keeps in flight."""


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """Updates acknowledged in the measuring window, and their latency."""

    count: int
    seconds: float
    errors: int
    first_error: str
    p50_ms: float
    p99_ms: float
    client_cpu: float
    """Cores the client processes used, on average, while they ran."""
    server_cpu: float
    """Cores the server process used, on average; NaN when not measured."""

    @property
    def rate(self) -> float:
        """Acknowledged updates a second."""
        return self.count / self.seconds


def percentile(sorted_values: list[int], fraction: float) -> float:
    """Return the value below which fraction of sorted_values lie."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return float(sorted_values[index])


def process_cpu_seconds(pid: int) -> float:
    """Return the CPU time a process and its threads used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name in brackets may contain spaces; fields follow it.
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(
    address: str,
    sessions: list[str],
    config: LoadConfig,
    seconds: float,
    warmup: float = 0.5,
    server_pid: int | None = None,
) -> LoadResult:
    """Load the server at address for seconds after warmup; return the tally.

    With server_pid, the result also contains the CPU the server used.
    """
    processes = []
    for index in range(config.processes):
        callers = config.callers // config.processes
        if index < config.callers % config.processes:
            callers += 1
        own_sessions = sessions[index :: config.processes] or sessions
        command = [
            sys.executable,
            "-m",
            "bench.loadgen",
            "--address",
            address,
            "--mode",
            config.mode,
            "--client",
            config.client,
            "--sessions",
            ",".join(own_sessions),
            "--callers",
            str(callers),
            "--channels",
            str(config.channels),
            "--window",
            str(config.window),
        ]
        processes.append(
            subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=bench_env(),
                text=True,
            )
        )
    try:
        for process in processes:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"load generator did not start: {line!r}")
        go = time.monotonic()
        server_cpu_before = process_cpu_seconds(server_pid) if server_pid else 0.0
        start = go + warmup
        end = start + seconds
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(f"go {start!r} {end!r}\n")
            process.stdin.flush()
        results = []
        for process in processes:
            output, _ = process.communicate(timeout=seconds + warmup + 120)
            if process.returncode != 0:
                raise RuntimeError(f"load generator exited with {process.returncode}")
            results.append(json.loads(output.strip().splitlines()[-1]))
        elapsed = time.monotonic() - go
        server_cpu = float("nan")
        if server_pid:
            server_cpu = (process_cpu_seconds(server_pid) - server_cpu_before) / elapsed
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    latencies = sorted(value for result in results for value in result["latencies_us"])
    errors = sum(result["errors"] for result in results)
    first_error = next((r["first_error"] for r in results if r["first_error"]), "")
    if errors:
        logger.warning("%d errors from %s, first: %s", errors, address, first_error)
    return LoadResult(
        count=sum(result["count"] for result in results),
        seconds=seconds,
        errors=errors,
        first_error=first_error,
        p50_ms=percentile(latencies, 0.50) / 1000,
        p99_ms=percentile(latencies, 0.99) / 1000,
        client_cpu=sum(result["cpu_seconds"] for result in results) / elapsed,
        server_cpu=server_cpu,
    )


def median_rate(results: list[LoadResult]) -> float:
    """Return the median rate of several runs."""
    return statistics.median(result.rate for result in results)
