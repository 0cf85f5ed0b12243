"""Reads at two database sizes: listing a page and reading one session.

Building a million sessions through the API would take hours, so the
databases are filled with SQL, in the daemon's own schema:

1. ``editstore serve --migrate`` creates the schema in a fresh file, and one
   sample session with two prompts, three entities, a validation, feedback
   and a state document is created through the API;
2. the daemon stops. In one transaction, the sample is removed, the new
   sessions are inserted with new ids and creation times, and the sample's
   rows of every other table are copied to each of them;
3. the daemon starts again on the filled file.

Filled files are cached in a folder (``/tmp/editstore-bench`` by default),
named after the session count and a hash of the schema, so that reruns skip
the fill until a migration changes the schema.

Both daemons, on the smaller and the bigger file, run at once, and each call
is timed one at a time from one client, alternating between the two, so the
ratio compares calls made in the same seconds.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import pathlib
import random
import shutil
import sqlite3
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from bench import servers
from bench.figures import Figure
from editstore.v1 import session_pb2, session_pb2_grpc, state_pb2, state_pb2_grpc

logger = logging.getLogger(__name__)

# Change this when the rows the fill writes change, so cached files are
# rebuilt.
FILL_FORMAT = "listing-fill-2"
FIRST_CREATED_AT = datetime.datetime(2025, 1, 1)
SECONDS_BETWEEN_SESSIONS = 30
SAMPLE_READS = 200


def create_sample(address: str) -> str:
    """Create one session with a record of every kind; return its id."""
    with grpc.insecure_channel(address) as channel:
        sessions = session_pb2_grpc.SessionServiceStub(channel)
        states = state_pb2_grpc.StateServiceStub(channel)
        session = sessions.CreateSession(
            session_pb2.CreateSessionRequest(
                session=session_pb2.Session(
                    image_path="/data/photos/000000039769.png",
                    naive_prompt="make the light warmer and the cats sharper",
                )
            ),
            timeout=30,
        )
        for iteration in range(2):
            sessions.CreatePrompt(
                session_pb2.CreatePromptRequest(
                    prompt=session_pb2.Prompt(
                        session_id=session.id,
                        iteration=iteration,
                        positive_prompt="two cats asleep on a couch, warm evening "
                        f"light, detailed fur, take {iteration}",
                        negative_prompt="blurry, distorted remotes",
                        quality_score=0.7 + iteration / 10,
                    )
                ),
                timeout=30,
            )
        sessions.BatchCreateEntities(
            session_pb2.BatchCreateEntitiesRequest(
                session_id=session.id,
                entities=[
                    session_pb2.Entity(
                        entity_id=f"{label}_{index}",
                        label=label,
                        confidence=0.9,
                        bbox=session_pb2.BoundingBox(
                            x=10.0 * index, y=20.0, width=120.0, height=96.0
                        ),
                        mask_path=f"/data/masks/{label}_{index}.png",
                        color_hex="#7f6a55",
                        area_percent=12.5,
                    )
                    for index, label in enumerate(("cat", "cat", "couch"))
                ],
            ),
            timeout=30,
        )
        sessions.CreateValidation(
            session_pb2.CreateValidationRequest(
                validation=session_pb2.Validation(
                    session_id=session.id,
                    attempt_number=0,
                    alignment_score=0.87,
                    preserved_count=4,
                    modified_count=2,
                    user_feedback="the cats look sharper",
                )
            ),
            timeout=30,
        )
        sessions.CreateUserFeedback(
            session_pb2.CreateUserFeedbackRequest(
                user_feedback=session_pb2.UserFeedback(
                    session_id=session.id,
                    feedback_type=session_pb2.FEEDBACK_TYPE_ACCEPT,
                    comments="good",
                    rating=4,
                )
            ),
            timeout=30,
        )
        states.PutState(
            state_pb2.PutStateRequest(
                session_id=session.id,
                document_json=json.dumps(
                    {
                        "session_id": session.id,
                        "current_stage": "done",
                        "validation": {"score": 0.87},
                    }
                ),
            ),
            timeout=30,
        )
    return str(session.id)


def schema_key(path: pathlib.Path) -> str:
    """Return a hash of the schema of the SQLite file at path."""
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master "
            "WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
        ).fetchall()
    digest = hashlib.sha256(FILL_FORMAT.encode())
    for row in rows:
        digest.update(repr(row).encode())
    return digest.hexdigest()[:16]


def make_template(workdir: pathlib.Path) -> tuple[pathlib.Path, str]:
    """Create a migrated database with one sample session; return it and its id."""
    path = workdir / "listing-template.db"
    daemon = servers.daemon(path, workdir / "listing-template.log")
    with servers.running(daemon):
        sample_id = create_sample(daemon.address)
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path, sample_id


def session_status(index: int) -> str:
    """Return the stored status of the index-th session: 1% still in progress."""
    if index % 100 == 0:
        return "in_progress"
    if index % 7 == 0:
        return "failed"
    return "completed"


@dataclasses.dataclass
class TableSample:
    """The sample session's rows of one table, ready to be copied."""

    table: str
    columns: list[str]
    rows: list[tuple[Any, ...]]


