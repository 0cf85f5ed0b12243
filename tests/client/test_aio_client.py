"""The asyncio client against a real daemon."""

from __future__ import annotations

import asyncio
import datetime

import grpc
import pytest

from editstore.client import (
    Aborted,
    AsyncClient,
    BoundingBox,
    Entity,
    FeedbackType,
    InvalidArgument,
    NotFound,
    SessionStatus,
    Unavailable,
    WatchEvent,
    WatchEventType,
)
from tests.daemon import Daemon
from tests.test_state_stream import writes_held

pytestmark = pytest.mark.timeout(120)

MISSING = "00000000-0000-4000-8000-000000000000"


def test_async_client_calls_every_method(daemon: Daemon) -> None:
    async def scenario() -> None:
        async with AsyncClient(daemon.address) as client:
            session = await client.create_session("/p/1.png", "make it snow")
            assert session.status == SessionStatus.IN_PROGRESS
            assert session.create_time is not None
            assert session.create_time.tzinfo == datetime.UTC
            assert (await client.get_session(session.id)) == session
            page = await client.list_sessions(page_size=10)
            assert [s.id for s in page.sessions] == [session.id]
            assert [s.id async for s in client.iter_sessions()] == [session.id]

            prompt = await client.create_prompt(
                session.id, 0, positive_prompt="snowy street", quality_score=0.5
            )
            assert await client.list_prompts(session.id) == [prompt]
            entities = await client.batch_create_entities(
                session.id,
                [
                    Entity(
                        entity_id="cat_0",
                        label="cat",
                        confidence=1.0,
                        bbox=BoundingBox(x=1, y=2, width=3, height=4),
                    )
                ],
            )
            assert await client.list_entities(session.id) == entities
            validation = await client.create_validation(
                session.id, 0, alignment_score=0.7, preserved_count=3
            )
            assert await client.list_validations(session.id) == [validation]
            feedback = await client.create_user_feedback(
                session.id, FeedbackType.ACCEPT, rating=4
            )
            assert await client.list_user_feedback(session.id) == [feedback]

            put = await client.put_state(session.id, {"current_stage": "analysis"})
            assert put.version == 1
            patched = await client.patch_state(
                session.id, {"n": 9007199254740993}, expected_version=1
            )
            assert patched.document == {
                "current_stage": "analysis",
                "n": 9007199254740993,
            }
            assert (await client.get_state(session.id)) == patched
            versions = await client.list_state_versions(session.id)
            assert [v.version for v in versions.versions] == [1, 2]

            resumed = await client.resume_session(session.id)
            assert resumed.prompts == [prompt]
            assert resumed.state == patched

            updated = await client.update_session(
                session.id, status="completed", final_alignment_score=0.7
            )
            assert updated.status == SessionStatus.COMPLETED
            assert await client.delete_session(session.id) == 4

    asyncio.run(scenario())


def test_async_errors_carry_code_and_cause(daemon: Daemon) -> None:
    async def scenario() -> None:
        async with AsyncClient(daemon.address) as client:
            with pytest.raises(NotFound) as missing:
                await client.get_session(MISSING)
            assert missing.value.code == grpc.StatusCode.NOT_FOUND
            assert isinstance(missing.value.__cause__, grpc.RpcError)
            session = await client.create_session("/p.png", "brighten")
            with pytest.raises(InvalidArgument):
                await client.create_user_feedback(session.id, "accept", rating=7)
            await client.put_state(session.id, {"a": 1})
            with pytest.raises(Aborted):
                await client.put_state(session.id, {"a": 2}, expected_version=0)

    asyncio.run(scenario())


def test_async_state_stream_and_watch(daemon: Daemon) -> None:
    async def scenario() -> None:
        async with AsyncClient(daemon.address) as client:
            session = await client.create_session("/p.png", "brighten")
            events: list[WatchEvent] = []
            snapshot_seen = asyncio.Event()

            async def watch() -> None:
                async for event in client.watch_state(session.id):
                    if event.type == WatchEventType.HEARTBEAT:
                        continue
                    events.append(event)
                    snapshot_seen.set()
                    if event.type == WatchEventType.SESSION_DELETED:
                        return

            watcher = asyncio.create_task(watch())
            await asyncio.wait_for(snapshot_seen.wait(), 30)

            async with client.open_state_stream() as stream:
                futures = [
                    await stream.send_patch(session.id, {f"k{i}": i}) for i in range(20)
                ]
                results = await asyncio.gather(*futures)
                assert sorted(r.version for r in results) == list(range(1, 21))
                with pytest.raises(Aborted):
                    await stream.patch(session.id, {"x": 1}, expected_version=1)

            while len(events) < 21:
                await asyncio.sleep(0.05)
            await client.delete_session(session.id)
            await asyncio.wait_for(watcher, 30)
            assert events[0].type == WatchEventType.SNAPSHOT
            assert [e.state.version for e in events[1:21] if e.state] == list(
                range(1, 21)
            )
            assert events[-1].type == WatchEventType.SESSION_DELETED

    asyncio.run(scenario())


def test_async_stream_cancelled_future_leaves_others_resolving(
    daemon: Daemon,
) -> None:
    async def scenario() -> list[int]:
        async with AsyncClient(daemon.address) as client:
            session = await client.create_session("/p/1.png", "make it snow")
            async with client.open_state_stream() as stream:
                with writes_held(daemon, session.id):
                    futures = [
                        await stream.send_patch(session.id, {"step": i})
                        for i in range(20)
                    ]
                    # A timed-out wait cancels the future it waited for.
                    with pytest.raises(TimeoutError):
                        await asyncio.wait_for(futures[10], 0.01)
                results = await asyncio.wait_for(asyncio.gather(*futures[11:]), 30)
                assert futures[10].cancelled()
                return [result.version for result in results]

    assert asyncio.run(scenario()) == list(range(12, 21))


def test_async_stream_send_after_daemon_killed_is_unavailable(
    daemon: Daemon,
) -> None:
    async def scenario() -> None:
        async with AsyncClient(daemon.address) as client:
            session = await client.create_session("/p/1.png", "make it snow")
            stream = client.open_state_stream()
            assert (await stream.patch(session.id, {"step": 1})).version == 1
            daemon.kill()
            with pytest.raises(Unavailable):
                await asyncio.wait_for(stream.patch(session.id, {"step": 2}), 30)
            await stream.close(timeout=5)

    asyncio.run(scenario())
