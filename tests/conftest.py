"""Fixtures: a real daemon on a free port over a real database.

Every test that takes ``database_url`` (or ``daemon``) runs once on SQLite and
once on PostgreSQL. The PostgreSQL run needs ``EDITSTORE_TEST_POSTGRES`` to
name a database of a server that lets this user create databases, e.g.
``postgresql://postgres@127.0.0.1:5432/test``; each test gets a database of
its own, dropped afterwards. Without the variable those runs are skipped,
unless ``EDITSTORE_REQUIRE_POSTGRES=1`` is set, as CI does, and then they fail.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.daemon import Daemon, free_port

POSTGRES_ENV = "EDITSTORE_TEST_POSTGRES"
REQUIRE_POSTGRES_ENV = "EDITSTORE_REQUIRE_POSTGRES"
REAL_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def _postgres_admin_url() -> str | None:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(f"{REQUIRE_POSTGRES_ENV}=1 but {POSTGRES_ENV} is not set")
        return None
    return url


@contextlib.contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Create a PostgreSQL database, yield its URL, and drop it afterwards."""
    admin_url = _postgres_admin_url()
    if admin_url is None:
        pytest.skip(f"set {POSTGRES_ENV} to run the PostgreSQL tests")
    import psycopg2

    name = f"editstore_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        base, _, _ = admin_url.rpartition("/")
        yield f"{base}/{name}"
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """Create a fresh PostgreSQL database and return its URL."""
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    """Return the URL of an empty database, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'editstore.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def daemon(database_url: str, tmp_path: pathlib.Path) -> Iterator[Daemon]:
    """Start ``editstore serve`` on a free port and stop it after the test."""
    process = Daemon(database_url, port=free_port(), log_path=tmp_path / "daemon.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@contextlib.contextmanager
def module_daemon(
    backend: str,
    tmp_path_factory: pytest.TempPathFactory,
    extra_args: list[str] | None = None,
) -> Iterator[Daemon]:
    """Start a daemon on a fresh database of ``backend`` for a whole module."""
    folder = tmp_path_factory.mktemp(backend)
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            url = f"sqlite:///{folder / 'editstore.db'}"
        else:
            url = stack.enter_context(fresh_postgres_database())
        process = Daemon(
            url, port=free_port(), log_path=folder / "daemon.log", extra_args=extra_args
        )
        stack.callback(process.stop)
        process.start()
        yield process


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """Start one daemon per backend, shared by the tests of a module."""
    with module_daemon(request.param, tmp_path_factory) as process:
        yield process


@pytest.fixture
def real_data() -> pathlib.Path:
    """Return the folder of real input made outside this project."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data not found at {REAL_DATA}")
    return REAL_DATA


@contextlib.contextmanager
def small_tmpfs(folder: pathlib.Path, size: str) -> Iterator[pathlib.Path]:
    """Mount a tmpfs of ``size`` (such as "3m") on a new folder, or skip.

    Mounting needs root, which CI has.
    """
    folder.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
    )
    if result.returncode != 0:
        pytest.skip(f"can not mount a small tmpfs: {result.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def end_connections(database_url: str, listening: bool = False) -> int:
    """End the connections to a PostgreSQL database, as a restart of the
    server would; with ``listening``, only those waiting in LISTEN."""
    import psycopg2

    name = database_url.rpartition("/")[2]
    only_listen = "AND query LIKE 'LISTEN %%'" if listening else ""
    admin = psycopg2.connect(os.environ[POSTGRES_ENV])
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                f"WHERE datname = %s AND pid <> pg_backend_pid() {only_listen}",
                (name,),
            )
            return int(cursor.fetchone()[0])
    finally:
        admin.close()
