"""Every method of the synchronous client against a real daemon."""

from __future__ import annotations

import datetime
import threading
import time

import grpc
import pytest

from editstore.client import (
    UNSET,
    Aborted,
    AlreadyExists,
    BoundingBox,
    Client,
    EditstoreError,
    Entity,
    FailedPrecondition,
    FeedbackType,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    RetryPolicy,
    Session,
    SessionStatus,
    Unavailable,
    WatchEvent,
    WatchEventType,
)
from tests.daemon import Daemon
from tests.test_state_stream import writes_held

pytestmark = pytest.mark.timeout(120)

REQUEST_ID = "7f1d3c9a-54b2-4f0e-9a43-3f6f2b8f1c01"


def make_session(client: Client, prompt: str = "make the sky dramatic") -> Session:
    return client.create_session("/photos/39769.png", prompt)


def test_create_and_get_session(client: Client) -> None:
    before = datetime.datetime.now(datetime.UTC)
    created = client.create_session(
        "/photos/39769.png", "make the cats purple", final_alignment_score=0.25
    )
    assert created.id
    assert created.status == SessionStatus.IN_PROGRESS
    assert created.status == "in_progress"
    assert created.final_alignment_score == 0.25
    assert created.create_time is not None
    assert created.create_time.tzinfo is not None
    assert created.create_time.utcoffset() == datetime.timedelta(0)
    assert created.create_time >= before - datetime.timedelta(seconds=5)
    fetched = client.get_session(created.id)
    assert fetched == created


def test_create_session_with_same_request_id_creates_once(client: Client) -> None:
    first = client.create_session("/p.png", "brighten", request_id=REQUEST_ID)
    second = client.create_session("/p.png", "brighten", request_id=REQUEST_ID)
    assert first.id == second.id
    assert [s.id for s in client.iter_sessions()] == [first.id]


def test_list_sessions_pages_and_filters(client: Client) -> None:
    created = [make_session(client, f"edit {index}") for index in range(5)]
    client.update_session(created[0].id, status="completed")
    first = client.list_sessions(page_size=2)
    assert len(first.sessions) == 2
    assert first.next_page_token
    everything = list(client.iter_sessions(page_size=2))
    assert [s.id for s in everything] == [s.id for s in reversed(created)]
    completed = client.list_sessions(status=SessionStatus.COMPLETED)
    assert [s.id for s in completed.sessions] == [created[0].id]
    in_progress = list(client.iter_sessions(status="in_progress"))
    assert len(in_progress) == 4
    future = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    assert client.list_sessions(created_after=future).sessions == []
    assert len(client.list_sessions(created_before=future).sessions) == 5


def test_update_session_changes_only_named_fields(client: Client) -> None:
    session = make_session(client)
    updated = client.update_session(session.id, final_alignment_score=0.9)
    assert updated.final_alignment_score == 0.9
    assert updated.naive_prompt == session.naive_prompt
    assert updated.status == SessionStatus.IN_PROGRESS
    cleared = client.update_session(session.id, final_alignment_score=None)
    assert cleared.final_alignment_score is None
    renamed = client.update_session(
        session.id, image_path="/photos/other.png", naive_prompt=UNSET
    )
    assert renamed.image_path == "/photos/other.png"
    assert renamed.naive_prompt == session.naive_prompt


def test_update_session_with_stale_etag_is_aborted(client: Client) -> None:
    session = make_session(client)
    client.update_session(session.id, final_alignment_score=0.5, etag=session.etag)
    with pytest.raises(Aborted) as caught:
        client.update_session(session.id, final_alignment_score=0.6, etag=session.etag)
    assert caught.value.code == grpc.StatusCode.ABORTED


def test_completed_session_keeps_its_status(client: Client) -> None:
    session = make_session(client)
    client.update_session(session.id, status=SessionStatus.COMPLETED)
    with pytest.raises(FailedPrecondition):
        client.update_session(session.id, status=SessionStatus.IN_PROGRESS)


