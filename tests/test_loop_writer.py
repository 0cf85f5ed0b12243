"""How the SQLite writer groups writes into batches on the event loop."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import peewee
import pytest

from editstore.server import writer
from editstore.server.database import open_database

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def database(tmp_path: pathlib.Path) -> Iterator[peewee.Database]:
    database = open_database(f"sqlite:///{tmp_path / 'batches.db'}")
    database.execute_sql("CREATE TABLE marks (batch INTEGER)")
    yield database
    if not database.is_closed():
        database.close()


def marking(database: peewee.Database, loop_writer: writer.LoopWriter) -> Any:
    """Return a write that stores and returns the number of the batch it is in."""

    def mark(events: list[Any]) -> int:
        batch = loop_writer.batches
        database.execute_sql("INSERT INTO marks (batch) VALUES (?)", (batch,))
        return batch

    return mark


async def batches_of(
    database: peewee.Database, first: int, second: int, later: int
) -> list[int]:
    """Queue ``first`` writes at once, ``second`` while they commit, and
    ``later`` once they are committed; return the batch of each write."""
    loop_writer = writer.LoopWriter(database)
    loop_writer.start()
    mark = marking(database, loop_writer)
    futures = [loop_writer.enqueue(mark) for _ in range(first)]
    await asyncio.sleep(0)
    futures += [loop_writer.enqueue(mark) for _ in range(second)]
    await asyncio.gather(*futures[:first])
    futures += [loop_writer.enqueue(mark) for _ in range(later)]
    batches = list(await asyncio.gather(*futures))
    await asyncio.to_thread(loop_writer.stop, 30)
    return batches


def test_next_batch_waits_for_committed_callers(
    database: peewee.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After the first batch of 8 commits, the 3 writes queued meanwhile wait
    # for 8 more, one from each caller of that batch. The waiting limit is
    # longer than the test's timeout: only the eleventh write can start the
    # batch.
    monkeypatch.setattr(writer, "GATHER_SECONDS", 600.0)

    batches = asyncio.run(batches_of(database, 8, 3, 8))

    assert batches == [0] * 8 + [1] * 11


def test_gathering_ends_after_time_limit(
    database: peewee.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "GATHER_SECONDS", 0.05)

    batches = asyncio.run(batches_of(database, 8, 3, 0))

    assert batches == [0] * 8 + [1] * 3


def test_small_batches_never_wait(
    database: peewee.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A caller alone finds the queue empty when its commit ends, and after
    # a batch of fewer than 4 writes the next one starts at once.
    monkeypatch.setattr(writer, "GATHER_SECONDS", 600.0)

    async def scenario() -> list[int]:
        loop_writer = writer.LoopWriter(database)
        loop_writer.start()
        mark = marking(database, loop_writer)
        batches = [await loop_writer.enqueue(mark) for _ in range(10)]
        await asyncio.to_thread(loop_writer.stop, 30)
        batches += await batches_of(database, 1, 1, 0)
        batches += await batches_of(database, 3, 2, 0)
        return batches

    assert asyncio.run(scenario()) == list(range(10)) + [0, 1] + [0, 0, 0, 1, 1]


async def batches_by_source(
    database: peewee.Database, sources: list[object | None]
) -> list[int]:
    """Queue one write per entry of ``sources`` at once, each from that
    stream (None: a unary call); return the batch of each write."""
    loop_writer = writer.LoopWriter(database)
    loop_writer.start()
    mark = marking(database, loop_writer)
    futures = [loop_writer.enqueue(mark, source=source) for source in sources]
    batches = list(await asyncio.gather(*futures))
    await asyncio.to_thread(loop_writer.stop, 30)
    return batches


def sizes(batches: list[int]) -> list[int]:
    return [batches.count(number) for number in sorted(set(batches))]


def test_stream_updates_alone_fill_large_batches(database: peewee.Database) -> None:
    streams = [object() for _ in range(8)]
    sources: list[object | None] = [streams[index % 8] for index in range(1100)]

    batches = asyncio.run(batches_by_source(database, sources))

    assert sizes(batches) == [512, 512, 76]


def test_unary_write_goes_first_in_a_small_batch(database: peewee.Database) -> None:
    stream = object()
    sources: list[object | None] = [stream] * 1100
    sources[700] = None

    batches = asyncio.run(batches_by_source(database, sources))

    # The unary write, queued behind 700 stream updates, is in the first
    # batch, which takes 128 writes; the rest are stream updates alone.
    assert batches[700] == 0
    assert sizes(batches) == [128, 512, 460]
    stream_batches = batches[:700] + batches[701:]
    assert stream_batches == sorted(stream_batches)


def test_unary_writes_take_half_a_batch_beside_streams(
    database: peewee.Database,
) -> None:
    stream = object()
    sources: list[object | None] = [None] * 300 + [stream] * 300

    batches = asyncio.run(batches_by_source(database, sources))

    # Each batch of 128 takes 64 unary writes and 64 stream updates, until
    # one kind runs out.
    first = batches[:300].count(0), batches[300:].count(0)
    assert first == (64, 64)
    assert sorted(batches[:300]) == batches[:300]
    assert sorted(batches[300:]) == batches[300:]


def test_unary_writes_alone_fill_small_batches(database: peewee.Database) -> None:
    batches = asyncio.run(batches_by_source(database, [None] * 300))

    assert sizes(batches) == [128, 128, 44]


def test_shutdown_logs_nothing_for_cancelled_writes(
    database: peewee.Database, caplog: pytest.LogCaptureFixture
) -> None:
    # The thread writer of PostgreSQL, on SQLite here: every queued write was
    # cancelled by its caller before the stop deadline passed.
    thread_writer = writer.Writer(database)
    futures = [thread_writer.submit(lambda events: None) for _ in range(3)]
    assert all(future.cancel() for future in futures)
    thread_writer.stop(timeout=0)
    time.sleep(0.01)  # past the deadline
    with caplog.at_level(logging.WARNING, logger="editstore.server.writer"):
        thread_writer.start()
        thread_writer._thread.join(10)

    assert not thread_writer._thread.is_alive()
    assert "dropped" not in caplog.text
