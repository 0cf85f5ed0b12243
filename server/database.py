"""Opening the database: SQLite in WAL mode by default, or PostgreSQL.

Peewee gives each thread its own connection, so the writer thread and the
reader threads never share one. On SQLite every transaction begins
IMMEDIATE, which takes the write lock at BEGIN instead of at the first write,
so a writer never fails half-way with SQLITE_BUSY; readers open read
transactions with ``read_transaction``, which begins DEFERRED.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pathlib
import sqlite3
from collections.abc import Iterator
from urllib.parse import urlparse

import peewee
from playhouse.db_url import connect as connect_url

from editstore.server.models import database_proxy

logger = logging.getLogger(__name__)

SQLITE_PAGE_SIZE = 4096
SQLITE_CACHED_STATEMENTS = 512
SQLITE_BUSY_TIMEOUT_MS = 5000
POSTGRES_LOCK_TIMEOUT_MS = 5000


def is_postgres_url(url: str) -> bool:
    """Return whether the URL names a PostgreSQL database."""
    return urlparse(url).scheme in ("postgres", "postgresql")


def sqlite_path(url: str) -> str | None:
    """Return the file path of a SQLite URL or plain path; None otherwise."""
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///") :]
    if "://" in url:
        return None
    return url


def describe(url: str) -> str:
    """Return the URL without its password, for logs and errors."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@")
    return parsed._replace(netloc=netloc).geturl()


def open_database(url: str, max_database_bytes: int = 0) -> peewee.Database:
    """Open the database named by ``url`` and bind the models to it.

    Args:
        url: ``sqlite:///PATH``, a plain file path, or ``postgresql://...``.
        max_database_bytes: quota of a SQLite file; writes past it fail with
            "database or disk is full". 0 means no quota. Ignored for
            PostgreSQL.

    Raises:
        ValueError: the URL names another kind of database.
    """
    path = sqlite_path(url)
    database: peewee.Database
    if path is not None:
        if path != ":memory:":
            pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        pragmas: list[tuple[str, object]] = [
            ("journal_mode", "wal"),
            ("synchronous", "full"),
            ("foreign_keys", 1),
            ("busy_timeout", SQLITE_BUSY_TIMEOUT_MS),
        ]
        if max_database_bytes:
            pages = max(1, max_database_bytes // SQLITE_PAGE_SIZE)
            pragmas.append(("max_page_count", pages))
        database = peewee.SqliteDatabase(
            path,
            pragmas=pragmas,
            lock_type="IMMEDIATE",
            check_same_thread=False,
            # The write path runs each multi-row statement in up to 19 sizes
            # (``prepared.RowsQuery``); the sqlite3 module keeps 128 by default.
            cached_statements=SQLITE_CACHED_STATEMENTS,
            timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
        )
    elif is_postgres_url(url):
        # A row lock held by a stuck daemon sharing the database must not
        # stall this daemon's writer for ever.
        database = connect_url(
            url, options=f"-c lock_timeout={POSTGRES_LOCK_TIMEOUT_MS}"
        )
    else:
        raise ValueError(
            f"unsupported --database {describe(url)!r}: use sqlite:///PATH, "
            "a file path, or postgresql://USER@HOST/DB"
        )
    database_proxy.initialize(database)
    return database


@contextlib.contextmanager
def read_transaction(database: peewee.Database) -> Iterator[None]:
    """Run the block in one read transaction that takes no write lock."""
    if isinstance(database, peewee.SqliteDatabase):
        with database.atomic("DEFERRED"):
            yield
    else:
        # READ COMMITTED, PostgreSQL's default, lets each statement see
        # commits made since the previous one, so a read of a session and
        # then its records could see a delete half-way. REPEATABLE READ reads
        # one snapshot, and a transaction that only reads never fails on it.
        with database.atomic(isolation_level="REPEATABLE READ"):
            yield


def _chain(error: BaseException) -> list[BaseException]:
    """Return the error and the errors it was raised from or while handling.

    When a write fails with SQLITE_FULL, SQLite may roll the transaction back
    itself, and the ROLLBACK that follows fails with "no transaction is
    active": the first error is then found only in the chain.
    """
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def root_cause(error: BaseException) -> BaseException:
    """Return the first error of the chain ``error`` ends (see ``_chain``)."""
    return _chain(error)[-1]


def is_disk_full(error: BaseException) -> bool:
    """Return whether a database error means the disk or quota is full."""
    for link in _chain(error):
        text = str(link).lower()
        if "database or disk is full" in text or "no space left" in text:
            return True
        if isinstance(link, sqlite3.DatabaseError):
            if getattr(link, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                return True
        if getattr(link, "pgcode", None) in ("53100", "53200", "54000"):
            return True
    return False


def is_busy(error: BaseException) -> bool:
    """Return whether a database error is transient: locked, busy, or lost."""
    text = str(error).lower()
    transient = (
        "database is locked",
        "database is busy",
        "could not serialize",
        "lock timeout",
    )
    if any(fragment in text for fragment in transient):
        return True
    if isinstance(error, peewee.InterfaceError | peewee.OperationalError):
        return "connection" in text or "server closed" in text
    return False


def is_connection_lost(error: BaseException) -> bool:
    """Return whether a database error reports a lost connection to the
    server, as when PostgreSQL ends it."""
    text = str(error).lower()
    lost = (
        "server closed the connection",
        "connection already closed",
        "terminating connection",
        "connection has been closed",
    )
    return isinstance(error, peewee.DatabaseError | peewee.InterfaceError) and any(
        fragment in text for fragment in lost
    )


def reset_if_broken(database: peewee.Database) -> None:
    """Drop this thread's connection if it is no longer usable.

    After PostgreSQL ends a connection (a restart, a failover, an idle
    timeout), Peewee keeps handing out the dead connection. Dropping it makes
    the next query of this thread connect again.
    """
    try:
        if database.is_closed() or database.is_connection_usable():
            return
    except Exception:  # noqa: BLE001 - any failure here means unusable
        pass
    logger.warning("database connection lost; reconnecting on next use")
    try:
        database.close()
    except Exception:  # noqa: BLE001 - the connection is already gone
        pass
    database._state.reset()  # type: ignore[attr-defined]


class DatabaseInUse(Exception):
    """Another daemon serves the same SQLite file."""


def lock_sqlite_file(url: str) -> int | None:
    """Take the lock that lets one daemon serve a SQLite file; return its fd.

    Watches learn of changes from the daemon's own writer, so a second daemon
    on the same file would leave them blind to its writes. Returns None for
    PostgreSQL, where daemons may share a database.

    Raises:
        DatabaseInUse: another process holds the lock.
    """
    path = sqlite_path(url)
    if path is None or path == ":memory:":
        return None
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    # Two names of one file (a symlink, a relative path) share one lock.
    path = os.path.realpath(path)
    lock_path = f"{path}-daemon.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatabaseInUse(
            f"another editstore daemon serves {path} (it holds {lock_path}); "
            "stop it, or use PostgreSQL to run several daemons on one database"
        ) from None
    return fd