def test_delete_session_removes_its_records(client: Client) -> None:
    session = make_session(client)
    client.create_prompt(session.id, 0, positive_prompt="a stormy sky")
    client.batch_create_entities(session.id, [Entity(entity_id="sky_0", label="sky")])
    client.create_validation(session.id, 0, alignment_score=0.5)
    client.create_user_feedback(session.id, FeedbackType.ACCEPT, rating=5)
    client.patch_state(session.id, {"current_stage": "completed"})
    assert client.delete_session(session.id) == 4
    with pytest.raises(NotFound):
        client.get_session(session.id)
    with pytest.raises(NotFound):
        client.list_prompts(session.id)
    with pytest.raises(NotFound):
        client.get_state(session.id)


def test_prompts_round_trip_in_iteration_order(client: Client) -> None:
    session = make_session(client)
    client.create_prompt(session.id, 1, positive_prompt="second", quality_score=0.8)
    first = client.create_prompt(
        session.id, 0, positive_prompt="first", negative_prompt="blurry"
    )
    assert first.id is not None
    assert first.quality_score is None
    assert first.create_time is not None
    prompts = client.list_prompts(session.id)
    assert [p.iteration for p in prompts] == [0, 1]
    assert prompts[0].negative_prompt == "blurry"
    assert prompts[1].quality_score == 0.8
    with pytest.raises(AlreadyExists):
        client.create_prompt(session.id, 0, positive_prompt="again")


def test_entities_round_trip(client: Client) -> None:
    session = make_session(client)
    stored = client.batch_create_entities(
        session.id,
        [
            Entity(
                entity_id="cat_0",
                label="cat",
                confidence=1.0,
                bbox=BoundingBox.from_xywh([52.65, 40.92, 260.87, 427.44]),
                area_percent=12.5,
                color_hex="#A0522D",
                mask_path="/masks/cat_0.png",
            ),
            {"entity_id": "remote_0", "label": "remote"},
        ],
    )
    assert [e.entity_id for e in stored] == ["cat_0", "remote_0"]
    assert all(e.session_id == session.id for e in stored)
    listed = client.list_entities(session.id)
    assert listed == stored
    assert listed[0].bbox == BoundingBox(x=52.65, y=40.92, width=260.87, height=427.44)
    assert listed[1].bbox is None
    assert listed[1].confidence is None
    with pytest.raises(AlreadyExists):
        client.batch_create_entities(session.id, [Entity(entity_id="cat_0")])


def test_entity_error_names_its_index(client: Client) -> None:
    session = make_session(client)
    with pytest.raises(InvalidArgument) as caught:
        client.batch_create_entities(
            session.id,
            [Entity(entity_id="a"), Entity(entity_id="b", confidence=1.5)],
        )
    assert "1" in caught.value.message
    assert client.list_entities(session.id) == []


def test_validations_round_trip(client: Client) -> None:
    session = make_session(client)
    created = client.create_validation(
        session.id,
        0,
        alignment_score=0.72,
        preserved_count=4,
        modified_count=1,
        unintended_count=1,
        user_feedback="the couch changed colour",
    )
    assert created.create_time is not None
    listed = client.list_validations(session.id)
    assert listed == [created]
    assert listed[0].unintended_count == 1


def test_user_feedback_round_trips(client: Client) -> None:
    session = make_session(client)
    created = client.create_user_feedback(
        session.id, "partial", comments="sky good, cats too purple", rating=3
    )
    assert created.feedback_type == FeedbackType.PARTIAL
    unrated = client.create_user_feedback(session.id, FeedbackType.REJECT)
    assert unrated.rating is None
    assert client.list_user_feedback(session.id) == [created, unrated]


def test_rating_out_of_range_is_invalid_argument(client: Client) -> None:
    session = make_session(client)
    with pytest.raises(InvalidArgument) as caught:
        client.create_user_feedback(session.id, FeedbackType.ACCEPT, rating=7)
    error = caught.value
    assert isinstance(error, EditstoreError)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "rating" in error.message
    assert isinstance(error.__cause__, grpc.RpcError)


