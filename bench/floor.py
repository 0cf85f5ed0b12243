"""The least one durable patch of a stored state document costs, without gRPC.

    python -m bench.floor

One thread runs what a patch of a stored document needs, with ``sqlite3``
and ``json`` in WAL mode with synchronous=FULL: read the current document,
parse it, apply the patch, serialise it, update the current row, insert a
version row and prune versions past 100, each update in a savepoint and 256
updates a transaction, over 64 sessions. It prints the time per update and
its SQL and JSON parts. Tables are shaped like the daemon's
``session_states`` and ``state_versions``, but this is not the daemon's
code.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sqlite3
import tempfile
import time

from bench.workload import base_document_json

SESSIONS = 64
UPDATES_PER_COMMIT = 256
HISTORY = 100
NOW = "2026-01-01 00:00:00.000000"


def measure(path: pathlib.Path, commits: int) -> tuple[int, float, float, float]:
    """Return the updates made, and the seconds in all, in SQL and in JSON."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute(
        "CREATE TABLE states (session_id TEXT PRIMARY KEY, version INTEGER, "
        "document TEXT, updated_at TEXT)"
    )
    connection.execute(
        "CREATE TABLE versions (id INTEGER PRIMARY KEY, session_id TEXT, "
        "version INTEGER, document TEXT, merge_patch TEXT, created_at TEXT)"
    )
    connection.execute(
        "CREATE UNIQUE INDEX versions_session ON versions (session_id, version)"
    )
    sessions = [f"{index:036d}" for index in range(SESSIONS)]
    for session in sessions:
        connection.execute(
            "INSERT INTO states VALUES (?, 0, ?, ?)",
            (session, base_document_json(session), NOW),
        )
    sql_seconds = json_seconds = 0.0
    updates = 0
    started = time.perf_counter()
    for _ in range(commits):
        connection.execute("BEGIN IMMEDIATE")
        for index in range(UPDATES_PER_COMMIT):
            session = sessions[index % SESSIONS]
            patch = {"progress": {"step": updates}}
            before_read = time.perf_counter()
            version, text = connection.execute(
                "SELECT version, document FROM states WHERE session_id = ?",
                (session,),
            ).fetchone()
            before_json = time.perf_counter()
            document = json.loads(text)
            document.update(patch)
            text = json.dumps(document, separators=(",", ":"))
            after_json = time.perf_counter()
            version += 1
            connection.execute("SAVEPOINT patch")
            connection.execute(
                "UPDATE states SET version = ?, document = ?, updated_at = ? "
                "WHERE session_id = ?",
                (version, text, NOW, session),
            )
            connection.execute(
                "INSERT INTO versions (session_id, version, document, merge_patch, "
                "created_at) VALUES (?, ?, ?, ?, ?)",
                (session, version, text, json.dumps(patch), NOW),
            )
            if version > HISTORY:
                connection.execute(
                    "DELETE FROM versions WHERE session_id = ? AND version <= ?",
                    (session, version - HISTORY),
                )
            connection.execute("RELEASE patch")
            finished = time.perf_counter()
            sql_seconds += (before_json - before_read) + (finished - after_json)
            json_seconds += after_json - before_json
            updates += 1
        connection.execute("COMMIT")
    total = time.perf_counter() - started
    connection.close()
    return updates, total, sql_seconds, json_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--commits", type=int, default=40, help="transactions of 256 updates"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="editstore-floor-") as temporary:
        updates, total, sql, encode = measure(
            pathlib.Path(temporary) / "floor.db", args.commits
        )
    print(
        f"{updates} updates in {total:.2f} s: {total / updates * 1e6:.0f} us per "
        f"update, of which SQL {sql / updates * 1e6:.0f} us and JSON "
        f"{encode / updates * 1e6:.0f} us"
    )


if __name__ == "__main__":
    main()
