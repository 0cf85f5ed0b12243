"""StreamStateUpdates: many updates on one stream, each acknowledged once durable.

Each test runs against a real daemon on SQLite and on PostgreSQL. An
acknowledgement carries the update's sequence, the version it made and a
google.rpc.Code: 0 when it was applied, else the code PatchState would return.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import grpc
import pytest

from editstore.client.jsondoc import apply_merge_patch
from editstore.v1 import state_pb2, state_pb2_grpc
from tests.conftest import module_daemon
from tests.daemon import Daemon
from tests.test_state_documents import Client, parsed

pytestmark = pytest.mark.timeout(90)

# google.rpc.Code values, as the acknowledgements carry them.
OK = 0
INVALID_ARGUMENT = 3
NOT_FOUND = 5
ALREADY_EXISTS = 6
RESOURCE_EXHAUSTED = 8
ABORTED = 10


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def shared_daemon(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """One daemon whose documents may be at most 4096 bytes, for the tests of
    this module that make their own sessions."""
    extra_args = ["--max-document-bytes", "4096"]
    with module_daemon(request.param, tmp_path_factory, extra_args) as process:
        yield process


@pytest.fixture
def channel(shared_daemon: Daemon) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(shared_daemon.address) as opened:
        yield opened


def update(
    sequence: int,
    session_id: str,
    *,
    document: str | dict[str, Any] | None = None,
    patch: str | dict[str, Any] | None = None,
    **fields: Any,
) -> state_pb2.StreamStateUpdatesRequest:
    request = state_pb2.StreamStateUpdatesRequest(
        sequence=sequence, session_id=session_id, **fields
    )
    if document is not None:
        request.document_json = (
            document if isinstance(document, str) else json.dumps(document)
        )
    if patch is not None:
        request.merge_patch_json = (
            patch if isinstance(patch, str) else json.dumps(patch)
        )
    return request


def stream(
    channel: grpc.Channel, updates: Iterable[state_pb2.StreamStateUpdatesRequest]
) -> list[state_pb2.StreamStateUpdatesResponse]:
    """Send the updates on one stream and return every acknowledgement."""
    stub = state_pb2_grpc.StateServiceStub(channel)
    return list(stub.StreamStateUpdates(iter(updates), timeout=60))


def test_update_stream_acknowledges_each_update_in_order(
    channel: grpc.Channel,
) -> None:
    client = Client(channel)
    session_id = client.create_session()
    updates = [
        update(step * 10, session_id, patch={"step": step})
        if step % 3
        else update(step * 10, session_id, document={"step": step, "put": True})
        for step in range(1, 101)
    ]

    acks = stream(channel, updates)

    assert [ack.sequence for ack in acks] == [step * 10 for step in range(1, 101)]
    assert [ack.version for ack in acks] == list(range(1, 101))
    assert all(ack.code == OK for ack in acks)
    assert all(ack.message == "" for ack in acks)
    current = client.get(session_id)
    assert current.version == 100
    # Version 99 was a put of step 99; the patch of step 100 was applied on it.
    assert parsed(current) == {"step": 100, "put": True}


def test_update_stream_reports_failed_update_and_goes_on(
    channel: grpc.Channel,
) -> None:
    client = Client(channel)
    session_id = client.create_session()
    missing = str(uuid.uuid4())
    updates = [
        update(1, session_id, document={"a": 1}),
        update(2, session_id, patch='{"b": NaN}'),
        update(3, missing, patch={"b": 2}),
        update(4, session_id, patch={"b": 2}, expected_version=7),
        update(5, session_id),
        update(6, session_id, document="[1]"),
        update(7, session_id, patch={"big": "x" * 5000}),
        update(8, session_id, patch={"intent": {"confidence": 2}}),
        update(9, session_id, patch={"b": 2}, expected_version=1),
        update(10, "", patch={"b": 3}),
        update(11, session_id, patch={"c": 3}),
    ]

    acks = stream(channel, updates)

    assert [ack.sequence for ack in acks] == list(range(1, 12))
    assert [ack.code for ack in acks] == [
        OK,
        INVALID_ARGUMENT,
        NOT_FOUND,
        ABORTED,
        INVALID_ARGUMENT,
        INVALID_ARGUMENT,
        RESOURCE_EXHAUSTED,
        INVALID_ARGUMENT,
        OK,
        INVALID_ARGUMENT,
        OK,
    ]
    assert [ack.version for ack in acks] == [1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 3]
    assert "merge_patch_json" in acks[1].message
    assert missing in acks[2].message
    assert "version 1" in acks[3].message
    assert "expected_version is 7" in acks[3].message
    assert "document_json or merge_patch_json" in acks[4].message
    assert "document_json" in acks[5].message
    assert "4096" in acks[6].message
    assert "intent.confidence" in acks[7].message
    assert "session_id" in acks[9].message
    assert all(ack.message == "" for ack in acks if ack.code == OK)
    current = client.get(session_id)
    assert current.version == 3
    assert parsed(current) == {"a": 1, "b": 2, "c": 3}


def acknowledged(
    acks: list[state_pb2.StreamStateUpdatesResponse],
) -> list[tuple[int, int, int]]:
    """Return (sequence, version, code) of every update the responses
    acknowledge, in the order the responses list them."""
    outcomes = []
    for ack in acks:
        outcomes.append((ack.sequence, ack.version, ack.code))
        outcomes += [
            (sequence, version, OK)
            for sequence, version in zip(
                ack.applied_sequences, ack.applied_versions, strict=True
            )
        ]
    return outcomes


def test_combined_acknowledgements_cover_each_update_once(
    channel: grpc.Channel,
) -> None:
    client = Client(channel)
    session_id = client.create_session()
    updates = [
        update(step, session_id, patch={"step": step}, combine_acknowledgement=True)
        for step in range(1, 301)
    ]

    acks = stream(channel, updates)

    assert acknowledged(acks) == [(step, step, OK) for step in range(1, 301)]
    # 300 updates sent at once commit in few batches, so most responses
    # acknowledge several of them.
    assert len(acks) < 150
    assert client.get(session_id).version == 300
    assert parsed(client.get(session_id)) == {"step": 300}


def test_combined_acknowledgements_give_failures_their_own_response(
    channel: grpc.Channel,
) -> None:
    client = Client(channel)
    session_id = client.create_session()
    failing = {50, 51, 120}
    updates = [
        update(
            step,
            session_id,
            patch='{"step": NaN}' if step in failing else {"step": step},
            combine_acknowledgement=True,
        )
        for step in range(1, 201)
    ]

    acks = stream(channel, updates)

    outcomes = acknowledged(acks)
    assert [sequence for sequence, _, _ in outcomes] == list(range(1, 201))
    codes = {sequence: code for sequence, _, code in outcomes}
    assert {sequence for sequence, code in codes.items() if code != OK} == failing
    assert all(codes[sequence] == INVALID_ARGUMENT for sequence in failing)
    applied = [version for sequence, version, _ in outcomes if sequence not in failing]
    assert applied == list(range(1, 198))
    for ack in acks:
        if ack.code != OK:
            assert list(ack.applied_sequences) == []
            assert "merge_patch_json" in ack.message
        assert not failing & set(ack.applied_sequences)
    assert client.get(session_id).version == 197


def test_updates_without_combine_get_one_response_each(
    channel: grpc.Channel,
) -> None:
    client = Client(channel)
    session_id = client.create_session()
    updates = [
        update(
            step, session_id, patch={"step": step}, combine_acknowledgement=step > 100
        )
        for step in range(1, 201)
    ]

    acks = stream(channel, updates)

    assert acknowledged(acks) == [(step, step, OK) for step in range(1, 201)]
    # An update sent without the flag is never acknowledged in another's
    # response; the first 100 so each have their own.
    assert [ack.sequence for ack in acks[:100]] == list(range(1, 101))
    assert all(not set(ack.applied_sequences) & set(range(1, 101)) for ack in acks)


def test_update_stream_reads_ahead_while_updates_commit(
    channel: grpc.Channel,
) -> None:
    client = Client(channel)
    session_id = client.create_session()
    count = 500
    all_sent = threading.Event()

    def updates() -> Iterator[state_pb2.StreamStateUpdatesRequest]:
        for step in range(1, count + 1):
            yield update(step, session_id, patch={"step": step})
        all_sent.set()

    stub = state_pb2_grpc.StateServiceStub(channel)
    started = time.monotonic()
    responses = stub.StreamStateUpdates(updates(), timeout=60)
    # No acknowledgement is read before the client has sent every update, so
    # the daemon must take updates in while the earlier ones commit.
    assert all_sent.wait(30)
    sent = time.monotonic() - started
    acks = list(responses)
    elapsed = time.monotonic() - started

    print(
        f"{count} updates sent in {sent:.2f} s, all acknowledged after "
        f"{elapsed:.2f} s ({count / elapsed:.0f} updates/s)"
    )
    assert [ack.sequence for ack in acks] == list(range(1, count + 1))
    assert [ack.version for ack in acks] == list(range(1, count + 1))
    assert all(ack.code == OK for ack in acks)
    assert parsed(client.get(session_id)) == {"step": count}


def test_update_stream_with_expected_versions_chains_updates(
    channel: grpc.Channel,
) -> None:
    client = Client(channel)
    session_id = client.create_session()
    updates = [
        update(version, session_id, patch={"v": version}, expected_version=version - 1)
        for version in range(1, 51)
    ]

    acks = stream(channel, updates)

    assert [ack.code for ack in acks] == [OK] * 50
    assert [ack.version for ack in acks] == list(range(1, 51))


def test_update_stream_applies_repeated_request_id_once(
    channel: grpc.Channel,
) -> None:
    client = Client(channel)
    session_id = client.create_session()
    request_id = str(uuid.uuid4())
    updates = [
        update(1, session_id, patch={"n": 1}, request_id=request_id),
        update(2, session_id, patch={"n": 1}, request_id=request_id),
        update(3, session_id, patch={"n": 2}, request_id=request_id),
        update(4, session_id, patch={"m": 1}),
    ]

    acks = stream(channel, updates)

    assert [ack.code for ack in acks] == [OK, OK, ALREADY_EXISTS, OK]
    assert [ack.version for ack in acks] == [1, 1, 0, 2]
    assert request_id in acks[2].message
    assert parsed(client.get(session_id)) == {"n": 1, "m": 1}


def test_update_stream_interleaves_sessions(channel: grpc.Channel) -> None:
    client = Client(channel)
    sessions = [client.create_session() for _ in range(3)]
    updates = [
        update(step, sessions[step % 3], patch={"step": step}) for step in range(60)
    ]

    acks = stream(channel, updates)

    assert all(ack.code == OK for ack in acks)
    for index, session_id in enumerate(sessions):
        versions = [ack.version for ack in acks if ack.sequence % 3 == index]
        assert versions == list(range(1, 21))
        assert client.get(session_id).version == 20
        assert parsed(client.get(session_id)) == {"step": 57 + index}


def test_empty_update_stream_ends_cleanly(channel: grpc.Channel) -> None:
    assert stream(channel, []) == []


def test_acknowledged_updates_survive_daemon_kill(daemon: Daemon) -> None:
    with grpc.insecure_channel(daemon.address) as channel:
        session_id = Client(channel).create_session()
        acks = stream(
            channel,
            (update(step, session_id, patch={"step": step}) for step in range(1, 201)),
        )
    assert [ack.version for ack in acks] == list(range(1, 201))

    daemon.kill()
    daemon.start()

    with grpc.insecure_channel(daemon.address) as channel:
        current = Client(channel).get(session_id)
    assert current.version == 200
    assert parsed(current) == {"step": 200}


def test_stream_near_size_limit_keeps_every_version_exact(
    channel: grpc.Channel,
) -> None:
    """Patches sent together reach the 4096-byte limit: each version is exact.

    The update that would make the document too large fails alone, later
    ones that fit (after a patch that removes members) apply, and the
    history contains the document of every version.
    """
    client = Client(channel)
    session_id = client.create_session()
    patches: list[dict[str, Any]] = []
    for step in range(70):
        if step == 50:
            patches.append({f"k{number}": None for number in range(12)})
        else:
            patches.append({f"k{step}": "é" * 40, "step": step})
    updates = [
        update(number + 1, session_id, patch=patch)
        for number, patch in enumerate(patches)
    ]

    acks = stream(channel, updates)

    codes = []
    versions: list[dict[str, Any]] = []
    document: dict[str, Any] = {}
    for patch in patches:
        # The client library's merge, not the daemon's, gives the expected
        # documents.
        candidate = apply_merge_patch(document, patch)
        text = json.dumps(candidate, separators=(",", ":"), ensure_ascii=False)
        if len(text.encode("utf-8")) <= 4096:
            document = candidate
            versions.append(document)
            codes.append(OK)
        else:
            codes.append(RESOURCE_EXHAUSTED)
    assert [ack.code for ack in acks] == codes
    assert RESOURCE_EXHAUSTED in codes
    assert codes[50:].count(OK) > 1
    assert [ack.version for ack in acks if ack.code == OK] == list(
        range(1, len(versions) + 1)
    )
    stub = state_pb2_grpc.StateServiceStub(channel)
    history: list[dict[str, Any]] = []
    while True:
        page = stub.ListStateVersions(
            state_pb2.ListStateVersionsRequest(
                session_id=session_id, after_version=len(history), page_size=1000
            ),
            timeout=10,
        ).versions
        if not page:
            break
        history += [json.loads(state.document_json) for state in page]
    assert history == versions
    assert parsed(client.get(session_id)) == document


@contextlib.contextmanager
def writes_held(daemon: Daemon, session_id: str) -> Iterator[None]:
    """Keep the daemon's writer from committing until the block ends: another
    connection holds SQLite's write lock, or PostgreSQL's lock on the
    session's row."""
    url = daemon.database_url
    if url.startswith("sqlite:///"):
        connection = sqlite3.connect(
            url.removeprefix("sqlite:///"), isolation_level=None
        )
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            connection.execute("ROLLBACK")
            connection.close()
        return
    import psycopg2

    pg_connection = psycopg2.connect(url)
    try:
        pg_connection.cursor().execute(
            "SELECT id FROM sessions WHERE id = %s FOR UPDATE", (session_id,)
        )
        yield
    finally:
        pg_connection.rollback()
        pg_connection.close()


