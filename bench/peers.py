"""The alternatives a user could pick instead of editstore, run in process.

- ``saver``: LangGraph's ``SqliteSaver`` (package ``langgraph-checkpoint-sqlite``)
  with many threads, each writing checkpoints of one thread id whose channel
  values hold the benchmark's state document. Only ``put`` is called, the
  least a graph step writes; a real graph step also calls ``put_writes``.
- ``sqlite``: raw ``sqlite3`` inserts of the same document into one table,
  WAL with synchronous=FULL, from one thread: one commit per insert, or one
  per batch. That is the ceiling of durable writes to one SQLite file.

Run as ``python -m bench.peers saver|sqlite --database PATH ...``; the last
line printed is a JSON object with the count and the window in seconds.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import threading
import time
import uuid
from typing import Any

from bench.workload import base_document, base_document_json


def saver_writer(
    saver: Any, start: float, end: float, counts: list[int], index: int
) -> None:
    from langgraph.checkpoint.base import empty_checkpoint

    thread_id = str(uuid.uuid4())
    document = base_document(thread_id)
    config: dict[str, Any] = {
        "configurable": {"thread_id": thread_id, "checkpoint_ns": ""}
    }
    step = 0
    while time.monotonic() < end:
        step += 1
        document["progress"] = {"step": step}
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = {"state": document}
        checkpoint["channel_versions"] = {"state": step}
        config = saver.put(config, checkpoint, {"source": "loop", "step": step}, {})
        if start <= time.monotonic() <= end:
            counts[index] += 1


def run_saver(database: str, threads: int, seconds: float, warmup: float) -> dict:
    from langgraph.checkpoint.sqlite import SqliteSaver

    with SqliteSaver.from_conn_string(database) as saver:
        saver.setup()
        synchronous = saver.conn.execute("PRAGMA synchronous").fetchone()[0]
        journal_mode = saver.conn.execute("PRAGMA journal_mode").fetchone()[0]
        counts = [0] * threads
        start = time.monotonic() + warmup
        end = start + seconds
        workers = [
            threading.Thread(target=saver_writer, args=(saver, start, end, counts, i))
            for i in range(threads)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    return {
        "count": sum(counts),
        "seconds": seconds,
        "synchronous": synchronous,
        "journal_mode": journal_mode,
    }


def run_sqlite(database: str, batch: int, seconds: float, warmup: float) -> dict:
    connection = sqlite3.connect(database, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute(
        "CREATE TABLE IF NOT EXISTS states (id INTEGER PRIMARY KEY, "
        "session_id TEXT NOT NULL, version INTEGER NOT NULL, document TEXT NOT NULL)"
    )
    document = base_document_json(str(uuid.uuid4()))
    count = 0
    version = 0
    start = time.monotonic() + warmup
    end = start + seconds
    while time.monotonic() < end:
        connection.execute("BEGIN IMMEDIATE")
        for _ in range(batch):
            version += 1
            connection.execute(
                "INSERT INTO states (session_id, version, document) VALUES (?, ?, ?)",
                ("bench", version, document),
            )
        connection.execute("COMMIT")
        if start <= time.monotonic() <= end:
            count += batch
    connection.close()
    return {"count": count, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peer", choices=("saver", "sqlite"))
    parser.add_argument("--database", required=True, help="SQLite file to write")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=64, help="saver writers")
    parser.add_argument("--batch", type=int, default=1, help="inserts per commit")
    args = parser.parse_args()
    if args.peer == "saver":
        result = run_saver(args.database, args.threads, args.seconds, args.warmup)
    else:
        result = run_sqlite(args.database, args.batch, args.seconds, args.warmup)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