def test_missing_session_is_not_found(client: Client) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(NotFound) as caught:
        client.get_session(missing)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert isinstance(caught.value.__cause__, grpc.RpcError)
    with pytest.raises(NotFound):
        client.create_prompt(missing, 0)
    with pytest.raises(NotFound):
        client.patch_state(missing, {"a": 1})


def test_empty_naive_prompt_is_invalid_argument(client: Client) -> None:
    with pytest.raises(InvalidArgument) as caught:
        client.create_session("/p.png", "")
    assert "naive_prompt" in caught.value.message


def test_resume_session_returns_everything(client: Client) -> None:
    session = make_session(client)
    prompt = client.create_prompt(session.id, 0, positive_prompt="p")
    entities = client.batch_create_entities(session.id, [{"entity_id": "sky_0"}])
    validation = client.create_validation(session.id, 0)
    feedback = client.create_user_feedback(session.id, "accept")
    state = client.put_state(session.id, {"current_stage": "validation"})
    resumed = client.resume_session(session.id)
    assert resumed.session.id == session.id
    assert resumed.prompts == [prompt]
    assert resumed.entities == entities
    assert resumed.validations == [validation]
    assert resumed.user_feedback == [feedback]
    assert resumed.state == state


def test_state_round_trips_exactly(client: Client) -> None:
    session = make_session(client)
    empty = client.get_state(session.id)
    assert empty.version == 0
    assert empty.document == {}
    assert empty.update_time is None
    document = {
        "session_id": session.id,
        "current_stage": "analysis",
        "big": 9007199254740993,
        "three": 3,
        "float": 3.0,
        "text": "ciel étoilé ✨ \u00e9",
        "nested": {"list": [1, 2.5, None, True]},
    }
    put = client.put_state(session.id, document)
    assert put.version == 1
    fetched = client.get_state(session.id)
    assert fetched.document == document
    assert isinstance(fetched.document["big"], int)
    assert isinstance(fetched.document["three"], int)
    assert isinstance(fetched.document["float"], float)
    assert fetched.update_time is not None


def test_patch_state_merges_and_removes(client: Client) -> None:
    session = make_session(client)
    client.put_state(session.id, {"a": 1, "intent": {"edit_type": "style"}})
    patched = client.patch_state(
        session.id, {"a": None, "intent": {"confidence": 0.85}}
    )
    assert patched.version == 2
    assert patched.document == {"intent": {"edit_type": "style", "confidence": 0.85}}


def test_stale_expected_version_is_aborted(client: Client) -> None:
    session = make_session(client)
    client.put_state(session.id, {"a": 1}, expected_version=0)
    client.patch_state(session.id, {"b": 2}, expected_version=1)
    with pytest.raises(Aborted) as caught:
        client.patch_state(session.id, {"c": 3}, expected_version=1)
    assert caught.value.code == grpc.StatusCode.ABORTED
    with pytest.raises(Aborted):
        client.put_state(session.id, {}, expected_version=0)


def test_put_state_with_same_request_id_applies_once(client: Client) -> None:
    session = make_session(client)
    first = client.patch_state(session.id, {"n": 1}, request_id=REQUEST_ID)
    second = client.patch_state(session.id, {"n": 1}, request_id=REQUEST_ID)
    assert first.version == second.version == 1
    assert client.get_state(session.id).version == 1


def test_state_rule_break_is_invalid_argument(client: Client) -> None:
    session = make_session(client)
    with pytest.raises(InvalidArgument) as caught:
        client.put_state(session.id, {"intent": {"confidence": 2}})
    assert "confidence" in caught.value.message


def test_nan_is_rejected_before_sending(client: Client) -> None:
    session = make_session(client)
    with pytest.raises(ValueError) as nan:
        client.put_state(session.id, {"score": float("nan")})
    with pytest.raises(ValueError) as infinity:
        client.patch_state(session.id, {"a": {"b": [1, float("inf")]}})
    with pytest.raises(TypeError) as unsupported:
        client.patch_state(session.id, {"tags": {"sky", "sea"}})

    assert "member score is nan" in str(nan.value)
    assert "member a.b[1] is inf" in str(infinity.value)
    assert "member tags is a set" in str(unsupported.value)
    assert client.get_state(session.id).version == 0


