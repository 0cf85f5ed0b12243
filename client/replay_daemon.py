"""A daemon process that ``editstore replay`` starts, kills and restarts.

The daemon runs as ``python -m editstore.server serve`` in a subprocess, so
the client library still never imports the server.
"""

from __future__ import annotations

import logging
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["DaemonProcess", "Restarter", "free_port"]

logger = logging.getLogger(__name__)


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DaemonProcess:
    """One ``editstore serve`` subprocess on 127.0.0.1."""

    def __init__(self, database_url: str, port: int, log_path: pathlib.Path) -> None:
        self.database_url = database_url
        self.address = f"127.0.0.1:{port}"
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Start the daemon and wait until its health check reports SERVING.

        Raises:
            RuntimeError: The daemon exited while starting.
            TimeoutError: It was not serving within ``timeout`` seconds.
        """
        command = [
            sys.executable,
            "-m",
            "editstore.server",
            "serve",
            "--listen",
            self.address,
            "--database",
            self.database_url,
            "--migrate",
        ]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ)
            )
        self._wait_serving(timeout)
        logger.info("daemon %s serving on %s", self._process.pid, self.address)

    def _wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                assert self._process is not None
                if self._process.poll() is not None:
                    raise RuntimeError(
                        f"daemon exited with code {self._process.returncode}; "
                        f"see {self.log_path}"
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
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(30)
            logger.info("daemon %s killed", self._process.pid)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the daemon with SIGTERM, or SIGKILL after ``timeout`` s."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


class Restarter:
    """Kills and restarts a daemon in the background while calls go on.

    The kill comes after a random delay of up to ``max_delay`` seconds, so
    that it lands in the middle of whatever the replay is sending.
    """

    def __init__(self, daemon: DaemonProcess, seed: int, max_delay: float = 0.3):
        self.daemon = daemon
        self.restarts = 0
        self.errors: list[BaseException] = []
        self._random = random.Random(seed)
        self._max_delay = max_delay
        self._thread: threading.Thread | None = None

    def restart_soon(self) -> None:
        """Start a kill and restart; waits for the previous one first."""
        self.wait()
        delay = self._random.uniform(0.0, self._max_delay)
        self._thread = threading.Thread(
            target=self._restart, args=(delay,), name="editstore-replay-restarter"
        )
        self._thread.start()

    def restart_now(self) -> None:
        """Kill and restart the daemon, and return once it serves again."""
        self.wait()
        self._restart(0.0)

    def _restart(self, delay: float) -> None:
        time.sleep(delay)
        try:
            self.daemon.kill()
            self.daemon.start()
            self.restarts += 1
        except BaseException as error:
            logger.exception("daemon restart failed")
            self.errors.append(error)

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
