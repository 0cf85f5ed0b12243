"""How the SQLite writer groups writes into batches on the daemon's event loop."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import peewee
import pytest

from editstore.server import eventloop, writer
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


def run_on_daemon_loop(scenario: Callable[[], Any]) -> Any:
    with asyncio.Runner(loop_factory=eventloop.new_event_loop) as runner:
        return runner.run(scenario())


def test_idle_selector_waits_for_ready_callbacks() -> None:
    order: list[str] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        selector = eventloop.idle_selector(loop)
        assert selector is not None
        selector.call_when_idle(lambda: order.append("idle"))

        def chain(remaining: int) -> None:
            order.append(f"busy {remaining}")
            if remaining:
                loop.call_soon(chain, remaining - 1)

        chain(3)
        await asyncio.sleep(0.05)

    run_on_daemon_loop(scenario)
    assert order == ["busy 3", "busy 2", "busy 1", "busy 0", "idle"]


def test_busy_loop_gathers_queued_writes_into_one_batch(
    database: peewee.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a long gathering limit, only an idle loop or a full batch can
    # start the next batch. The loop stays busy for 20 passes after the
    # first commit, queueing a write at each.
    monkeypatch.setattr(writer, "GATHER_SECONDS", 600.0)

    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        loop_writer = writer.LoopWriter(database)
        loop_writer.start()
        mark = marking(database, loop_writer)
        first = loop_writer.enqueue(mark)
        later: list[asyncio.Future[int]] = []
        spinning = asyncio.Event()

        def spin(passes_after_commit: int) -> None:
            # While the first batch commits, at most 4 writes wait, so that
            # the second batch can not be full when the commit ends.
            if first.done():
                later.append(loop_writer.enqueue(mark))
                passes_after_commit -= 1
            elif len(later) < 4:
                later.append(loop_writer.enqueue(mark))
            if passes_after_commit:
                loop.call_soon(spin, passes_after_commit)
            else:
                spinning.set()

        loop.call_soon(spin, 20)
        await spinning.wait()
        batches = [await first] + [await future for future in later]
        await asyncio.to_thread(loop_writer.stop, 30)
        return batches

    batches = run_on_daemon_loop(scenario)
    after_first = batches[1:]
    assert batches[0] == 0
    assert 20 <= len(after_first) <= 24
    # Writes queued while the first batch committed, and the 20 queued after
    # it while the loop was busy, went into the second batch together.
    assert set(after_first) == {1}


def test_full_batch_starts_while_loop_busy(
    database: peewee.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "GATHER_SECONDS", 600.0)

    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        loop_writer = writer.LoopWriter(database, max_batch=8)
        loop_writer.start()
        mark = marking(database, loop_writer)
        futures = [loop_writer.enqueue(mark)]

        def spin() -> None:
            # Busy until 16 writes after the first have committed, so only
            # full batches can start meanwhile. While the first batch
            # commits, at most 4 writes wait: the second batch fills up
            # during the gathering.
            if len(futures) < 41 and (futures[0].done() or len(futures) < 5):
                futures.append(loop_writer.enqueue(mark))
            if sum(future.done() for future in futures) < 17:
                loop.call_soon(spin)

        loop.call_soon(spin)
        batches = [await future for future in futures]
        await asyncio.to_thread(loop_writer.stop, 30)
        return batches

    batches = run_on_daemon_loop(scenario)
    sizes = [batches.count(number) for number in sorted(set(batches))]
    assert len(batches) == 41
    assert sizes == [1, 8, 8, 8, 8, 8]


def test_idle_loop_starts_queued_write_at_once(
    database: peewee.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A write queued during a commit, on a loop with nothing else to do,
    # is not held for the gathering limit (600 s here, past the test's
    # timeout).
    monkeypatch.setattr(writer, "GATHER_SECONDS", 600.0)

    async def scenario() -> list[int]:
        loop_writer = writer.LoopWriter(database)
        loop_writer.start()
        mark = marking(database, loop_writer)
        first = loop_writer.enqueue(mark)
        await asyncio.sleep(0)
        second = loop_writer.enqueue(mark)
        batches = [await first, await second]
        await asyncio.to_thread(loop_writer.stop, 30)
        return batches

    assert run_on_daemon_loop(scenario) == [0, 1]
