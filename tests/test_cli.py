"""The ``editstore`` command as an operator uses it: help, settings, signals."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import subprocess
import sys

import grpc
import pytest

from editstore.server.config import Settings
from editstore.v1 import session_pb2 as pb
from editstore.v1 import session_pb2_grpc
from tests.daemon import Daemon, free_port

EDITSTORE = pathlib.Path(sys.executable).parent / "editstore"
SETTING_FLAGS = [
    "--" + field.name.replace("_", "-") for field in dataclasses.fields(Settings)
]


def clean_environment(**variables: str) -> dict[str, str]:
    """Return this process's environment without EDITSTORE_* settings."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("EDITSTORE_")
    }
    environment.update(variables)
    return environment


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EDITSTORE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else clean_environment(),
    )


def test_help_lists_commands() -> None:
    result = run("--help")
    assert result.returncode == 0, result.stderr
    for command in ("serve", "migrate", "health"):
        assert command in result.stdout


def test_serve_help_lists_every_setting() -> None:
    result = run("serve", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for flag in SETTING_FLAGS:
        assert flag in text
        variable = "EDITSTORE_" + flag.removeprefix("--").replace("-", "_").upper()
        assert variable in text


def test_serve_help_gives_default_address() -> None:
    result = run("serve", "--help")
    assert "127.0.0.1:50051" in result.stdout
    assert Settings().listen == "127.0.0.1:50051"


def test_migrate_help_lists_database_flag() -> None:
    result = run("migrate", "--help")
    assert result.returncode == 0, result.stderr
    assert "--database" in result.stdout
    assert "EDITSTORE_DATABASE" in result.stdout


def test_module_entry_point_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "editstore.server", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--listen" in result.stdout


class EnvironmentDaemon(Daemon):
    """A daemon started with no flags at all: every setting from variables."""

    def command(self) -> list[str]:
        return [str(EDITSTORE), "serve"]


@pytest.fixture
def sqlite_url(tmp_path: pathlib.Path) -> str:
    return f"sqlite:///{tmp_path / 'data' / 'editstore.db'}"


def test_settings_come_from_variables(sqlite_url: str, tmp_path: pathlib.Path) -> None:
    port = free_port()
    process = EnvironmentDaemon(
        sqlite_url,
        port=port,
        log_path=tmp_path / "daemon.log",
        env={
            "EDITSTORE_LISTEN": f"127.0.0.1:{port}",
            "EDITSTORE_DATABASE": sqlite_url,
            "EDITSTORE_MIGRATE": "1",
            "EDITSTORE_STATE_HISTORY": "3",
        },
    )
    process.start()
    try:
        with grpc.insecure_channel(process.address) as channel:
            stub = session_pb2_grpc.SessionServiceStub(channel)
            created = stub.CreateSession(
                pb.CreateSessionRequest(
                    session=pb.Session(image_path="a.jpg", naive_prompt="sky")
                ),
                timeout=10,
            )
        assert created.id
        log = process.log()
        assert f"127.0.0.1:{port}" in log
        assert sqlite_url in log
        assert "schema version 4" in log
    finally:
        assert process.terminate() == 0
    assert pathlib.Path(sqlite_url.removeprefix("sqlite:///")).is_file()


def test_flag_wins_over_variable(sqlite_url: str, tmp_path: pathlib.Path) -> None:
    process = Daemon(
        sqlite_url,
        port=free_port(),
        log_path=tmp_path / "daemon.log",
        extra_args=["--state-history", "5"],
        env={"EDITSTORE_STATE_HISTORY": "0", "EDITSTORE_LISTEN": "127.0.0.1:1"},
    )
    process.start()
    try:
        assert f"serving on {process.address}" in process.log()
    finally:
        assert process.terminate() == 0


def test_debug_log_without_library_lines(
    sqlite_url: str, tmp_path: pathlib.Path
) -> None:
    # At debug level the daemon's own lines are logged. Peewee's lines, which
    # contain every statement's values, are not.
    process = Daemon(
        sqlite_url,
        port=free_port(),
        log_path=tmp_path / "daemon.log",
        extra_args=["--log-level", "debug"],
    )
    process.start()
    try:
        with grpc.insecure_channel(process.address) as channel:
            sessions = session_pb2_grpc.SessionServiceStub(channel)
            sessions.CreateSession(
                pb.CreateSessionRequest(
                    session=pb.Session(
                        image_path="/a.jpg", naive_prompt="private instruction"
                    )
                ),
                timeout=10,
            )
            with pytest.raises(grpc.RpcError):
                sessions.GetSession(pb.GetSessionRequest(id="missing"), timeout=10)
    finally:
        assert process.terminate() == 0
    log = process.log()
    assert "DEBUG editstore.server.handlers" in log
    assert "failed with NOT_FOUND" in log
    assert "DEBUG peewee" not in log
    assert "private instruction" not in log


@pytest.mark.parametrize(
    ("args", "variables", "named"),
    [
        (["--state-history", "0"], {}, "--state-history"),
        (["--reader-threads", "0"], {}, "--reader-threads"),
        (["--tls-cert", "cert.pem"], {}, "--tls-key"),
        (["--state-history", "many"], {}, "--state-history"),
        ([], {"EDITSTORE_STATE_HISTORY": "many"}, "EDITSTORE_STATE_HISTORY"),
        ([], {"EDITSTORE_MIGRATE": "maybe"}, "EDITSTORE_MIGRATE"),
        (["--database", "mysql://root@127.0.0.1/x"], {}, "--database"),
    ],
    ids=[
        "zero_history",
        "no_readers",
        "cert_without_key",
        "history_not_a_number",
        "variable_not_a_number",
        "variable_not_a_boolean",
        "unknown_database",
    ],
)
def test_bad_setting_exits_naming_it(
    tmp_path: pathlib.Path, args: list[str], variables: dict[str, str], named: str
) -> None:
    result = run(
        "serve",
        "--listen",
        f"127.0.0.1:{free_port()}",
        *(
            []
            if "--database" in args
            else ["--database", f"sqlite:///{tmp_path / 'x.db'}"]
        ),
        *([] if "EDITSTORE_MIGRATE" in variables else ["--migrate"]),
        *args,
        env=clean_environment(**variables),
        timeout=30,
    )
    assert result.returncode != 0
    assert named in result.stderr


def test_sigterm_exits_zero_within_grace(
    sqlite_url: str, tmp_path: pathlib.Path
) -> None:
    process = Daemon(
        sqlite_url,
        port=free_port(),
        log_path=tmp_path / "daemon.log",
        extra_args=["--grace-seconds", "2"],
    )
    process.start()
    assert process.process is not None
    process.process.send_signal(signal.SIGTERM)
    assert process.process.wait(timeout=2 + 10) == 0
    assert "stopped" in process.log()


def test_sigint_exits_zero(sqlite_url: str, tmp_path: pathlib.Path) -> None:
    process = Daemon(sqlite_url, port=free_port(), log_path=tmp_path / "daemon.log")
    process.start()
    assert process.process is not None
    process.process.send_signal(signal.SIGINT)
    assert process.process.wait(timeout=20) == 0


def test_second_daemon_on_same_port_exits(
    sqlite_url: str, tmp_path: pathlib.Path
) -> None:
    first = Daemon(sqlite_url, port=free_port(), log_path=tmp_path / "first.log")
    first.start()
    try:
        result = run(
            "serve",
            "--listen",
            first.address,
            "--database",
            f"sqlite:///{tmp_path / 'other.db'}",
            "--migrate",
        )
        assert result.returncode != 0
        assert first.address in result.stderr
    finally:
        first.stop()


def test_health_command_reports_serving(
    sqlite_url: str, tmp_path: pathlib.Path
) -> None:
    process = Daemon(sqlite_url, port=free_port(), log_path=tmp_path / "daemon.log")
    process.start()
    try:
        result = run("health", "--address", process.address)
        assert result.returncode == 0, result.stderr
        assert "SERVING" in result.stdout
    finally:
        process.stop()
    stopped = run("health", "--address", process.address, "--timeout", "1")
    assert stopped.returncode != 0
    assert "UNAVAILABLE" in stopped.stderr
    assert "failed to connect" in stopped.stderr
    assert "if the daemon uses TLS, pass --tls-ca" in stopped.stderr


def test_unsent_response_error_logged_at_debug() -> None:
    """grpcio's ExecuteBatchError after a call ended stays out of the log."""
    script = """
import logging
from editstore.server import cli
cli._configure_logging("info")
grpc_logger = logging.getLogger("grpc._cython.cygrpc")
grpc_logger.error("ExecuteBatchError raised in core by servicer method [/a/B]")
grpc_logger.error("Unexpected error raised by servicer method [/a/B]")
logging.getLogger("editstore").error("a real error")
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "ExecuteBatchError" not in result.stderr
    assert "Unexpected error raised by servicer method" in result.stderr
    assert "a real error" in result.stderr
    debug = subprocess.run(
        [sys.executable, "-c", script.replace('"info"', '"debug"')],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "DEBUG grpc._cython.cygrpc: ExecuteBatchError" in debug.stderr
