"""Durable state writes: the daemon against the echo server and the peers.

Each round runs, back to back, the echo server and the daemon over unary
calls, ``SqliteSaver``, and the echo server and the daemon over streams, so
that every ratio compares runs made within the same minute. Odd rounds run
the daemon before the echo server. The figures are the medians over the
rounds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import statistics
import subprocess
import sys
import uuid

import grpc

from bench import servers
from bench.figures import Figure
from bench.load import LoadConfig, LoadResult, run_load
from bench.workload import base_document_json
from editstore.v1 import session_pb2, session_pb2_grpc, state_pb2, state_pb2_grpc

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WriteSettings:
    """How long and how hard the write benchmarks run."""

    seconds: float = 5.0
    warmup: float = 0.5
    rounds: int = 3
    callers: int = 64
    processes: int = 2
    client: str = "aio"
    window: int = 16
    sqlite_batch: int = 64


def create_sessions(address: str, count: int) -> list[str]:
    """Create count sessions, each with the benchmark's state document."""
    session_ids = []
    with grpc.insecure_channel(address) as channel:
        sessions = session_pb2_grpc.SessionServiceStub(channel)
        states = state_pb2_grpc.StateServiceStub(channel)
        for index in range(count):
            session = sessions.CreateSession(
                session_pb2.CreateSessionRequest(
                    session=session_pb2.Session(
                        image_path="/data/photos/000000039769.png",
                        naive_prompt=f"make the light warmer, take {index}",
                    )
                ),
                timeout=30,
            )
            states.PutState(
                state_pb2.PutStateRequest(
                    session_id=session.id,
                    document_json=base_document_json(session.id),
                ),
                timeout=30,
            )
            session_ids.append(session.id)
    return session_ids


def run_peer(arguments: list[str], timeout: float) -> dict:
    """Run ``python -m bench.peers`` with arguments; return its JSON result."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench.peers", *arguments],
        capture_output=True,
        text=True,
        env=servers.bench_env(),
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"bench.peers {arguments[0]} failed:\n{completed.stderr}")
    result: dict = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def describe(result: LoadResult) -> str:
    # CPU per update depends less on how busy the shared machine is than the
    # rate does, so it shows what each server spends on an update.
    cpu_per_update = result.server_cpu / result.rate * 1e6 if result.rate else 0.0
    text = (
        f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, "
        f"server {result.server_cpu:.2f} cores ({cpu_per_update:.0f} us per "
        f"update), clients {result.client_cpu:.2f} cores"
    )
    if result.errors:
        text += f", {result.errors} errors (first: {result.first_error})"
    return text


def median_result(results: list[LoadResult]) -> LoadResult:
    """Return the run with the median rate (the lower middle one of an even count)."""
    ordered = sorted(results, key=lambda result: result.rate)
    return ordered[(len(ordered) - 1) // 2]


Run = tuple[str, servers.ServerProcess, list[str], LoadConfig]


def run_pair(
    pair: list[Run],
    round_index: int,
    settings: WriteSettings,
    runs: dict[str, list[LoadResult]],
) -> None:
    """Load the two servers of pair one after the other; add to runs."""
    # Odd rounds start with the second server, so a machine that gets busier
    # or quieter during a round favours neither.
    ordered = pair[::-1] if round_index % 2 else pair
    for name, server, sessions, config in ordered:
        result = run_load(
            server.address,
            sessions,
            config,
            settings.seconds,
            settings.warmup,
            server.pid,
        )
        runs[name].append(result)
        logger.info("round %d %s: %.0f/s", round_index, name, result.rate)


def bench_writes(workdir: pathlib.Path, settings: WriteSettings) -> list[Figure]:
    """Measure unary and stream writes on the echo server, the daemon and peers."""
    echo = servers.echo_server(workdir)
    daemon = servers.daemon(workdir / "writes.db", workdir / "writes-daemon.log")
    unary = LoadConfig("unary", settings.callers, settings.processes, settings.client)
    stream = dataclasses.replace(unary, mode="stream", window=settings.window)
    runs: dict[str, list[LoadResult]] = {
        "echo unary": [],
        "daemon unary": [],
        "echo stream": [],
        "daemon stream": [],
    }
    saver_rates: list[float] = []
    timeout = settings.seconds + settings.warmup + 120
    with servers.running(echo, daemon):
        daemon_sessions = create_sessions(daemon.address, settings.callers)
        echo_sessions = [str(uuid.uuid4()) for _ in range(settings.callers)]
        for round_index in range(settings.rounds):
            run_pair(
                [
                    ("echo unary", echo, echo_sessions, unary),
                    ("daemon unary", daemon, daemon_sessions, unary),
                ],
                round_index,
                settings,
                runs,
            )
            saver = run_peer(
                [
                    "saver",
                    "--database",
                    str(workdir / f"saver-{round_index}.db"),
                    "--threads",
                    str(settings.callers),
                    "--seconds",
                    str(settings.seconds),
                    "--warmup",
                    str(settings.warmup),
                ],
                timeout,
            )
            saver_rates.append(saver["count"] / saver["seconds"])
            logger.info("round %d saver: %.0f/s", round_index, saver_rates[-1])
            run_pair(
                [
                    ("echo stream", echo, echo_sessions, stream),
                    ("daemon stream", daemon, daemon_sessions, stream),
                ],
                round_index,
                settings,
                runs,
            )
    sqlite_rates = {}
    for batch in (1, settings.sqlite_batch):
        database = workdir / f"sqlite-{batch}.db"
        result = run_peer(
            [
                "sqlite",
                "--database",
                str(database),
                "--batch",
                str(batch),
                "--seconds",
                str(settings.seconds),
                "--warmup",
                str(settings.warmup),
            ],
            timeout,
        )
        sqlite_rates[batch] = result["count"] / result["seconds"]

    medians = {name: median_result(results) for name, results in runs.items()}
    saver_rate = statistics.median(saver_rates)
    unary_label = f"PatchState, {settings.callers} unary callers"
    stream_label = (
        f"StreamStateUpdates, {settings.callers} streams x {settings.window} in flight"
    )
    rounds_text = f"median of {settings.rounds} runs of {settings.seconds:g} s"
    return [
        Figure(
            unary_label,
            medians["daemon unary"].rate,
            "updates/s",
            "echo server",
            medians["echo unary"].rate,
            target=0.7,
            note=f"{rounds_text}; daemon {describe(medians['daemon unary'])}; "
            f"echo {describe(medians['echo unary'])}",
        ),
        Figure(
            stream_label,
            medians["daemon stream"].rate,
            "updates/s",
            "echo server",
            medians["echo stream"].rate,
            target=0.8,
            note=f"{rounds_text}; daemon {describe(medians['daemon stream'])}; "
            f"echo {describe(medians['echo stream'])}",
        ),
        Figure(
            f"{unary_label}, against SqliteSaver",
            medians["daemon unary"].rate,
            "updates/s",
            f"SqliteSaver, {settings.callers} threads",
            saver_rate,
            target=0.8,
        ),
        Figure(
            f"{stream_label}, against SqliteSaver",
            medians["daemon stream"].rate,
            "updates/s",
            f"SqliteSaver, {settings.callers} threads",
            saver_rate,
            target=3.0,
        ),
        Figure(
            "sqlite3 inserts, one commit each",
            sqlite_rates[1],
            "rows/s",
            note="WAL, synchronous=FULL, one thread, the state document per row",
        ),
        Figure(
            f"sqlite3 inserts, {settings.sqlite_batch} per commit",
            sqlite_rates[settings.sqlite_batch],
            "rows/s",
        ),
    ]
