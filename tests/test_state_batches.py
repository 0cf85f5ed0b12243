"""State changes that share one writer batch.

The writer runs the state changes of a batch together: one read of its
sessions, changes applied in memory, then one statement for the documents
and one for the version rows (in chunks of at most 128 rows). These tests
queue changes before the writer starts, so that they land in one batch, and
check what is stored against applying them one at a time.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import hypothesis
import peewee
import pytest
from hypothesis import strategies

from editstore.server import documents, errors, migrate, records, states
from editstore.server.database import open_database
from editstore.server.models import SessionState, StateVersion
from editstore.server.writer import Writer

LIMITS = states.StateLimits(max_document_bytes=2048, state_history=5)


@pytest.fixture
def database(database_url: str) -> Iterator[peewee.Database]:
    database = open_database(database_url)
    migrate.upgrade(database)
    yield database
    if not database.is_closed():
        database.close()


def new_session(database: peewee.Database) -> str:
    with database.atomic():
        row = records.create_session(
            {"image_path": "a.jpg", "naive_prompt": "warmer light"}, ""
        )([])
    return str(row["id"])


def run_in_one_batch(
    database: peewee.Database, operations: list[Any]
) -> tuple[list[tuple[bool, Any]], list[Any], Writer]:
    """Queue every operation, then start the writer so that one batch takes all."""
    events: list[Any] = []
    writer = Writer(database, on_commit=events.extend)
    futures = [writer.submit(operation) for operation in operations]
    writer.start()
    outcomes = []
    for future in futures:
        try:
            outcomes.append((True, future.result(timeout=30)))
        except errors.StoreError as error:
            outcomes.append((False, error))
    writer.stop(timeout=30)
    return outcomes, events, writer


def patch(session_id: str, value: dict[str, Any], expected: int | None = None) -> Any:
    return states.patch_state(session_id, json.dumps(value), expected, "", LIMITS)


def stored_versions(database: peewee.Database, session_id: str) -> list[Any]:
    """Return the kept versions as the API reads them: version, document, patch."""
    database.connect(reuse_if_open=True)
    versions, _ = states.list_versions(
        session_id, 0, states.MAX_VERSIONS_PAGE, 0, LIMITS.state_history
    )
    return [
        (state.version, json.loads(state.document), state.merge_patch)
        for state in versions
    ]


def test_failed_changes_in_a_batch_leave_no_trace(database: peewee.Database) -> None:
    session_id = new_session(database)
    other_id = new_session(database)
    missing_id = str(uuid.uuid4())
    operations = [
        patch(session_id, {"step": 1}),
        patch(other_id, {"step": 10}),
        patch(session_id, {"step": 2}, expected=0),  # conflict: now at 1
        patch(session_id, {"blob": "x" * 4000}),  # over 2048 bytes
        patch(missing_id, {"step": 1}),
        patch(session_id, {"step": 3}, expected=1),
        states.put_state(session_id, '{"fresh":true}', 2, "", LIMITS),
        patch(session_id, {"step": 4, "fresh": None}),
        patch(other_id, {"step": 11}),
    ]
    outcomes, events, writer = run_in_one_batch(database, operations)

    assert writer.batches == 1
    assert [ok for ok, _ in outcomes] == [
        True,
        True,
        False,
        False,
        False,
        True,
        True,
        True,
        True,
    ]
    assert isinstance(outcomes[2][1], errors.Conflict)
    assert "expected_version is 0" in str(outcomes[2][1])
    assert isinstance(outcomes[3][1], errors.ResourceExhausted)
    assert isinstance(outcomes[4][1], errors.NotFound)
    assert [value["version"] for ok, value in outcomes if ok] == [1, 1, 2, 3, 4, 2]
    assert stored_versions(database, session_id) == [
        (1, {"step": 1}, '{"step":1}'),
        (2, {"step": 3}, '{"step":3}'),
        (3, {"fresh": True}, None),
        (4, {"step": 4}, '{"step":4,"fresh":null}'),
    ]
    assert [version for version, _, _ in stored_versions(database, other_id)] == [1, 2]
    current = SessionState.get(SessionState.session == session_id)
    assert (current.version, json.loads(current.document)) == (4, {"step": 4})
    assert [(event.session_id, event.version) for event in events] == [
        (session_id, 1),
        (other_id, 1),
        (session_id, 2),
        (session_id, 3),
        (session_id, 4),
        (other_id, 2),
    ]


def test_batch_past_history_shows_last_versions(database: peewee.Database) -> None:
    session_id = new_session(database)
    operations = [patch(session_id, {"step": step}) for step in range(1, 13)]
    outcomes, _, writer = run_in_one_batch(database, operations)

    assert writer.batches == 1
    assert all(ok for ok, _ in outcomes)
    visible = stored_versions(database, session_id)
    # state_history is 5: the last five versions stay.
    assert [version for version, _, _ in visible] == [8, 9, 10, 11, 12]
    assert visible[-1][1] == {"step": 12}


def test_second_batch_reads_first_batch_document(
    database: peewee.Database,
) -> None:
    session_id = new_session(database)
    run_in_one_batch(database, [patch(session_id, {"a": {"b": 1, "c": [1, 2]}})])
    database.connect(reuse_if_open=True)
    outcomes, _, _ = run_in_one_batch(
        database,
        [patch(session_id, {"a": {"b": None}}), patch(session_id, {"d": "é"})],
    )
    assert [value["version"] for _, value in outcomes] == [2, 3]
    current = SessionState.get(SessionState.session == session_id)
    assert json.loads(current.document) == {"a": {"c": [1, 2]}, "d": "é"}
    assert current.document == '{"a":{"c":[1,2]},"d":"é"}'


json_values = strategies.recursive(
    strategies.none()
    | strategies.booleans()
    | strategies.integers(min_value=-(2**70), max_value=2**70)
    | strategies.floats(allow_nan=False, allow_infinity=False)
    | strategies.text(max_size=5),
    lambda children: (
        strategies.lists(children, max_size=3)
        | strategies.dictionaries(strategies.text(max_size=3), children, max_size=3)
    ),
    max_leaves=8,
)
json_objects = strategies.dictionaries(strategies.text(max_size=3), json_values)


@hypothesis.given(start=json_objects, patches=strategies.lists(json_objects))
def test_text_reused_between_patches_equals_a_fresh_dump(
    start: dict[str, Any], patches: list[dict[str, Any]]
) -> None:
    document = {key: value for key, value in start.items() if value is not None}
    text, fragments = documents.dump_reusing(document, None)
    assert text == documents.dump(document)
    for merge_patch in patches:
        document = documents.merge_patch(document, merge_patch)
        text, fragments = documents.dump_reusing(document, fragments)
        assert text == documents.dump(document)


def write_alone(database: peewee.Database, operation: Any) -> Any:
    with database.atomic():
        return operation([])


def test_patch_rows_rebuild_exact_documents(
    database: peewee.Database,
) -> None:
    limits = states.StateLimits(max_document_bytes=1 << 20, state_history=1000)
    session_id = new_session(database)
    expected = {}
    document: dict[str, Any] = {"notes": "n" * 500, "progress": {}}
    write_alone(
        database, states.put_state(session_id, json.dumps(document), None, "", limits)
    )
    expected[1] = documents.dump(document)
    for version in range(2, 101):
        patch_value: dict[str, Any] = {"progress": {"step": version}}
        if version % 7 == 0:
            patch_value["extra"] = None if version % 14 == 0 else [version, 1.5]
        document = documents.merge_patch(document, patch_value)
        write_alone(
            database,
            states.patch_state(session_id, json.dumps(patch_value), None, "", limits),
        )
        expected[version] = documents.dump(document)

    versions, oldest = states.list_versions(session_id, 0, 1000, 0, 1000)
    assert oldest == 1
    assert {state.version: state.document for state in versions} == expected
    # A page that starts between two whole documents is rebuilt too.
    page, _ = states.list_versions(session_id, 37, 5, 0, 1000)
    assert [(state.version, state.document) for state in page] == [
        (version, expected[version]) for version in range(38, 43)
    ]
    # Most rows contain only their patch, so the table has a fraction of the text.
    stored = sum(
        len(row.document)
        for row in StateVersion.select().where(StateVersion.session == session_id)
    )
    assert stored < sum(len(text) for text in expected.values()) / 8


def test_pruning_keeps_base_of_oldest_version(
    database: peewee.Database,
) -> None:
    limits = states.StateLimits(max_document_bytes=1 << 20, state_history=5)
    session_id = new_session(database)
    pad = "x" * 200
    write_alone(
        database,
        states.put_state(session_id, json.dumps({"pad": pad}), None, "", limits),
    )
    for version in range(2, 61):
        write_alone(
            database,
            states.patch_state(
                session_id, json.dumps({"step": version}), None, "", limits
            ),
        )
        versions, oldest = states.list_versions(session_id, 0, 100, 0, 5)
        first = max(1, version - 4)
        assert oldest == first
        assert [state.version for state in versions] == list(range(first, version + 1))
        assert [json.loads(state.document) for state in versions] == [
            {"pad": pad, "step": step} if step > 1 else {"pad": pad}
            for step in range(first, version + 1)
        ]
    remaining_rows = StateVersion.select().where(StateVersion.session == session_id)
    assert remaining_rows.count() <= 5 + 2 * states.SNAPSHOT_EVERY
    # The oldest row left contains a whole document, so the rest can be rebuilt.
    assert remaining_rows.order_by(StateVersion.version).first().document != ""
    assert remaining_rows.where(StateVersion.document == "").count() > 0


def test_batch_over_many_sessions_writes_and_prunes_each(
    database: peewee.Database,
) -> None:
    # 200 sessions take more than the largest statement chunk of 128 rows.
    sessions = [new_session(database) for _ in range(200)]
    missing = str(uuid.uuid4())
    for step in range(1, 21):
        operations = [
            patch(session_id, {"step": step, "index": index})
            for index, session_id in enumerate(sessions)
        ]
        operations.insert(100, patch(missing, {"step": step}))
        outcomes, _, writer = run_in_one_batch(database, operations)
        database.connect(reuse_if_open=True)

        assert writer.batches == 1
        failed = outcomes.pop(100)
        assert not failed[0]
        assert isinstance(failed[1], errors.NotFound)
        assert [value["version"] for _, value in outcomes] == [step] * 200

    for index, session_id in enumerate(sessions):
        visible = stored_versions(database, session_id)
        assert [version for version, _, _ in visible] == [16, 17, 18, 19, 20]
        assert [document for _, document, _ in visible] == [
            {"step": step, "index": index} for step in range(16, 21)
        ]
    # Each row contains its whole document (the patch is as long as it), so the
    # batch that reached version 16 pruned every session down to version 12.
    assert StateVersion.select().count() == 200 * len(range(12, 21))


def run_with_blocker(
    database: peewee.Database, before_start: int, session_id: str
) -> None:
    """Queue a blocking write and two patches of ``session_id``, then cancel
    the patches while the blocking write runs.

    The first ``before_start`` patches are queued before the writer starts,
    so that they share the blocking write's batch. The others are queued
    while it blocks, so they go to the next batch.
    """
    started = threading.Event()
    release = threading.Event()

    def blocker(events: list[Any]) -> None:
        started.set()
        release.wait(10)

    async def scenario() -> None:
        writer = Writer(database)
        patches = [patch(session_id, {"step": step}) for step in (1, 2)]
        futures = [writer.enqueue(blocker)]
        futures += [writer.enqueue(change) for change in patches[:before_start]]
        await asyncio.sleep(0)
        writer.start()
        assert await asyncio.to_thread(started.wait, 10)
        futures += [writer.enqueue(change) for change in patches[before_start:]]
        await asyncio.sleep(0)
        writer.cancel_all(futures[1:])
        release.set()
        await asyncio.to_thread(writer.stop, 30)

    asyncio.run(scenario())
    database.connect(reuse_if_open=True)


def test_cancelled_updates_in_taken_batch_apply_in_order(
    database: peewee.Database,
) -> None:
    # Both patches were in the batch when they were cancelled: the writer
    # applies them both, so a resent update never lands before an older one.
    session_id = new_session(database)
    run_with_blocker(database, before_start=2, session_id=session_id)

    current = SessionState.get(SessionState.session == session_id)
    assert current.version == 2
    assert json.loads(current.document) == {"step": 2}


def test_cancelled_updates_still_queued_are_all_dropped(
    database: peewee.Database,
) -> None:
    session_id = new_session(database)
    run_with_blocker(database, before_start=0, session_id=session_id)

    assert SessionState.get_or_none(SessionState.session == session_id) is None
    assert stored_versions(database, session_id) == []