def test_cancelled_stream_applies_only_a_prefix(daemon: Daemon) -> None:
    # More updates than a stream keeps in flight (1024 under the default
    # document size limit): the reader waits for room with the rest unread
    # when the stream is cancelled. None of the updates is acknowledged, so
    # any prefix of them may be applied, and nothing after one that was not.
    channel = grpc.insecure_channel(daemon.address)
    client = Client(channel)
    session_id = client.create_session()
    sent = 1100
    stub = state_pb2_grpc.StateServiceStub(channel)

    with writes_held(daemon, session_id):
        ready = threading.Event()

        def updates() -> Iterator[state_pb2.StreamStateUpdatesRequest]:
            for step in range(1, sent + 1):
                yield update(step, session_id, patch={f"k{step}": 1})
            ready.set()
            time.sleep(60)

        call = stub.StreamStateUpdates(updates(), timeout=60)
        assert ready.wait(30)
        time.sleep(1.0)  # the daemon reads up to its limit meanwhile
        call.cancel()
        time.sleep(0.5)

    time.sleep(1.0)
    stored = client.get(session_id)
    applied = sorted(int(key[1:]) for key in parsed(stored)) if stored.version else []
    channel.close()
    assert applied == list(range(1, len(applied) + 1))
    assert stored.version == len(applied)
