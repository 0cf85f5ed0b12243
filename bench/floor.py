"""The cost of the daemon's state write path without gRPC or a second thread.

    python -m bench.floor

One thread runs the daemon's own code for merge patches
(``states.patch_state`` and ``states.run_together``) on a SQLite file opened
as the daemon opens it (WAL, synchronous=FULL), over 64 sessions holding the
benchmark's 1.9 KB document. Each batch is one transaction, as the writer
thread runs it. It prints the time per update for batches of 8 updates (what
64 unary callers made) and of 256 (what 64 streams made), split into
preparing the patches (done on the event loop in the daemon), applying them
and committing. ``--postgres URL`` measures the same on a database that
it creates through the PostgreSQL server at URL and drops at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
import uuid
from collections.abc import Iterator

import peewee
import psycopg2

from bench.workload import base_document_json, patch_json
from editstore.server import migrate, records, states
from editstore.server.database import open_database

SESSIONS = 64
LIMITS = states.StateLimits(max_document_bytes=4 * 1024 * 1024, state_history=100)


def create_sessions(database: peewee.Database) -> list[str]:
    """Create the sessions, each with the benchmark's document as version 1."""
    sessions = []
    with database.atomic():
        for _ in range(SESSIONS):
            fields = {"image_path": "photo.png", "naive_prompt": "warmer light"}
            session_id = str(records.create_session(fields, "")([])["id"])
            document = base_document_json(session_id)
            states.put_state(session_id, document, None, "", LIMITS)([])
            sessions.append(session_id)
    return sessions


def measure(
    database: peewee.Database, sessions: list[str], batch: int, updates: int
) -> dict[str, float]:
    """Return the microseconds per update of each step, for ``updates`` updates."""
    spent = {"prepare": 0.0, "apply": 0.0, "commit": 0.0}
    step = 0
    for _ in range(updates // batch):
        started = time.perf_counter()
        changes = []
        for _ in range(batch):
            session_id = sessions[step % SESSIONS]
            patch = patch_json(step)
            changes.append(states.patch_state(session_id, patch, None, "", LIMITS))
            step += 1
        prepared = time.perf_counter()
        with database.atomic():
            applied = time.perf_counter()
            states.run_together(changes, [])
            before_commit = time.perf_counter()
        committed = time.perf_counter()
        spent["prepare"] += prepared - started
        spent["apply"] += (applied - prepared) + (before_commit - applied)
        spent["commit"] += committed - before_commit
    return {name: seconds / step * 1e6 for name, seconds in spent.items()}


@contextlib.contextmanager
def scratch_database(postgres: str | None) -> Iterator[str]:
    """Yield the URL of an empty database, removed when the block ends."""
    if postgres is None:
        with tempfile.TemporaryDirectory(prefix="editstore-floor-") as temporary:
            yield f"sqlite:///{temporary}/floor.db"
        return
    name = f"editstore_floor_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(postgres)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{postgres.rpartition('/')[0]}/{name}"
        finally:
            with admin.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--updates", type=int, default=20_000, help="updates per batch size"
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="a PostgreSQL server's database URL (postgresql://USER@HOST:PORT/DB) "
        "through which to create a scratch database instead of a SQLite file",
    )
    args = parser.parse_args()
    for batch in (8, 256):
        with scratch_database(args.postgres) as url:
            database = open_database(url)
            migrate.upgrade(database)
            sessions = create_sessions(database)
            # The first pass fills the history up to its limit of 100
            # versions, so that the measured pass prunes as the daemon does.
            measure(database, sessions, batch, SESSIONS * 128)
            cost = measure(database, sessions, batch, args.updates)
            database.close()
        total = sum(cost.values())
        print(
            f"batches of {batch}: {total:.0f} us per update: prepare "
            f"{cost['prepare']:.0f}, apply {cost['apply']:.0f}, "
            f"commit {cost['commit']:.0f}"
        )


if __name__ == "__main__":
    main()