def test_unknown_enum_value_names_field_and_values(client: Client) -> None:
    session = make_session(client)
    with pytest.raises(ValueError) as feedback:
        client.create_user_feedback(session.id, "negative")
    with pytest.raises(ValueError) as status:
        client.update_session(session.id, status="done")

    assert str(feedback.value) == (
        "feedback_type must be one of accept, reject, partial, got 'negative'"
    )
    assert str(status.value) == (
        "status must be one of in_progress, completed, failed, got 'done'"
    )
    # The member's name is accepted as well as its value.
    assert client.update_session(session.id, status="COMPLETED").status == "completed"


def test_list_state_versions(client: Client) -> None:
    session = make_session(client)
    for index in range(5):
        client.patch_state(session.id, {"step": index})
    everything = client.list_state_versions(session.id)
    assert [v.version for v in everything.versions] == [1, 2, 3, 4, 5]
    assert everything.oldest_kept_version == 1
    assert everything.versions[2].document == {"step": 2}
    later = client.list_state_versions(session.id, after_version=3, page_size=1)
    assert [v.version for v in later.versions] == [4]


def test_state_stream_resolves_combined_acknowledgements(client: Client) -> None:
    session = make_session(client)
    with client.open_state_stream() as stream:
        futures = [stream.send_patch(session.id, {"step": i}) for i in range(300)]
        results = [future.result(timeout=30) for future in futures]
    # The daemon acknowledges most of these in the responses of earlier ones;
    # each future still gets its own update's sequence and version.
    assert [result.version for result in results] == list(range(1, 301))
    assert [result.sequence for result in results] == list(range(1, 301))
    assert client.get_state(session.id).document == {"step": 299}


def test_state_stream_acknowledges_each_update(client: Client) -> None:
    session = make_session(client)
    with client.open_state_stream() as stream:
        futures = [stream.send_patch(session.id, {f"k{i}": i}) for i in range(50)]
        results = [future.result(timeout=30) for future in futures]
        assert sorted(r.version for r in results) == list(range(1, 51))
        replaced = stream.send_document(session.id, {"only": True}).result(30)
        assert replaced.version == 51
        with pytest.raises(Aborted):
            stream.patch(session.id, {"x": 1}, expected_version=3)
        with pytest.raises(NotFound):
            stream.patch("00000000-0000-4000-8000-000000000000", {"x": 1})
        after_error = stream.patch(session.id, {"after": 1})
        assert after_error.version == 52
    assert client.get_state(session.id).document == {"only": True, "after": 1}


def test_watch_state_yields_snapshot_then_changes(client: Client) -> None:
    session = make_session(client)
    client.patch_state(session.id, {"step": 0})
    events: list[WatchEvent] = []
    seen_snapshot = threading.Event()

    def watch() -> None:
        for event in client.watch_state(session.id):
            if event.type == WatchEventType.HEARTBEAT:
                continue
            events.append(event)
            seen_snapshot.set()
            if event.type == WatchEventType.SESSION_DELETED:
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert seen_snapshot.wait(30)
    client.patch_state(session.id, {"step": 1})
    client.put_state(session.id, {"step": 2})
    deadline = time.monotonic() + 30
    while len(events) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    client.delete_session(session.id)
    watcher.join(30)
    assert not watcher.is_alive()
    kinds = [event.type for event in events]
    assert kinds == [
        WatchEventType.SNAPSHOT,
        WatchEventType.CHANGE,
        WatchEventType.CHANGE,
        WatchEventType.SESSION_DELETED,
    ]
    assert events[0].state is not None
    assert events[0].state.document == {"step": 0}
    assert events[1].merge_patch == {"step": 1}
    assert events[2].merge_patch is None
    assert events[2].state is not None
    assert events[2].state.version == 3


def test_watch_from_version_resumes_without_gap(client: Client) -> None:
    session = make_session(client)
    for index in range(4):
        client.patch_state(session.id, {"step": index})
    watch = client.watch_state(session.id, from_version=2)
    try:
        first = next(watch)
        second = next(watch)
    finally:
        watch.close()
    assert first.type == WatchEventType.CHANGE
    assert first.state is not None
    assert first.state.version == 3
    assert second.state is not None
    assert second.state.version == 4


