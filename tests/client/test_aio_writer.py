"""`AsyncStateWriter` against a real daemon on a real SQLite file.

The schedule's rules are shared with `StateWriter` and checked in depth by
test_writer_schedule.py; these tests check that the asyncio writer follows
them against the daemon. Tests of the interval and of important updates move
a fake clock and call `AsyncStateWriter.wake`, so they wait for no interval.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import pathlib
from collections.abc import Iterator

import pytest

from editstore.client import (
    AsyncClient,
    AsyncStateWriter,
    Client,
    InvalidArgument,
    RetryPolicy,
    StateWriter,
)
from tests.client.fakes import FakeClock
from tests.conftest import module_daemon
from tests.daemon import Daemon, free_port

pytestmark = pytest.mark.timeout(60)

EXPECTED = {f"key_{index:02d}": index for index in range(30)}
# Short waits between attempts, so that a restarted daemon is found soon.
FAST_BACKOFF = RetryPolicy(initial_backoff=0.05, max_backoff=0.5)


@pytest.fixture(scope="module")
def sqlite_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """Start one daemon on SQLite for the tests that never stop it."""
    with module_daemon("sqlite", tmp_path_factory) as process:
        yield process


async def new_session(client: AsyncClient) -> str:
    session = await client.create_session("/photos/39769.png", "make the cats purple")
    return session.id


def test_updates_are_merged_and_applied_once(sqlite_daemon: Daemon) -> None:
    async def scenario() -> None:
        async with AsyncClient(sqlite_daemon.address) as client:
            session_id = await new_session(client)
            writer = AsyncStateWriter(client, session_id, flush_interval=60)
            writer.update({"intent": {"edit_type": "style", "confidence": 0.4}})
            writer.update({"intent": {"confidence": 0.9}, "scratch": "x"})
            writer.update({"scratch": None})
            for key, value in EXPECTED.items():
                writer.update({key: value})
            assert await writer.flush(timeout=30) is True
            state = await client.get_state(session_id)
            await writer.close()
        assert state.document == {
            "intent": {"edit_type": "style", "confidence": 0.9},
            **EXPECTED,
        }
        assert state.version == 1
        assert writer.acknowledged_batches == 1
        assert writer.last_state is not None
        assert writer.last_state.version == 1
        assert writer.last_state.document == state.document

    asyncio.run(scenario())


def test_update_keeps_patch_as_given(sqlite_daemon: Daemon) -> None:
    async def scenario() -> None:
        async with AsyncClient(sqlite_daemon.address) as client:
            session_id = await new_session(client)
            async with AsyncStateWriter(client, session_id) as writer:
                patch = {"prompts": {"iteration_0": {"positive": "a"}}}
                writer.update(patch)
                patch["prompts"]["iteration_0"]["positive"] = "changed later"
            state = await client.get_state(session_id)
        assert state.document == {"prompts": {"iteration_0": {"positive": "a"}}}

    asyncio.run(scenario())


def test_interval_send_needs_no_flush(sqlite_daemon: Daemon) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        async with AsyncClient(sqlite_daemon.address) as client:
            session_id = await new_session(client)
            async with AsyncStateWriter(
                client, session_id, flush_interval=5, clock=clock
            ) as writer:
                writer.update({"k": 1})
                await writer.wake()
                clock.advance(4.0)
                await writer.wake()
                before = await client.get_state(session_id)
                clock.advance(1.0)
                await writer.wake()
                after = await client.get_state(session_id)
        assert before.version == 0
        assert after.version == 1
        assert after.document == {"k": 1}

    asyncio.run(scenario())


def test_interval_send_on_real_clock(sqlite_daemon: Daemon) -> None:
    async def scenario() -> None:
        async with AsyncClient(sqlite_daemon.address) as client:
            session_id = await new_session(client)
            async with AsyncStateWriter(
                client, session_id, flush_interval=0.1
            ) as writer:
                writer.update({"k": 1})
                # The writer's timer sends it; the test only polls for it.
                while writer.acknowledged_batches == 0:
                    await asyncio.sleep(0.02)
                state = await client.get_state(session_id)
        assert state.document == {"k": 1}
        assert state.version == 1

    asyncio.run(scenario())


def test_important_updates_are_sent_at_once(sqlite_daemon: Daemon) -> None:
    async def scenario() -> list[int]:
        clock = FakeClock()
        versions = []
        async with AsyncClient(sqlite_daemon.address) as client:
            session_id = await new_session(client)
            async with AsyncStateWriter(
                client, session_id, flush_interval=5, clock=clock
            ) as writer:
                await writer.wake()
                for patch, important in [
                    ({"current_stage": "analysis"}, False),
                    ({"current_stage": "analysis", "k": 1}, False),
                    ({"current_stage": "intent"}, False),
                    ({"validation": {"score": 0.8}}, True),
                    ({"completed": False}, False),
                    ({"completed": True}, False),
                    ({"status": "failed"}, False),
                ]:
                    writer.update(patch, important=important)
                    await writer.wake()
                    versions.append((await client.get_state(session_id)).version)
        return versions

    # The same stage again and a false "completed" wait for the interval;
    # each of the others is sent at once with what waited before it.
    assert asyncio.run(scenario()) == [1, 1, 2, 3, 3, 4, 5]


def test_flush_raises_rejected_batch(sqlite_daemon: Daemon) -> None:
    async def scenario() -> None:
        async with AsyncClient(sqlite_daemon.address) as client:
            session_id = await new_session(client)
            async with AsyncStateWriter(client, session_id) as writer:
                writer.update({"intent": {"confidence": 7}})
                with pytest.raises(InvalidArgument, match="intent.confidence"):
                    await writer.flush(timeout=30)
                assert isinstance(writer.last_error, InvalidArgument)
                writer.update({"k": 1})
                assert await writer.flush(timeout=30) is True
            state = await client.get_state(session_id)
        assert state.document == {"k": 1}
        assert state.version == 1

    asyncio.run(scenario())


def test_nan_update_is_dropped_and_raised(sqlite_daemon: Daemon) -> None:
    async def scenario() -> None:
        async with AsyncClient(sqlite_daemon.address) as client:
            session_id = await new_session(client)
            async with AsyncStateWriter(client, session_id) as writer:
                writer.update({"k": 1})
                writer.update({"score": float("nan")})
                with pytest.raises(ValueError):
                    await writer.flush(timeout=30)
                assert await writer.flush(timeout=30) is True
            state = await client.get_state(session_id)
        assert state.document == {"k": 1}

    asyncio.run(scenario())


def test_close_sends_the_rest(sqlite_daemon: Daemon) -> None:
    async def scenario() -> None:
        async with AsyncClient(sqlite_daemon.address) as client:
            session_id = await new_session(client)
            writer = AsyncStateWriter(client, session_id, flush_interval=60)
            for key, value in EXPECTED.items():
                writer.update({key: value})
            assert await writer.close() is True
            assert await writer.close() is True
            with pytest.raises(RuntimeError, match="is closed"):
                writer.update({"k": 1})
            with pytest.raises(RuntimeError, match="is closed"):
                await writer.flush()
            state = await client.get_state(session_id)
        assert state.document == EXPECTED
        assert state.version == 1

    asyncio.run(scenario())


def test_writer_retries_until_daemon_restarts(
    daemon: Daemon, tmp_path: pathlib.Path
) -> None:
    journal = tmp_path / "state.json"

    async def scenario() -> None:
        async with AsyncClient(daemon.address) as client:
            session_id = await new_session(client)
            async with AsyncStateWriter(
                client, session_id, journal_path=journal, backoff=FAST_BACKOFF
            ) as writer:
                for index in range(10):
                    writer.update({f"key_{index:02d}": index})
                assert await writer.flush(timeout=30) is True
                daemon.kill()
                for index in range(10, 30):
                    writer.update({f"key_{index:02d}": index})
                # The daemon is dead, so this flush cannot be acknowledged.
                assert await writer.flush(timeout=0.5) is False
                unsent = json.loads(journal.read_text(encoding="utf-8"))["unsent"]
                await asyncio.to_thread(daemon.start)
                assert await writer.flush(timeout=30) is True
            state = await client.get_state(session_id)
            versions = await client.list_state_versions(session_id)
        assert len(unsent) == 1
        assert unsent[0]["request_id"]
        assert state.document == EXPECTED
        assert state.version == 2
        assert [version.version for version in versions.versions] == [1, 2]
        assert json.loads(journal.read_text(encoding="utf-8"))["unsent"] == []

    asyncio.run(scenario())


def test_close_while_down_keeps_journal(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = tmp_path / "state.json"
    # Nothing listens on this port: every send fails with UNAVAILABLE.
    address = f"127.0.0.1:{free_port()}"

    async def scenario() -> bool:
        async with AsyncClient(address, timeout=1) as client:
            writer = AsyncStateWriter(
                client, "s-1", journal_path=journal, backoff=FAST_BACKOFF
            )
            writer.update({"a": 1}, important=True)
            await writer.wake()
            writer.update({"b": 2})
            return await writer.close(timeout=0.2)

    with caplog.at_level(logging.WARNING, logger="editstore.client.aio_writer"):
        assert asyncio.run(scenario()) is False
    content = json.loads(journal.read_text(encoding="utf-8"))
    assert content["session_id"] == "s-1"
    assert content["unsent"][0]["merge_patch"] == {"a": 1}
    assert content["unsent"][0]["request_id"]
    assert content["unsent"][1] == {"request_id": None, "merge_patch": {"b": 2}}
    messages = [record.getMessage() for record in caplog.records]
    assert any("stopped with 2 patch(es) unsent" in m for m in messages)
    assert not any("cancelled before close()" in m for m in messages)


def test_recovers_journal_of_sync_writer(
    daemon: Daemon, tmp_path: pathlib.Path
) -> None:
    journal = tmp_path / "state.json"
    with Client(daemon.address) as client:
        session_id = client.create_session("/photos/1.png", "make it snow").id
        daemon.kill()
        writer = StateWriter(client, session_id, journal_path=journal)
        for key, value in EXPECTED.items():
            writer.update({key: value}, important=key == "key_09")
        assert writer.close(timeout=0.5) is False
    unsent = json.loads(journal.read_text(encoding="utf-8"))["unsent"]
    assert unsent[0]["request_id"]
    daemon.start()
    with Client(daemon.address) as client:
        # The first batch reaches the daemon, as if the sync writer's process
        # had died before it read the response.
        landed = client.patch_state(
            session_id, unsent[0]["merge_patch"], request_id=unsent[0]["request_id"]
        )
    assert landed.version == 1

    async def scenario() -> None:
        async with AsyncClient(daemon.address) as client:
            writer = AsyncStateWriter.recover(client, journal)
            assert writer.session_id == session_id
            assert await writer.flush(timeout=30) is True
            assert await writer.close() is True
            state = await client.get_state(session_id)
        assert state.document == EXPECTED
        assert state.version == len(unsent)

    asyncio.run(scenario())
    content = json.loads(journal.read_text(encoding="utf-8"))
    assert content["unsent"] == []
    assert content["document"] == EXPECTED


def test_unclosed_writer_journals_at_loop_end(
    sqlite_daemon: Daemon, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = tmp_path / "state.json"

    async def scenario() -> str:
        async with AsyncClient(sqlite_daemon.address) as client:
            session_id = await new_session(client)
            writer = AsyncStateWriter(
                client, session_id, flush_interval=60, journal_path=journal
            )
            for key, value in EXPECTED.items():
                writer.update({key: value})
        # Returns without close(): asyncio.run() cancels the writer's task.
        return session_id

    with caplog.at_level(logging.WARNING, logger="editstore.client.aio_writer"):
        session_id = asyncio.run(scenario())
    messages = [record.getMessage() for record in caplog.records]
    assert any("cancelled before close()" in message for message in messages)
    assert any("AsyncStateWriter.recover()" in message for message in messages)

    # A synchronous writer sends what the asyncio one journaled.
    with Client(sqlite_daemon.address) as client:
        assert StateWriter.recover(client, journal).close(timeout=30) is True
        state = client.get_state(session_id)
    assert state.document == EXPECTED
    assert state.version == 1


def test_collected_writer_logs_unsent_updates(
    sqlite_daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.new_event_loop()

    async def open_writer() -> AsyncStateWriter:
        async with AsyncClient(sqlite_daemon.address) as client:
            session_id = await new_session(client)
            writer = AsyncStateWriter(client, session_id, flush_interval=60)
            writer.update({"k": 1})
            await writer.wake()
        return writer

    writer = loop.run_until_complete(open_writer())
    # The loop is closed with the writer's task still waiting, so the task
    # never runs again and the writer can only be collected.
    with caplog.at_level(logging.WARNING, logger="editstore.client.aio_writer"):
        loop.close()
        del writer
        gc.collect()
    messages = [record.getMessage() for record in caplog.records]
    assert any("garbage-collected with 1 update(s)" in m for m in messages)
