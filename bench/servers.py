"""Start the servers a benchmark measures, each in a process of its own."""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

logger = logging.getLogger(__name__)

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def daemon_server_options() -> list[tuple[str, Any]]:
    """Return the channel options the daemon gives its ``grpc.aio`` server.

    The echo server uses them too, so that both servers differ only in what
    their handlers do.
    """
    from editstore.server.app import server_options
    from editstore.server.config import Settings

    return server_options(Settings())


def bench_env() -> dict[str, str]:
    """Return the environment for child processes, with the repo importable."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{path}" if path else str(REPO_ROOT)
    return env


class ServerProcess:
    """A server subprocess that serves gRPC health checks on address."""

    def __init__(
        self, name: str, command: list[str], address: str, log_path: pathlib.Path
    ):
        self.name = name
        self.command = command
        self.address = address
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 60.0) -> None:
        """Start the process and wait until its health check returns SERVING."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env=bench_env()
            )
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with {self.process.returncode}; "
                        f"log:\n{self.log_tail()}"
                    )
                with contextlib.suppress(grpc.RpcError):
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        logger.info("%s serving on %s", self.name, self.address)
                        return
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(
                        f"{self.name} not serving on {self.address} after "
                        f"{timeout:.0f} s; log:\n{self.log_tail()}"
                    )
                time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the process with SIGTERM, or SIGKILL after timeout seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop on SIGTERM; killing it", self.name)
            self.process.kill()
            self.process.wait(timeout)

    def log_tail(self, size: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-size:]


def echo_server(workdir: pathlib.Path, stream_style: str = "tasks") -> ServerProcess:
    """Return the echo server, not yet started, on a free port."""
    address = f"127.0.0.1:{free_port()}"
    command = [
        sys.executable,
        "-m",
        "bench.echo_server",
        "--listen",
        address,
        "--stream-style",
        stream_style,
    ]
    return ServerProcess("echo server", command, address, workdir / "echo.log")


def daemon(
    database_path: pathlib.Path, log_path: pathlib.Path, migrate: bool = True
) -> ServerProcess:
    """Return ``editstore serve`` over a SQLite file, not yet started."""
    address = f"127.0.0.1:{free_port()}"
    command = [
        sys.executable,
        "-m",
        "editstore.server",
        "serve",
        "--listen",
        address,
        "--database",
        f"sqlite:///{database_path}",
    ]
    if migrate:
        command.append("--migrate")
    return ServerProcess("editstore daemon", command, address, log_path)


@contextlib.contextmanager
def running(*servers: ServerProcess) -> Iterator[None]:
    """Start servers and stop them when the block ends."""
    try:
        for server in servers:
            server.start()
        yield
    finally:
        for server in servers:
            server.stop()
