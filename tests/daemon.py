"""A daemon process for tests: ``editstore serve`` started as a user would."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Daemon:
    """Start, kill and restart one ``editstore serve`` process."""

    def __init__(
        self,
        database_url: str,
        port: int,
        log_path: pathlib.Path,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.database_url = database_url
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.log_path = log_path
        self.extra_args = list(extra_args or [])
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "editstore.server",
            "serve",
            "--listen",
            self.address,
            "--database",
            self.database_url,
            "--migrate",
            *self.extra_args,
        ]

    def start(self, timeout: float = 30.0) -> None:
        """Start the daemon and wait until its health check says SERVING."""
        env = dict(os.environ)
        env.update(self.env or {})
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=env
        )
        log.close()
        self.wait_serving(timeout)

    def wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"daemon exited with {self.process.returncode}:\n"
                        + self.log_path.read_text(errors="replace")[-4000:]
                    )
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"daemon not serving on {self.address}")
                time.sleep(0.05)

    def kill(self) -> None:
        """Kill the daemon with SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        """Send SIGTERM and return the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.terminate(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