def read_samples(connection: sqlite3.Connection, sample_id: str) -> list[TableSample]:
    """Return the sample session's rows in every table that contains session rows."""
    samples = []
    tables = [
        row[0]
        for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    for table in tables:
        columns = [
            row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')
        ]
        key = "id" if table == "sessions" else "session_id"
        if key not in columns:
            continue
        rows = connection.execute(
            f'SELECT * FROM "{table}" WHERE "{key}" = ?', (sample_id,)
        ).fetchall()
        if rows:
            samples.append(TableSample(table, columns, rows))
    return samples


def session_rows(sample: TableSample, count: int) -> Iterator[tuple[Any, ...]]:
    """Yield count copies of the sample session with new ids, times and status."""
    (row,) = sample.rows
    generator = random.Random(count)
    for index in range(count):
        created = FIRST_CREATED_AT + datetime.timedelta(
            seconds=index * SECONDS_BETWEEN_SESSIONS,
            microseconds=generator.randrange(1, 1_000_000),
        )
        changes = {
            "id": str(uuid.UUID(int=generator.getrandbits(128), version=4)),
            # str() of a datetime is how Peewee stores one in SQLite.
            "created_at": str(created),
            "status": session_status(index),
        }
        yield tuple(
            changes.get(column, value)
            for column, value in zip(sample.columns, row, strict=True)
        )


def copy_children_sql(sample: TableSample, sample_id: str) -> str:
    """Return SQL that copies the sample's rows of a table to every session.

    The copies read from ``temp.sample_rows``, which contains the sample's rows;
    text that contains the sample's id gets the new session's id instead.
    """
    expressions = []
    for index, column in enumerate(sample.columns):
        values = [row[index] for row in sample.rows]
        if column == "id":
            expressions.append("NULL")
        elif column == "session_id":
            expressions.append("s.id")
        elif column in ("created_at", "updated_at"):
            expressions.append("s.created_at")
        elif any(isinstance(value, str) and sample_id in value for value in values):
            expressions.append(f'replace(r."{column}", :sample_id, s.id)')
        else:
            expressions.append(f'r."{column}"')
    names = ", ".join(f'"{column}"' for column in sample.columns)
    # CROSS JOIN makes SQLite scan the sessions in the outer loop, so the
    # rows of one session are written together, as the API writes them.
    return (
        f'INSERT INTO "{sample.table}" ({names}) '
        f"SELECT {', '.join(expressions)} "
        "FROM sessions AS s CROSS JOIN temp.sample_rows AS r"
    )


def fill(
    template: pathlib.Path, sample_id: str, target: pathlib.Path, count: int
) -> float:
    """Copy template to target with count sessions; return the seconds taken."""
    started = time.monotonic()
    partial = target.with_suffix(".partial")
    shutil.copyfile(template, partial)
    connection = sqlite3.connect(partial, isolation_level=None)
    try:
        # The file is a scratch copy until it is renamed, so a crash during
        # the fill may corrupt it: no journal, no flushes, a 1 GB page cache.
        connection.execute("PRAGMA journal_mode=OFF")
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("PRAGMA cache_size=-1000000")
        samples = {
            sample.table: sample for sample in read_samples(connection, sample_id)
        }
        sessions = samples.pop("sessions")
        connection.execute("BEGIN")
        for sample in samples.values():
            connection.execute(
                f'DELETE FROM "{sample.table}" WHERE session_id = ?', (sample_id,)
            )
        connection.execute("DELETE FROM sessions WHERE id = ?", (sample_id,))
        placeholders = ", ".join("?" * len(sessions.columns))
        names = ", ".join(f'"{column}"' for column in sessions.columns)
        connection.executemany(
            f"INSERT INTO sessions ({names}) VALUES ({placeholders})",
            session_rows(sessions, count),
        )
        logger.info("filled sessions")
        for sample in samples.values():
            connection.execute(
                f'CREATE TEMP TABLE sample_rows AS SELECT * FROM "{sample.table}" '
                "WHERE 0"
            )
            connection.executemany(
                f"INSERT INTO temp.sample_rows VALUES "
                f"({', '.join('?' * len(sample.columns))})",
                sample.rows,
            )
            connection.execute(
                copy_children_sql(sample, sample_id), {"sample_id": sample_id}
            )
            connection.execute("DROP TABLE temp.sample_rows")
            logger.info("filled %s", sample.table)
        connection.execute("COMMIT")
        connection.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()
    partial.rename(target)
    return time.monotonic() - started


def filled_database(
    workdir: pathlib.Path, cache_dir: pathlib.Path, counts: list[int]
) -> tuple[dict[int, pathlib.Path], dict[int, float]]:
    """Return a filled file for each count, and the fill seconds of new ones."""
    template, sample_id = make_template(workdir)
    key = schema_key(template)
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    fill_seconds = {}
    for count in counts:
        path = cache_dir / f"sessions-{count}-{key}.db"
        if not path.exists():
            fill_seconds[count] = fill(template, sample_id, path, count)
            print(f"listing: filled {count:,} sessions in {fill_seconds[count]:.0f} s")
        paths[count] = path
    return paths, fill_seconds


def pick_session_ids(path: pathlib.Path, count: int) -> list[str]:
    """Return session ids spread at random over the file."""
    generator = random.Random(7)
    with sqlite3.connect(path) as connection:
        total = connection.execute("SELECT max(rowid) FROM sessions").fetchone()[0]
        rowids = [generator.randint(1, total) for _ in range(count)]
        marks = ", ".join("?" * len(rowids))
        rows = connection.execute(
            f"SELECT id FROM sessions WHERE rowid IN ({marks})", rowids
        ).fetchall()
    ids = [row[0] for row in rows]
    generator.shuffle(ids)
    return ids


def middle_time(count: int) -> timestamp_pb2.Timestamp:
    middle = FIRST_CREATED_AT + datetime.timedelta(
        seconds=count // 2 * SECONDS_BETWEEN_SESSIONS
    )
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(middle.replace(tzinfo=datetime.UTC))
    return stamp


Call = Callable[[int], object]


def time_calls(call: Call, seconds: float) -> list[float]:
    """Call call(i) one at a time for seconds; return each call's duration."""
    durations = []
    end = time.monotonic() + seconds
    index = 0
    while time.monotonic() < end:
        started = time.perf_counter()
        call(index)
        durations.append(time.perf_counter() - started)
        index += 1
    return durations


def operations(
    channel: grpc.Channel, count: int, session_ids: list[str]
) -> dict[str, Call]:
    """Return the timed calls against one daemon, by name."""
    stub = session_pb2_grpc.SessionServiceStub(channel)
    first_page = stub.ListSessions(session_pb2.ListSessionsRequest(page_size=50))
    if not first_page.next_page_token:
        raise RuntimeError("ListSessions returned one page only; the fill failed")
    before_middle = middle_time(count)

    def pick(index: int) -> str:
        return session_ids[index % len(session_ids)]

    return {
        "ListSessions, first page of 50": lambda _: stub.ListSessions(
            session_pb2.ListSessionsRequest(page_size=50), timeout=30
        ),
        "ListSessions, first page of 50, status IN_PROGRESS (1%)": lambda _: (
            stub.ListSessions(
                session_pb2.ListSessionsRequest(
                    page_size=50, status=session_pb2.SESSION_STATUS_IN_PROGRESS
                ),
                timeout=30,
            )
        ),
        "ListSessions, second page of 50 by page_token": lambda _: stub.ListSessions(
            session_pb2.ListSessionsRequest(
                page_size=50, page_token=first_page.next_page_token
            ),
            timeout=30,
        ),
        "ListSessions, page of 50 created before the middle": lambda _: (
            stub.ListSessions(
                session_pb2.ListSessionsRequest(
                    page_size=50, create_time_before=before_middle
                ),
                timeout=30,
            )
        ),
        "GetSession, random session": lambda index: stub.GetSession(
            session_pb2.GetSessionRequest(id=pick(index)), timeout=30
        ),
        "ResumeSession, random session": lambda index: stub.ResumeSession(
            session_pb2.ResumeSessionRequest(id=pick(index)), timeout=30
        ),
    }


def bench_listing(
    workdir: pathlib.Path,
    cache_dir: pathlib.Path,
    small: int,
    big: int,
    seconds: float,
    rounds: int = 2,
) -> list[Figure]:
    """Compare the cost of reads on a database of small and of big sessions."""
    paths, fill_seconds = filled_database(workdir, cache_dir, [small, big])
    ids = {
        count: pick_session_ids(paths[count], SAMPLE_READS) for count in (small, big)
    }
    daemons = {
        count: servers.daemon(
            paths[count], workdir / f"listing-{count}.log", migrate=False
        )
        for count in (small, big)
    }
    durations: dict[tuple[str, int], list[float]] = {}
    with servers.running(*daemons.values()):
        channels = {
            count: grpc.insecure_channel(daemons[count].address)
            for count in (small, big)
        }
        calls = {
            count: operations(channels[count], count, ids[count])
            for count in (small, big)
        }
        # Short slices, alternating between the two daemons, so both see the
        # same moments of a shared machine.
        slice_seconds = seconds / 4
        for name in calls[small]:
            for count in (small, big):
                time_calls(calls[count][name], min(0.2, slice_seconds))
            for _ in range(4 * rounds):
                for count in (small, big):
                    durations.setdefault((name, count), []).extend(
                        time_calls(calls[count][name], slice_seconds)
                    )
        for channel in channels.values():
            channel.close()
    figures = []
    for name in calls[small]:
        small_ms = statistics.median(durations[(name, small)]) * 1000
        big_ms = statistics.median(durations[(name, big)]) * 1000
        figures.append(
            Figure(
                f"{name}, {big:,} vs {small:,} sessions",
                big_ms,
                "ms",
                f"{small:,} sessions",
                small_ms,
                target=1.5,
                higher_is_better=False,
                note=f"median of {len(durations[(name, big)])} and "
                f"{len(durations[(name, small)])} calls, one at a time",
            )
        )
    if fill_seconds:
        filled = ", ".join(
            f"{count:,} sessions in {value:.0f} s"
            for count, value in fill_seconds.items()
        )
        figures[0].note += f"; filled {filled}"
    return figures
