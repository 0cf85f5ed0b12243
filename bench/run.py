"""Run editstore's benchmarks and print every figure next to its baseline.

    python -m bench                 # everything, about 5 s a run, 3 rounds
    python -m bench --quick         # about 1 s a run, 1 round
    python -m bench --only writes,watch --seconds 3

Every server is started here, in its own process: the daemon with
``editstore serve`` on a free loopback port over a temporary SQLite file, and
the echo server the same way.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import pathlib
import platform
import shlex
import sys
import tempfile

from bench.figures import Figure, format_table, write_json

logger = logging.getLogger(__name__)

DEFAULT_BENCHMARKS = ("writes", "watch", "listing", "client")
# The comparison of load generators runs only when named.
BENCHMARKS = (*DEFAULT_BENCHMARKS, "clients")
DEFAULT_CACHE = pathlib.Path(tempfile.gettempdir()) / "editstore-bench"


def machine_description() -> str:
    """Return the core count, CPU model and memory of this machine."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    memory = "unknown memory"
    try:
        with open("/proc/meminfo") as meminfo:
            kib = int(meminfo.readline().split()[1])
            memory = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} cores (nproc), {model}, {memory}"


def machine_load() -> str:
    """Return the load average, and the CPU and I/O pressure where Linux has it.

    Pressure is the share of the last 60 s in which some task waited for the
    resource; other engineers' work on a shared machine shows up there.
    """
    one, five, fifteen = os.getloadavg()
    text = f"load average {one:.2f} {five:.2f} {fifteen:.2f}"
    for resource in ("cpu", "io"):
        try:
            with open(f"/proc/pressure/{resource}") as pressure:
                fields = dict(
                    item.split("=") for item in pressure.readline().split()[1:]
                )
            text += f", {resource} pressure {fields['avg60']}%"
        except (OSError, KeyError, ValueError):
            pass
    return text


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run editstore's benchmarks and print ratios to baselines.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="run each measurement for about 1 s, once (same as --seconds 1 "
        "--rounds 1)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=5.0,
        help="length of each measured run, in seconds",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="runs of each write and watch measurement; the median rate and "
        "the p99 of all deliveries are reported",
    )
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT_BENCHMARKS),
        help=f"comma-separated benchmarks to run, from {','.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--client",
        choices=("aio", "threads"),
        default="aio",
        help="load generator design: asyncio with grpc.aio, or threads with "
        "synchronous stubs",
    )
    parser.add_argument(
        "--processes", type=int, default=2, help="client processes per load"
    )
    parser.add_argument(
        "--callers", type=int, default=64, help="unary callers, or update streams"
    )
    parser.add_argument(
        "--window", type=int, default=16, help="updates in flight on each stream"
    )
    parser.add_argument(
        "--watchers", type=int, default=100, help="WatchState streams of one session"
    )
    parser.add_argument(
        "--watch-rate", type=float, default=40.0, help="changes a second to watch"
    )
    parser.add_argument(
        "--small-sessions",
        type=int,
        default=10_000,
        help="sessions in the smaller listing database",
    )
    parser.add_argument(
        "--big-sessions",
        type=int,
        default=1_000_000,
        help="sessions in the bigger listing database",
    )
    parser.add_argument(
        "--cache-dir",
        type=pathlib.Path,
        default=DEFAULT_CACHE,
        help="where filled listing databases are kept between runs",
    )
    parser.add_argument(
        "--json", type=pathlib.Path, help="also write the figures to this file"
    )
    parser.add_argument(
        "--workdir",
        type=pathlib.Path,
        help="keep databases and logs here instead of a temporary folder",
    )
    parser.add_argument(
        "--fail-on-miss",
        action="store_true",
        help="exit with status 1 when a figure misses its target",
    )
    parser.add_argument("--verbose", action="store_true", help="log progress")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.seconds = 1.0
        arguments.rounds = 1
    arguments.only = [name for name in arguments.only.split(",") if name]
    unknown = sorted(set(arguments.only) - set(BENCHMARKS))
    if unknown:
        parser.error(
            f"unknown benchmark {', '.join(unknown)}; choose from {BENCHMARKS}"
        )
    return arguments


def run_benchmarks(
    arguments: argparse.Namespace, workdir: pathlib.Path
) -> list[Figure]:
    # Imported here so that ``--help`` works without the generated code.
    from bench import client_update, clients, listing, watch, writes

    warmup = min(0.5, arguments.seconds / 2)
    figures: list[Figure] = []
    if "writes" in arguments.only:
        settings = writes.WriteSettings(
            seconds=arguments.seconds,
            warmup=warmup,
            rounds=arguments.rounds,
            callers=arguments.callers,
            processes=arguments.processes,
            client=arguments.client,
            window=arguments.window,
        )
        figures += writes.bench_writes(workdir, settings)
    if "watch" in arguments.only:
        figures += watch.bench_watch(
            workdir,
            watchers=arguments.watchers,
            rate=arguments.watch_rate,
            seconds=arguments.seconds,
            processes=arguments.processes,
            rounds=arguments.rounds,
        )
    if "listing" in arguments.only:
        figures += listing.bench_listing(
            workdir,
            cache_dir=arguments.cache_dir,
            small=arguments.small_sessions,
            big=arguments.big_sessions,
            seconds=arguments.seconds,
        )
    if "client" in arguments.only:
        figures += client_update.bench_client_update(workdir, arguments.seconds)
    if "clients" in arguments.only:
        figures += clients.bench_clients(
            workdir, arguments.seconds, arguments.callers, arguments.window
        )
    return figures


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(
        level=logging.INFO if arguments.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    command = shlex.join(
        ["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)]
    )
    started = datetime.datetime.now(datetime.UTC)
    print(f"date:    {started:%Y-%m-%d %H:%M} UTC")
    print(f"machine: {machine_description()}")
    print(f"command: {command}")
    print(f"at start: {machine_load()}", flush=True)
    if arguments.workdir is not None:
        arguments.workdir.mkdir(parents=True, exist_ok=True)
        figures = run_benchmarks(arguments, arguments.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="editstore-bench-") as temporary:
            figures = run_benchmarks(arguments, pathlib.Path(temporary))
    elapsed = datetime.datetime.now(datetime.UTC) - started
    print(f"at end:  {machine_load()}; took {elapsed.total_seconds():.0f} s")
    print()
    print(format_table(figures))
    if arguments.json is not None:
        write_json(figures, arguments.json)
    missed = [figure.name for figure in figures if figure.passed is False]
    if missed and arguments.fail_on_miss:
        return 1
    return 0
