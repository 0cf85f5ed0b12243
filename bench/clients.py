"""The load generator designs, compared by how hard they drive the echo server.

A client that runs out of CPU before the server does hides the server's
cost, so the write benchmarks use the client design that gets the most out
of the echo server. This benchmark compares the designs: asyncio with
``grpc.aio`` in 1, 2 or 4 processes, and threads with synchronous stubs in 2
processes, on unary calls and on streams. It is not part of the default run:
``python -m bench --only clients``.
"""

from __future__ import annotations

import pathlib
import uuid

from bench import servers
from bench.figures import Figure
from bench.load import LoadConfig, run_load

DESIGNS = (
    ("aio", 1),
    ("aio", 2),
    ("aio", 4),
    ("threads", 2),
)


def bench_clients(
    workdir: pathlib.Path, seconds: float, callers: int, window: int
) -> list[Figure]:
    """Measure the echo server's rate under each client design."""
    echo = servers.echo_server(workdir)
    sessions = [str(uuid.uuid4()) for _ in range(callers)]
    figures = []
    with servers.running(echo):
        for mode in ("unary", "stream"):
            rates = {}
            for client, processes in DESIGNS:
                config = LoadConfig(mode, callers, processes, client, window=window)
                result = run_load(
                    echo.address, sessions, config, seconds, server_pid=echo.pid
                )
                rates[(client, processes)] = result
            reference = rates[("aio", 2)].rate
            for (client, processes), result in rates.items():
                figures.append(
                    Figure(
                        f"echo {mode}, {client} client in {processes} "
                        + ("process" if processes == 1 else "processes"),
                        result.rate,
                        "calls/s" if mode == "unary" else "updates/s",
                        "aio client in 2 processes",
                        reference,
                        note=f"server {result.server_cpu:.2f} cores, clients "
                        f"{result.client_cpu:.2f} cores",
                    )
                )
    return figures