def test_watch_missing_session_is_not_found(client: Client) -> None:
    with pytest.raises(NotFound):
        next(client.watch_state("00000000-0000-4000-8000-000000000000"))


def test_reads_are_retried_while_daemon_restarts(daemon: Daemon) -> None:
    # A restart takes seconds on a loaded machine: allow a minute of retries.
    policy = RetryPolicy(max_attempts=200, max_backoff=0.5, max_elapsed=60)
    with Client(daemon.address, retry=policy) as client:
        session = make_session(client)
        daemon.kill()
        restarter = threading.Timer(0.5, daemon.start)
        restarter.start()
        try:
            fetched = client.get_session(session.id)
            patched = client.patch_state(session.id, {"after_restart": True})
        finally:
            restarter.join()
        assert fetched.id == session.id
        assert patched.version == 1


def test_down_daemon_is_unavailable_after_retries(daemon: Daemon) -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)
    with Client(daemon.address, retry=policy) as client:
        daemon.kill()
        with pytest.raises(Unavailable) as caught:
            client.list_sessions()
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert isinstance(caught.value.__cause__, grpc.RpcError)


def test_watch_reconnects_after_daemon_restart(daemon: Daemon) -> None:
    with Client(daemon.address) as client:
        session = make_session(client)
        client.patch_state(session.id, {"step": 1})
        watch = client.watch_state(session.id)
        try:
            snapshot = next(watch)
            assert snapshot.type == WatchEventType.SNAPSHOT
            daemon.kill()
            daemon.start()
            client.patch_state(session.id, {"step": 2})
            client.patch_state(session.id, {"step": 3})
            events = []
            while len(events) < 2:
                event = next(watch)
                if event.type != WatchEventType.HEARTBEAT:
                    events.append(event)
        finally:
            watch.close()
    # The watch came back from version 1: no snapshot again, no gap.
    assert [event.type for event in events] == [
        WatchEventType.CHANGE,
        WatchEventType.CHANGE,
    ]
    assert [event.state.version for event in events if event.state] == [2, 3]
    assert events[1].state is not None
    assert events[1].state.document == {"step": 3}


def test_document_size_limit_passes_the_channel(client: Client) -> None:
    session = make_session(client)
    limit = 4 * 1024 * 1024
    # Compact JSON of {"blob": "..."} is the string plus 11 bytes.
    largest = {"blob": "x" * (limit - 11)}
    stored = client.put_state(session.id, largest)
    assert stored.version == 1
    assert client.get_state(session.id).document == largest
    # One byte over: the daemon's own check rejects it, not the channel's.
    with pytest.raises(ResourceExhausted) as caught:
        client.put_state(session.id, {"blob": "x" * (limit - 10)})
    assert "4194304" in caught.value.message


def test_state_stream_fails_pending_updates_when_daemon_dies(daemon: Daemon) -> None:
    with Client(daemon.address) as client:
        session = make_session(client)
        stream = client.open_state_stream()
        try:
            assert stream.patch(session.id, {"step": 1}).version == 1
            daemon.kill()
            with pytest.raises(Unavailable):
                stream.send_patch(session.id, {"step": 2}).result(timeout=30)
        finally:
            stream.close(timeout=5)


def test_cancelled_stream_future_leaves_others_resolving(daemon: Daemon) -> None:
    with Client(daemon.address, timeout=10) as client:
        session = make_session(client)
        with client.open_state_stream() as stream:
            # Nothing commits while the lock is held, so future 10 is still
            # pending when its caller cancels it.
            with writes_held(daemon, session.id):
                futures = [
                    stream.send_patch(session.id, {"step": i}) for i in range(20)
                ]
                assert futures[10].cancel()
            results = [future.result(timeout=30) for future in futures[11:]]
    assert futures[10].cancelled()
    assert [result.version for result in results] == list(range(12, 21))
    assert all(future.result(timeout=1).version for future in futures[:10])
