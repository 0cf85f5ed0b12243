"""SessionService as a client sees it: sessions and their records over gRPC.

Most tests share one daemon per backend (module scope) and make sessions of
their own. Listing tests filter by a creation time taken just before they
create their sessions. One listing test starts a daemon over an empty
database, so that it can walk every session without a filter.
"""

from __future__ import annotations

import base64
import datetime
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2

from editstore.server.config import Settings
from editstore.v1 import session_pb2 as pb
from editstore.v1 import session_pb2_grpc, state_pb2, state_pb2_grpc
from tests.daemon import Daemon

POSTGRES_ENV = "EDITSTORE_TEST_POSTGRES"
CHILD_TABLES = (
    "prompts",
    "entities",
    "validations",
    "user_feedback",
    "session_states",
    "state_versions",
)


@pytest.fixture(scope="module")
def channel(server: Daemon) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as opened:
        yield opened


@pytest.fixture(scope="module")
def sessions(channel: grpc.Channel) -> session_pb2_grpc.SessionServiceStub:
    return session_pb2_grpc.SessionServiceStub(channel)


@pytest.fixture(scope="module")
def states(channel: grpc.Channel) -> state_pb2_grpc.StateServiceStub:
    return state_pb2_grpc.StateServiceStub(channel)


def new_session(stub: session_pb2_grpc.SessionServiceStub, **fields: Any) -> pb.Session:
    values: dict[str, Any] = {"image_path": "photos/beach.jpg"}
    values["naive_prompt"] = "make the sky dramatic"
    values.update(fields)
    return stub.CreateSession(
        pb.CreateSessionRequest(session=pb.Session(**values)), timeout=10
    )


def status_of(call: Any, request: Any) -> grpc.StatusCode:
    """Return the status code of a call that must fail."""
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10)
    return caught.value.code()


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def as_datetime(stamp: timestamp_pb2.Timestamp) -> datetime.datetime:
    return stamp.ToDatetime(tzinfo=datetime.UTC)


def count_rows(database_url: str, table: str, session_id: str) -> int:
    """Count a session's rows of one table by reading the database directly."""
    column = "id" if table == "sessions" else "session_id"
    if database_url.startswith("sqlite:///"):
        path = database_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as connection:
            row = connection.execute(
                f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", (session_id,)
            ).fetchone()
        return int(row[0])
    import psycopg2

    connection = psycopg2.connect(database_url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT COUNT(*) FROM {table} WHERE {column} = %s", (session_id,)
            )
            return int(cursor.fetchone()[0])
    finally:
        connection.close()


def fill_session(
    sessions: session_pb2_grpc.SessionServiceStub,
    states: state_pb2_grpc.StateServiceStub,
    session_id: str,
) -> None:
    """Give a session two records of every kind and three state versions."""
    for iteration in (0, 1):
        sessions.CreatePrompt(
            pb.CreatePromptRequest(
                prompt=pb.Prompt(
                    session_id=session_id,
                    iteration=iteration,
                    positive_prompt=f"dramatic sky, step {iteration}",
                )
            ),
            timeout=10,
        )
    sessions.BatchCreateEntities(
        pb.BatchCreateEntitiesRequest(
            session_id=session_id,
            entities=[pb.Entity(entity_id="sky_0"), pb.Entity(entity_id="sea_0")],
        ),
        timeout=10,
    )
    for attempt in (0, 1):
        sessions.CreateValidation(
            pb.CreateValidationRequest(
                validation=pb.Validation(
                    session_id=session_id, attempt_number=attempt, preserved_count=2
                )
            ),
            timeout=10,
        )
    for kind in (pb.FEEDBACK_TYPE_REJECT, pb.FEEDBACK_TYPE_ACCEPT):
        sessions.CreateUserFeedback(
            pb.CreateUserFeedbackRequest(
                user_feedback=pb.UserFeedback(session_id=session_id, feedback_type=kind)
            ),
            timeout=10,
        )
    for step in range(3):
        states.PatchState(
            state_pb2.PatchStateRequest(
                session_id=session_id, merge_patch_json=f'{{"step": {step}}}'
            ),
            timeout=10,
        )


# Create and get


def test_create_session_returns_stored_session(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    created = new_session(sessions, final_alignment_score=0.25)
    assert str(uuid.UUID(created.id)) == created.id
    assert created.image_path == "photos/beach.jpg"
    assert created.naive_prompt == "make the sky dramatic"
    assert created.status == pb.SESSION_STATUS_IN_PROGRESS
    assert created.final_alignment_score == 0.25
    assert created.etag
    fetched = sessions.GetSession(pb.GetSessionRequest(id=created.id), timeout=10)
    assert fetched == created


def test_create_session_ignores_given_id_and_time(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    chosen = str(uuid.uuid4())
    stamp = timestamp_pb2.Timestamp(seconds=1_000_000)
    created = new_session(sessions, id=chosen, create_time=stamp, etag="mine")
    assert created.id != chosen
    assert created.create_time != stamp
    assert created.etag != "mine"


def test_create_session_keeps_given_status(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    created = new_session(sessions, status=pb.SESSION_STATUS_COMPLETED)
    assert created.status == pb.SESSION_STATUS_COMPLETED


def test_create_session_leaves_score_unset(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    created = new_session(sessions)
    fetched = sessions.GetSession(pb.GetSessionRequest(id=created.id), timeout=10)
    assert not fetched.HasField("final_alignment_score")


def test_create_time_is_utc_now(sessions: session_pb2_grpc.SessionServiceStub) -> None:
    before = datetime.datetime.now(datetime.UTC)
    created = new_session(sessions)
    after = datetime.datetime.now(datetime.UTC)
    created_at = as_datetime(created.create_time)
    assert before - datetime.timedelta(seconds=5) <= created_at
    assert created_at <= after + datetime.timedelta(seconds=5)


def test_record_create_times_are_utc_now(
    sessions: session_pb2_grpc.SessionServiceStub,
    states: state_pb2_grpc.StateServiceStub,
) -> None:
    session = new_session(sessions)
    fill_session(sessions, states, session.id)
    resumed = sessions.ResumeSession(pb.ResumeSessionRequest(id=session.id), timeout=10)
    now = datetime.datetime.now(datetime.UTC)
    stamps = [
        *(prompt.create_time for prompt in resumed.prompts),
        *(item.create_time for item in resumed.validations),
        *(item.create_time for item in resumed.user_feedback),
        resumed.state.update_time,
    ]
    for stamp in stamps:
        assert abs(as_datetime(stamp) - now) < datetime.timedelta(seconds=30)


def test_get_session_of_unknown_id_is_not_found(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    request = pb.GetSessionRequest(id=str(uuid.uuid4()))
    assert status_of(sessions.GetSession, request) == grpc.StatusCode.NOT_FOUND


def test_get_session_without_id_is_invalid(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    request = pb.GetSessionRequest(id="")
    assert status_of(sessions.GetSession, request) == grpc.StatusCode.INVALID_ARGUMENT


def missing_session_calls(missing: str) -> list[tuple[str, Any]]:
    session = pb.Session(id=missing, image_path="a.jpg", naive_prompt="sky")
    return [
        ("GetSession", pb.GetSessionRequest(id=missing)),
        (
            "UpdateSession",
            pb.UpdateSessionRequest(session=session, update_mask=mask("image_path")),
        ),
        ("DeleteSession", pb.DeleteSessionRequest(id=missing)),
        (
            "CreatePrompt",
            pb.CreatePromptRequest(prompt=pb.Prompt(session_id=missing, iteration=0)),
        ),
        ("ListPrompts", pb.ListPromptsRequest(session_id=missing)),
        (
            "BatchCreateEntities",
            pb.BatchCreateEntitiesRequest(
                session_id=missing, entities=[pb.Entity(entity_id="sky_0")]
            ),
        ),
        ("ListEntities", pb.ListEntitiesRequest(session_id=missing)),
        (
            "CreateValidation",
            pb.CreateValidationRequest(validation=pb.Validation(session_id=missing)),
        ),
        ("ListValidations", pb.ListValidationsRequest(session_id=missing)),
        (
            "CreateUserFeedback",
            pb.CreateUserFeedbackRequest(
                user_feedback=pb.UserFeedback(
                    session_id=missing, feedback_type=pb.FEEDBACK_TYPE_ACCEPT
                )
            ),
        ),
        ("ListUserFeedback", pb.ListUserFeedbackRequest(session_id=missing)),
        ("ResumeSession", pb.ResumeSessionRequest(id=missing)),
    ]


@pytest.mark.parametrize(
    "method", [name for name, _ in missing_session_calls("x")], ids=str
)
def test_missing_session_is_not_found(
    sessions: session_pb2_grpc.SessionServiceStub, method: str
) -> None:
    calls = dict(missing_session_calls(str(uuid.uuid4())))
    call = getattr(sessions, method)
    assert status_of(call, calls[method]) == grpc.StatusCode.NOT_FOUND


def test_deleted_session_is_not_found_by_every_method(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    session = new_session(sessions)
    sessions.DeleteSession(pb.DeleteSessionRequest(id=session.id), timeout=10)
    for method, request in missing_session_calls(session.id):
        code = status_of(getattr(sessions, method), request)
        assert code == grpc.StatusCode.NOT_FOUND, method


# Listing


@pytest.fixture
def empty_stub(daemon: Daemon) -> Iterator[session_pb2_grpc.SessionServiceStub]:
    """A client of a daemon over an empty database."""
    with grpc.insecure_channel(daemon.address) as opened:
        yield session_pb2_grpc.SessionServiceStub(opened)


def now_stamp() -> timestamp_pb2.Timestamp:
    """Return the current time, to list only the sessions created after it."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.datetime.now(datetime.UTC))
    return stamp


def create_many(
    stub: session_pb2_grpc.SessionServiceStub, count: int, **fields: Any
) -> list[pb.Session]:
    """Create sessions concurrently and return them."""
    futures = [
        stub.CreateSession.future(
            pb.CreateSessionRequest(
                session=pb.Session(
                    image_path=f"photos/{index}.jpg",
                    naive_prompt=f"instruction {index}",
                    **fields,
                )
            ),
            timeout=30,
        )
        for index in range(count)
    ]
    return [future.result() for future in futures]


def list_all(
    stub: session_pb2_grpc.SessionServiceStub, **filters: Any
) -> tuple[list[pb.Session], int]:
    """Walk every page of a listing and return the sessions and the page count."""
    found: list[pb.Session] = []
    pages = 0
    token = ""
    while True:
        reply = stub.ListSessions(
            pb.ListSessionsRequest(page_token=token, **filters), timeout=10
        )
        pages += 1
        found.extend(reply.sessions)
        token = reply.next_page_token
        if not token:
            return found, pages
        assert pages < 100, "listing does not end"


def newest_first(items: list[pb.Session]) -> list[pb.Session]:
    return sorted(
        items,
        key=lambda item: (as_datetime(item.create_time), item.id),
        reverse=True,
    )


def test_list_sessions_walks_every_page_newest_first(
    empty_stub: session_pb2_grpc.SessionServiceStub,
) -> None:
    created = create_many(empty_stub, 120)
    found, pages = list_all(empty_stub, page_size=50)
    assert pages == 3
    ids = [item.id for item in found]
    assert len(ids) == len(set(ids))
    assert set(ids) == {item.id for item in created}
    assert ids == [item.id for item in newest_first(found)]
    assert {item.id: item for item in found} == {item.id: item for item in created}
    first = empty_stub.ListSessions(pb.ListSessionsRequest(), timeout=10)
    assert [item.id for item in first.sessions] == ids[:50]


def test_list_sessions_default_page_size_is_50(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    start = now_stamp()
    create_many(sessions, 51)
    first = sessions.ListSessions(
        pb.ListSessionsRequest(create_time_after=start), timeout=10
    )
    assert len(first.sessions) == 50
    assert first.next_page_token
    second = sessions.ListSessions(
        pb.ListSessionsRequest(
            create_time_after=start, page_token=first.next_page_token
        ),
        timeout=10,
    )
    assert len(second.sessions) == 1
    assert second.next_page_token == ""


def test_list_sessions_last_full_page_has_no_token(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    start = now_stamp()
    create_many(sessions, 10)
    reply = sessions.ListSessions(
        pb.ListSessionsRequest(page_size=10, create_time_after=start), timeout=10
    )
    assert len(reply.sessions) == 10
    assert reply.next_page_token == ""


def test_list_sessions_with_nothing_matching_is_empty(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    future = timestamp_pb2.Timestamp(seconds=4_000_000_000)
    reply = sessions.ListSessions(
        pb.ListSessionsRequest(create_time_after=future), timeout=10
    )
    assert list(reply.sessions) == []
    assert reply.next_page_token == ""


def test_list_sessions_filters_by_status(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    start = now_stamp()
    running = create_many(sessions, 7)
    done = create_many(sessions, 5, status=pb.SESSION_STATUS_COMPLETED)
    failed = create_many(sessions, 3, status=pb.SESSION_STATUS_FAILED)
    expected = {
        pb.SESSION_STATUS_IN_PROGRESS: running,
        pb.SESSION_STATUS_COMPLETED: done,
        pb.SESSION_STATUS_FAILED: failed,
    }
    for status, group in expected.items():
        found, _ = list_all(
            sessions, page_size=2, status=status, create_time_after=start
        )
        assert sorted(item.id for item in found) == sorted(item.id for item in group)
        assert [item.id for item in found] == [item.id for item in newest_first(found)]
    everything, _ = list_all(sessions, page_size=4, create_time_after=start)
    assert len(everything) == 15


def test_list_sessions_filters_by_create_time(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    start = now_stamp()
    early = create_many(sessions, 4)
    cut = max(as_datetime(item.create_time) for item in early)
    cut += datetime.timedelta(microseconds=1)
    late = create_many(sessions, 6)
    boundary = timestamp_pb2.Timestamp()
    boundary.FromDatetime(cut)
    after, _ = list_all(sessions, page_size=4, create_time_after=boundary)
    before, _ = list_all(
        sessions, page_size=3, create_time_after=start, create_time_before=boundary
    )
    assert {item.id for item in after} == {item.id for item in late}
    assert {item.id for item in before} == {item.id for item in early}


def test_list_sessions_create_time_after_is_inclusive(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    start = now_stamp()
    (only,) = create_many(sessions, 1)
    reply = sessions.ListSessions(
        pb.ListSessionsRequest(create_time_after=only.create_time), timeout=10
    )
    assert [item.id for item in reply.sessions] == [only.id]
    reply = sessions.ListSessions(
        pb.ListSessionsRequest(
            create_time_after=start, create_time_before=only.create_time
        ),
        timeout=10,
    )
    assert list(reply.sessions) == []


def first_token(stub: session_pb2_grpc.SessionServiceStub, **filters: Any) -> str:
    reply = stub.ListSessions(pb.ListSessionsRequest(page_size=2, **filters))
    assert reply.next_page_token
    return reply.next_page_token


def test_list_sessions_rejects_tampered_token(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    create_many(sessions, 3)
    token = first_token(sessions)
    flipped = token[:5] + ("A" if token[5] != "A" else "B") + token[6:]
    tampered = [flipped, token[:-4], token + "x", "not a token", "é" * 8, "e30="]
    for bad in tampered:
        request = pb.ListSessionsRequest(page_size=2, page_token=bad)
        code = status_of(sessions.ListSessions, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, bad


def edited_tokens(token: str) -> list[str]:
    """Return copies of a token whose JSON content was edited by hand."""
    payload = json.loads(base64.urlsafe_b64decode(token))
    broken: list[Any] = ["\x00", ["x"], 7, None, "", "x" * 300]
    edited = []
    for key in payload:
        values = [*broken]
        if key != "i":
            values.append("2026-01-01T00:00:00+05:00")
        if key == "t":
            # A token of a session without a creation time has no time.
            values.remove(None)
        for value in values:
            changed = dict(payload)
            changed[key] = value
            text = json.dumps(changed).encode()
            edited.append(base64.urlsafe_b64encode(text).decode())
    return edited


def test_list_sessions_rejects_token_with_edited_content(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    create_many(sessions, 3)
    for bad in edited_tokens(first_token(sessions)):
        request = pb.ListSessionsRequest(page_size=2, page_token=bad)
        code = status_of(sessions.ListSessions, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, base64.urlsafe_b64decode(bad)


def test_list_sessions_rejects_forged_stored_time(
    server: Daemon, sessions: session_pb2_grpc.SessionServiceStub
) -> None:
    # A token may carry created_at as a SQLite row stores it. A value that
    # no SQLite row can hold is rejected, and on PostgreSQL any such value.
    create_many(sessions, 3)
    payload = json.loads(base64.urlsafe_b64decode(first_token(sessions)))
    payload.pop("t", None)
    forged: list[Any] = [
        ["i", 2**70],
        ["i", -(2**70)],
        ["f", 10**400],
        ["f", "1.5"],
        ["s", 5],
        ["s", "\ud800"],
        ["b", "not base64!"],
        ["x", 1],
    ]
    if server.database_url.startswith("postgresql"):
        forged += [["i", 5], ["f", 1.5], ["s", "2026-01-01 00:00:00"]]
    for raw in forged:
        text = json.dumps({**payload, "r": raw}).encode()
        request = pb.ListSessionsRequest(
            page_size=2, page_token=base64.urlsafe_b64encode(text).decode()
        )
        code = status_of(sessions.ListSessions, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, raw


def test_list_sessions_rejects_token_of_other_filters(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    create_many(sessions, 3)
    token = first_token(sessions)
    stamp = timestamp_pb2.Timestamp(seconds=1)
    other_filters: list[dict[str, Any]] = [
        {"status": pb.SESSION_STATUS_IN_PROGRESS},
        {"create_time_after": stamp},
        {"create_time_before": timestamp_pb2.Timestamp(seconds=4_000_000_000)},
    ]
    for filters in other_filters:
        request = pb.ListSessionsRequest(page_size=2, page_token=token, **filters)
        code = status_of(sessions.ListSessions, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, filters
    filtered = first_token(sessions, status=pb.SESSION_STATUS_IN_PROGRESS)
    request = pb.ListSessionsRequest(page_size=2, page_token=filtered)
    code = status_of(sessions.ListSessions, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_list_sessions_token_with_changed_page_size_continues(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    start = now_stamp()
    create_many(sessions, 6)
    token = first_token(sessions, create_time_after=start)
    rest = sessions.ListSessions(
        pb.ListSessionsRequest(page_size=10, page_token=token, create_time_after=start),
        timeout=10,
    )
    assert len(rest.sessions) == 4
    assert rest.next_page_token == ""


@pytest.mark.parametrize("page_size", [-1, 1001, -(2**31)])
def test_list_sessions_rejects_page_size_out_of_range(
    sessions: session_pb2_grpc.SessionServiceStub, page_size: int
) -> None:
    request = pb.ListSessionsRequest(page_size=page_size)
    assert status_of(sessions.ListSessions, request) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


@pytest.mark.parametrize(
    "stamp",
    [
        timestamp_pb2.Timestamp(seconds=2**62),
        timestamp_pb2.Timestamp(seconds=-(2**62)),
        timestamp_pb2.Timestamp(seconds=0, nanos=-1),
        timestamp_pb2.Timestamp(seconds=0, nanos=2**31 - 1),
    ],
    ids=["far_future", "far_past", "negative_nanos", "huge_nanos"],
)
def test_list_sessions_rejects_time_out_of_range(
    sessions: session_pb2_grpc.SessionServiceStub, stamp: timestamp_pb2.Timestamp
) -> None:
    for field in ("create_time_after", "create_time_before"):
        request = pb.ListSessionsRequest(**{field: stamp})
        with pytest.raises(grpc.RpcError) as caught:
            sessions.ListSessions(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in caught.value.details()


def test_list_sessions_rejects_unknown_status(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    request = pb.ListSessionsRequest(status=42)  # type: ignore[arg-type]
    assert status_of(sessions.ListSessions, request) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


# Update


def update(
    stub: session_pb2_grpc.SessionServiceStub,
    session: pb.Session,
    *paths: str,
) -> pb.Session:
    return stub.UpdateSession(
        pb.UpdateSessionRequest(session=session, update_mask=mask(*paths)),
        timeout=10,
    )


def test_update_session_changes_only_masked_fields(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    created = new_session(sessions)
    change = pb.Session(
        id=created.id,
        image_path="photos/other.jpg",
        naive_prompt="make it night",
        status=pb.SESSION_STATUS_COMPLETED,
        final_alignment_score=0.9,
    )
    updated = update(sessions, change, "naive_prompt")
    assert updated.naive_prompt == "make it night"
    assert updated.image_path == created.image_path
    assert updated.status == pb.SESSION_STATUS_IN_PROGRESS
    assert not updated.HasField("final_alignment_score")
    assert updated.create_time == created.create_time
    fetched = sessions.GetSession(pb.GetSessionRequest(id=created.id), timeout=10)
    assert fetched == updated


def test_update_session_with_star_changes_all_fields(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    created = new_session(sessions)
    change = pb.Session(
        id=created.id,
        image_path="photos/other.jpg",
        naive_prompt="make it night",
        status=pb.SESSION_STATUS_FAILED,
        final_alignment_score=0.5,
    )
    updated = update(sessions, change, "*")
    assert updated.image_path == "photos/other.jpg"
    assert updated.naive_prompt == "make it night"
    assert updated.status == pb.SESSION_STATUS_FAILED
    assert updated.final_alignment_score == 0.5


def test_update_session_clears_unset_score_named_in_mask(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    created = new_session(sessions, final_alignment_score=0.7)
    updated = update(sessions, pb.Session(id=created.id), "final_alignment_score")
    assert not updated.HasField("final_alignment_score")
    fetched = sessions.GetSession(pb.GetSessionRequest(id=created.id), timeout=10)
    assert not fetched.HasField("final_alignment_score")


@pytest.mark.parametrize(
    "paths",
    [(), ("id",), ("create_time",), ("etag",), ("no_such_field",), ("status",)],
    ids=["empty", "id", "create_time", "etag", "unknown", "unspecified_status"],
)
def test_update_session_rejects_bad_mask(
    sessions: session_pb2_grpc.SessionServiceStub, paths: tuple[str, ...]
) -> None:
    created = new_session(sessions)
    request = pb.UpdateSessionRequest(
        session=pb.Session(id=created.id, image_path="x.jpg"), update_mask=mask(*paths)
    )
    assert status_of(sessions.UpdateSession, request) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    fetched = sessions.GetSession(pb.GetSessionRequest(id=created.id), timeout=10)
    assert fetched == created


@pytest.mark.parametrize(
    "end", [pb.SESSION_STATUS_COMPLETED, pb.SESSION_STATUS_FAILED], ids=str
)
def test_finished_session_can_not_change_status(
    sessions: session_pb2_grpc.SessionServiceStub, end: int
) -> None:
    created = new_session(sessions)
    finished = update(sessions, pb.Session(id=created.id, status=end), "status")
    assert finished.status == end
    for other in (
        pb.SESSION_STATUS_IN_PROGRESS,
        pb.SESSION_STATUS_COMPLETED,
        pb.SESSION_STATUS_FAILED,
    ):
        if other == end:
            continue
        request = pb.UpdateSessionRequest(
            session=pb.Session(id=created.id, status=other), update_mask=mask("status")
        )
        code = status_of(sessions.UpdateSession, request)
        assert code == grpc.StatusCode.FAILED_PRECONDITION
    fetched = sessions.GetSession(pb.GetSessionRequest(id=created.id), timeout=10)
    assert fetched.status == end


def test_finished_session_keeps_other_fields_updatable(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    created = new_session(sessions, status=pb.SESSION_STATUS_COMPLETED)
    change = pb.Session(
        id=created.id, status=pb.SESSION_STATUS_COMPLETED, final_alignment_score=0.8
    )
    updated = update(sessions, change, "status", "final_alignment_score")
    assert updated.final_alignment_score == 0.8
    assert updated.status == pb.SESSION_STATUS_COMPLETED


def test_update_session_with_stale_etag_is_aborted(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    created = new_session(sessions)
    first = update(
        sessions,
        pb.Session(id=created.id, naive_prompt="first", etag=created.etag),
        "naive_prompt",
    )
    assert first.etag != created.etag
    stale = pb.UpdateSessionRequest(
        session=pb.Session(id=created.id, naive_prompt="second", etag=created.etag),
        update_mask=mask("naive_prompt"),
    )
    assert status_of(sessions.UpdateSession, stale) == grpc.StatusCode.ABORTED
    fetched = sessions.GetSession(pb.GetSessionRequest(id=created.id), timeout=10)
    assert fetched.naive_prompt == "first"
    assert fetched.etag == first.etag


def test_update_session_without_etag_always_applies(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    created = new_session(sessions)
    update(sessions, pb.Session(id=created.id, naive_prompt="one"), "naive_prompt")
    second = update(
        sessions, pb.Session(id=created.id, naive_prompt="two"), "naive_prompt"
    )
    assert second.naive_prompt == "two"


def test_concurrent_updates_with_one_etag_apply_once(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    created = new_session(sessions)
    futures = [
        sessions.UpdateSession.future(
            pb.UpdateSessionRequest(
                session=pb.Session(
                    id=created.id, naive_prompt=f"try {index}", etag=created.etag
                ),
                update_mask=mask("naive_prompt"),
            ),
            timeout=30,
        )
        for index in range(8)
    ]
    codes = []
    for future in futures:
        try:
            future.result()
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as error:
            codes.append(error.code())
    assert codes.count(grpc.StatusCode.OK) == 1
    assert codes.count(grpc.StatusCode.ABORTED) == 7


# Delete


def test_delete_session_removes_every_record(
    server: Daemon,
    sessions: session_pb2_grpc.SessionServiceStub,
    states: state_pb2_grpc.StateServiceStub,
) -> None:
    session = new_session(sessions)
    keep = new_session(sessions)
    fill_session(sessions, states, session.id)
    fill_session(sessions, states, keep.id)
    for table in CHILD_TABLES:
        assert count_rows(server.database_url, table, session.id) > 0, table
    reply = sessions.DeleteSession(pb.DeleteSessionRequest(id=session.id), timeout=10)
    assert reply.deleted_records == 8
    for table in ("sessions", *CHILD_TABLES):
        assert count_rows(server.database_url, table, session.id) == 0, table
    for table in ("sessions", *CHILD_TABLES):
        assert count_rows(server.database_url, table, keep.id) > 0, table
    resumed = sessions.ResumeSession(pb.ResumeSessionRequest(id=keep.id), timeout=10)
    assert len(resumed.prompts) == 2
    assert resumed.state.version == 3


def test_delete_session_twice_is_not_found(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    session = new_session(sessions)
    reply = sessions.DeleteSession(pb.DeleteSessionRequest(id=session.id), timeout=10)
    assert reply.deleted_records == 0
    request = pb.DeleteSessionRequest(id=session.id)
    assert status_of(sessions.DeleteSession, request) == grpc.StatusCode.NOT_FOUND


def test_deleted_session_id_can_not_take_records(
    sessions: session_pb2_grpc.SessionServiceStub,
    states: state_pb2_grpc.StateServiceStub,
) -> None:
    session = new_session(sessions)
    sessions.DeleteSession(pb.DeleteSessionRequest(id=session.id), timeout=10)
    request = state_pb2.PutStateRequest(session_id=session.id, document_json="{}")
    assert status_of(states.PutState, request) == grpc.StatusCode.NOT_FOUND


# Records of a session


def test_prompts_are_listed_by_iteration(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    session = new_session(sessions)
    stored = {}
    for iteration in (2, 0, 1):
        prompt = pb.Prompt(
            session_id=session.id,
            iteration=iteration,
            positive_prompt=f"sky, golden hour, {iteration}",
            negative_prompt="blurry, ☁ oversaturated",
            quality_score=iteration / 4,
        )
        reply = sessions.CreatePrompt(pb.CreatePromptRequest(prompt=prompt), timeout=10)
        assert reply.id > 0
        assert reply.session_id == session.id
        assert reply.positive_prompt == prompt.positive_prompt
        assert reply.negative_prompt == prompt.negative_prompt
        assert reply.quality_score == prompt.quality_score
        stored[iteration] = reply
    listed = sessions.ListPrompts(
        pb.ListPromptsRequest(session_id=session.id), timeout=10
    )
    assert [prompt.iteration for prompt in listed.prompts] == [0, 1, 2]
    assert list(listed.prompts) == [stored[0], stored[1], stored[2]]


def test_prompt_without_score_reads_back_unset(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    session = new_session(sessions)
    sessions.CreatePrompt(
        pb.CreatePromptRequest(prompt=pb.Prompt(session_id=session.id)), timeout=10
    )
    (listed,) = sessions.ListPrompts(
        pb.ListPromptsRequest(session_id=session.id), timeout=10
    ).prompts
    assert not listed.HasField("quality_score")
    assert listed.iteration == 0
    assert listed.positive_prompt == ""


def test_prompt_iteration_used_twice_already_exists(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    session = new_session(sessions)
    other = new_session(sessions)
    request = pb.CreatePromptRequest(
        prompt=pb.Prompt(session_id=session.id, iteration=3, positive_prompt="a")
    )
    sessions.CreatePrompt(request, timeout=10)
    again = pb.CreatePromptRequest(
        prompt=pb.Prompt(session_id=session.id, iteration=3, positive_prompt="b")
    )
    assert status_of(sessions.CreatePrompt, again) == grpc.StatusCode.ALREADY_EXISTS
    listed = sessions.ListPrompts(pb.ListPromptsRequest(session_id=session.id))
    assert [prompt.positive_prompt for prompt in listed.prompts] == ["a"]
    elsewhere = pb.CreatePromptRequest(
        prompt=pb.Prompt(session_id=other.id, iteration=3, positive_prompt="c")
    )
    assert sessions.CreatePrompt(elsewhere, timeout=10).iteration == 3


def test_concurrent_prompts_with_one_iteration_store_one(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    session = new_session(sessions)
    futures = [
        sessions.CreatePrompt.future(
            pb.CreatePromptRequest(
                prompt=pb.Prompt(
                    session_id=session.id, iteration=0, positive_prompt=str(index)
                )
            ),
            timeout=30,
        )
        for index in range(6)
    ]
    codes = []
    for future in futures:
        try:
            future.result()
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as error:
            codes.append(error.code())
    assert codes.count(grpc.StatusCode.OK) == 1
    assert codes.count(grpc.StatusCode.ALREADY_EXISTS) == 5


def sample_entities() -> list[pb.Entity]:
    return [
        pb.Entity(
            entity_id="sky_0",
            label="sky",
            confidence=0.97,
            bbox=pb.BoundingBox(x=0, y=0, width=640, height=180.5),
            mask_path="masks/sky_0.png",
            color_hex="#87CEEB",
            area_percent=37.5,
        ),
        pb.Entity(entity_id="person_0", label="person", confidence=0.0),
        pb.Entity(entity_id="umbrella_0", bbox=pb.BoundingBox(), area_percent=100),
    ]


def test_entities_are_stored_in_one_batch_and_listed_in_order(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    session = new_session(sessions)
    sent = sample_entities()
    reply = sessions.BatchCreateEntities(
        pb.BatchCreateEntitiesRequest(session_id=session.id, entities=sent), timeout=10
    )
    assert len(reply.entities) == 3
    for stored, entity in zip(reply.entities, sent, strict=True):
        expected = pb.Entity()
        expected.CopyFrom(entity)
        expected.id = stored.id
        expected.session_id = session.id
        assert stored == expected
    more = sessions.BatchCreateEntities(
        pb.BatchCreateEntitiesRequest(
            session_id=session.id, entities=[pb.Entity(entity_id="sea_0")]
        ),
        timeout=10,
    )
    listed = sessions.ListEntities(
        pb.ListEntitiesRequest(session_id=session.id), timeout=10
    )
    assert list(listed.entities) == [*reply.entities, *more.entities]
    assert not listed.entities[1].HasField("bbox")
    assert not listed.entities[1].HasField("area_percent")
    assert listed.entities[1].HasField("confidence")
    assert listed.entities[2].HasField("bbox")
    assert not listed.entities[2].HasField("confidence")


def test_entity_id_used_twice_in_session_stores_nothing(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    session = new_session(sessions)
    sessions.BatchCreateEntities(
        pb.BatchCreateEntitiesRequest(
            session_id=session.id, entities=[pb.Entity(entity_id="sky_0")]
        ),
        timeout=10,
    )
    request = pb.BatchCreateEntitiesRequest(
        session_id=session.id,
        entities=[pb.Entity(entity_id="tree_0"), pb.Entity(entity_id="sky_0")],
    )
    code = status_of(sessions.BatchCreateEntities, request)
    assert code == grpc.StatusCode.ALREADY_EXISTS
    listed = sessions.ListEntities(pb.ListEntitiesRequest(session_id=session.id))
    assert [entity.entity_id for entity in listed.entities] == ["sky_0"]


def test_entity_id_twice_in_one_batch_stores_nothing(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    session = new_session(sessions)
    request = pb.BatchCreateEntitiesRequest(
        session_id=session.id,
        entities=[
            pb.Entity(entity_id="cat_0"),
            pb.Entity(entity_id="cat_1"),
            pb.Entity(entity_id="cat_0"),
        ],
    )
    with pytest.raises(grpc.RpcError) as caught:
        sessions.BatchCreateEntities(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "entities[2]" in caught.value.details()
    listed = sessions.ListEntities(pb.ListEntitiesRequest(session_id=session.id))
    assert list(listed.entities) == []


def test_bad_entity_in_batch_stores_none(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    session = new_session(sessions)
    entities = [*sample_entities(), pb.Entity(entity_id="bad_0", confidence=1.5)]
    request = pb.BatchCreateEntitiesRequest(session_id=session.id, entities=entities)
    with pytest.raises(grpc.RpcError) as caught:
        sessions.BatchCreateEntities(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "entities[3].confidence" in caught.value.details()
    listed = sessions.ListEntities(pb.ListEntitiesRequest(session_id=session.id))
    assert list(listed.entities) == []


def test_same_entity_id_in_other_sessions_is_allowed(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    for _ in range(2):
        session = new_session(sessions)
        reply = sessions.BatchCreateEntities(
            pb.BatchCreateEntitiesRequest(
                session_id=session.id, entities=[pb.Entity(entity_id="sky_0")]
            ),
            timeout=10,
        )
        assert reply.entities[0].entity_id == "sky_0"


@pytest.mark.parametrize("count", [0, 1001])
def test_entity_batch_size_out_of_range_is_invalid(
    sessions: session_pb2_grpc.SessionServiceStub, count: int
) -> None:
    session = new_session(sessions)
    request = pb.BatchCreateEntitiesRequest(
        session_id=session.id,
        entities=[pb.Entity(entity_id=f"e_{index}") for index in range(count)],
    )
    code = status_of(sessions.BatchCreateEntities, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_entity_batch_of_1000_is_stored(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    session = new_session(sessions)
    request = pb.BatchCreateEntitiesRequest(
        session_id=session.id,
        entities=[pb.Entity(entity_id=f"e_{index}") for index in range(1000)],
    )
    reply = sessions.BatchCreateEntities(request, timeout=30)
    assert [entity.entity_id for entity in reply.entities] == [
        f"e_{index}" for index in range(1000)
    ]


def test_validations_are_listed_in_order_added(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    session = new_session(sessions)
    sent = [
        pb.Validation(
            session_id=session.id,
            attempt_number=1,
            alignment_score=0.42,
            preserved_count=5,
            modified_count=1,
            unintended_count=2,
            user_feedback="the tree changed too",
        ),
        pb.Validation(session_id=session.id, attempt_number=0),
    ]
    stored = [
        sessions.CreateValidation(
            pb.CreateValidationRequest(validation=item), timeout=10
        )
        for item in sent
    ]
    for reply, item in zip(stored, sent, strict=True):
        assert reply.attempt_number == item.attempt_number
        assert reply.preserved_count == item.preserved_count
        assert reply.modified_count == item.modified_count
        assert reply.unintended_count == item.unintended_count
        assert reply.user_feedback == item.user_feedback
        assert reply.HasField("alignment_score") == item.HasField("alignment_score")
    assert stored[0].alignment_score == 0.42
    listed = sessions.ListValidations(
        pb.ListValidationsRequest(session_id=session.id), timeout=10
    )
    assert list(listed.validations) == stored


def test_feedback_is_listed_in_order_given(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    session = new_session(sessions)
    sent = [
        pb.UserFeedback(
            session_id=session.id,
            feedback_type=pb.FEEDBACK_TYPE_PARTIAL,
            comments="sky good, sea too dark",
            rating=3,
        ),
        pb.UserFeedback(session_id=session.id, feedback_type=pb.FEEDBACK_TYPE_REJECT),
        pb.UserFeedback(
            session_id=session.id, feedback_type=pb.FEEDBACK_TYPE_ACCEPT, rating=5
        ),
    ]
    stored = [
        sessions.CreateUserFeedback(
            pb.CreateUserFeedbackRequest(user_feedback=item), timeout=10
        )
        for item in sent
    ]
    for reply, item in zip(stored, sent, strict=True):
        assert reply.feedback_type == item.feedback_type
        assert reply.comments == item.comments
        assert reply.HasField("rating") == item.HasField("rating")
        assert reply.rating == item.rating
    listed = sessions.ListUserFeedback(
        pb.ListUserFeedbackRequest(session_id=session.id), timeout=10
    )
    assert list(listed.user_feedback) == stored


# Resume


def test_resume_session_returns_everything_stored(
    sessions: session_pb2_grpc.SessionServiceStub,
    states: state_pb2_grpc.StateServiceStub,
) -> None:
    session = new_session(sessions)
    fill_session(sessions, states, session.id)
    document = '{"current_stage":"refinement","n":9007199254740993,"x":3.0}'
    put = states.PutState(
        state_pb2.PutStateRequest(session_id=session.id, document_json=document),
        timeout=10,
    )
    resumed = sessions.ResumeSession(pb.ResumeSessionRequest(id=session.id), timeout=10)
    assert resumed.session == sessions.GetSession(
        pb.GetSessionRequest(id=session.id), timeout=10
    )
    assert list(resumed.prompts) == list(
        sessions.ListPrompts(pb.ListPromptsRequest(session_id=session.id)).prompts
    )
    assert list(resumed.entities) == list(
        sessions.ListEntities(pb.ListEntitiesRequest(session_id=session.id)).entities
    )
    assert list(resumed.validations) == list(
        sessions.ListValidations(
            pb.ListValidationsRequest(session_id=session.id)
        ).validations
    )
    assert list(resumed.user_feedback) == list(
        sessions.ListUserFeedback(
            pb.ListUserFeedbackRequest(session_id=session.id)
        ).user_feedback
    )
    assert len(resumed.prompts) == 2
    assert len(resumed.entities) == 2
    assert len(resumed.validations) == 2
    assert len(resumed.user_feedback) == 2
    assert resumed.state.version == 4
    assert resumed.state.document_json == document
    assert resumed.state.session_id == session.id
    assert resumed.state == put


def test_resume_session_without_state_has_version_0(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    session = new_session(sessions)
    resumed = sessions.ResumeSession(pb.ResumeSessionRequest(id=session.id), timeout=10)
    assert resumed.session == session
    assert resumed.state.version == 0
    assert resumed.state.document_json == "{}"
    assert resumed.state.session_id == session.id
    assert not resumed.state.HasField("update_time")
    assert list(resumed.prompts) == []


def test_resume_session_sees_writes_made_while_reading(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    session = new_session(sessions)
    stop = threading.Event()
    errors: list[BaseException] = []

    def add_prompts() -> None:
        iteration = 0
        while not stop.is_set():
            try:
                sessions.CreatePrompt(
                    pb.CreatePromptRequest(
                        prompt=pb.Prompt(session_id=session.id, iteration=iteration)
                    ),
                    timeout=10,
                )
            except grpc.RpcError as error:
                errors.append(error)
                return
            iteration += 1

    writer = threading.Thread(target=add_prompts)
    writer.start()
    try:
        for _ in range(20):
            resumed = sessions.ResumeSession(
                pb.ResumeSessionRequest(id=session.id), timeout=10
            )
            iterations = [prompt.iteration for prompt in resumed.prompts]
            assert iterations == list(range(len(iterations)))
    finally:
        stop.set()
        writer.join(30)
    assert errors == []


def test_resume_during_delete_sees_all_or_nothing(
    sessions: session_pb2_grpc.SessionServiceStub,
    states: state_pb2_grpc.StateServiceStub,
) -> None:
    torn: list[pb.ResumeSessionResponse] = []
    errors: list[grpc.RpcError] = []

    def resume_until_gone(session_id: str, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                reply = sessions.ResumeSession(
                    pb.ResumeSessionRequest(id=session_id), timeout=10
                )
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    errors.append(error)
                return
            counts = (
                len(reply.prompts),
                len(reply.entities),
                len(reply.validations),
                len(reply.user_feedback),
                reply.state.version,
            )
            if counts != (2, 2, 2, 2, 3):
                torn.append(reply)

    for _ in range(20):
        session = new_session(sessions)
        fill_session(sessions, states, session.id)
        stop = threading.Event()
        readers = [
            threading.Thread(target=resume_until_gone, args=(session.id, stop))
            for _ in range(3)
        ]
        for reader in readers:
            reader.start()
        sessions.DeleteSession(pb.DeleteSessionRequest(id=session.id), timeout=10)
        stop.set()
        for reader in readers:
            reader.join(30)
    assert errors == []
    assert torn == []


# Paged record lists


def list_records_pages(
    sessions: session_pb2_grpc.SessionServiceStub,
    method: str,
    session_id: str,
    page_size: int,
    page_token: str = "",
) -> tuple[list[Any], int]:
    """Walk every page of one record list; return the records and page count."""
    request_class = getattr(pb, f"{method}Request")
    field = {
        "ListPrompts": "prompts",
        "ListEntities": "entities",
        "ListValidations": "validations",
        "ListUserFeedback": "user_feedback",
    }[method]
    found: list[Any] = []
    pages = 0
    token = page_token
    while True:
        reply = getattr(sessions, method)(
            request_class(session_id=session_id, page_size=page_size, page_token=token),
            timeout=30,
        )
        pages += 1
        found.extend(getattr(reply, field))
        token = reply.next_page_token
        if not token:
            return found, pages
        assert pages < 1000, "listing does not end"


RECORD_LISTS = ["ListPrompts", "ListEntities", "ListValidations", "ListUserFeedback"]


@pytest.fixture(scope="module")
def seven_of_each(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> pb.Session:
    """A session with seven records of every kind, prompts added out of order."""
    session = new_session(sessions)
    for iteration in (6, 0, 5, 1, 4, 2, 3):
        sessions.CreatePrompt(
            pb.CreatePromptRequest(
                prompt=pb.Prompt(session_id=session.id, iteration=iteration)
            ),
            timeout=10,
        )
    sessions.BatchCreateEntities(
        pb.BatchCreateEntitiesRequest(
            session_id=session.id,
            entities=[pb.Entity(entity_id=f"e_{index}") for index in range(7)],
        ),
        timeout=10,
    )
    for attempt in range(7):
        sessions.CreateValidation(
            pb.CreateValidationRequest(
                validation=pb.Validation(session_id=session.id, attempt_number=attempt)
            ),
            timeout=10,
        )
        sessions.CreateUserFeedback(
            pb.CreateUserFeedbackRequest(
                user_feedback=pb.UserFeedback(
                    session_id=session.id,
                    feedback_type=pb.FEEDBACK_TYPE_ACCEPT,
                    rating=attempt % 5 + 1,
                )
            ),
            timeout=10,
        )
    return session


@pytest.mark.parametrize("method", RECORD_LISTS)
def test_record_list_walks_every_page_in_order(
    sessions: session_pb2_grpc.SessionServiceStub,
    seven_of_each: pb.Session,
    method: str,
) -> None:
    everything, pages = list_records_pages(sessions, method, seven_of_each.id, 0)
    assert pages == 1
    assert len(everything) == 7
    for page_size in (1, 3, 7):
        found, pages = list_records_pages(sessions, method, seven_of_each.id, page_size)
        assert found == everything
        assert pages == -(-7 // page_size)
    if method == "ListPrompts":
        assert [item.iteration for item in everything] == list(range(7))
    else:
        assert [item.id for item in everything] == sorted(
            item.id for item in everything
        )


@pytest.mark.parametrize("method", RECORD_LISTS)
def test_record_list_rejects_bad_token(
    sessions: session_pb2_grpc.SessionServiceStub,
    seven_of_each: pb.Session,
    method: str,
) -> None:
    request_class = getattr(pb, f"{method}Request")
    call = getattr(sessions, method)
    first = call(request_class(session_id=seven_of_each.id, page_size=2), timeout=10)
    token = first.next_page_token
    assert token
    other = new_session(sessions)
    other_kind = "ListEntities" if method != "ListEntities" else "ListPrompts"
    foreign = getattr(sessions, other_kind)(
        getattr(pb, f"{other_kind}Request")(session_id=seven_of_each.id, page_size=2),
        timeout=10,
    ).next_page_token
    flipped = token[:5] + ("A" if token[5] != "A" else "B") + token[6:]
    bad_requests = [
        request_class(session_id=seven_of_each.id, page_token=flipped),
        request_class(session_id=seven_of_each.id, page_token=token[:-4]),
        request_class(session_id=seven_of_each.id, page_token=token + "x"),
        request_class(session_id=seven_of_each.id, page_token="not a token"),
        request_class(session_id=seven_of_each.id, page_token=foreign),
        request_class(session_id=other.id, page_token=token),
        request_class(session_id=seven_of_each.id, page_size=-1),
        request_class(session_id=seven_of_each.id, page_size=1001),
    ]
    for bad in edited_child_tokens(token):
        bad_requests.append(request_class(session_id=seven_of_each.id, page_token=bad))
    for request in bad_requests:
        code = status_of(call, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, request


def edited_child_tokens(token: str) -> list[str]:
    """Return copies of a record list token with each JSON member changed."""
    payload = json.loads(base64.urlsafe_b64decode(token))
    edited = []
    for key in payload:
        for value in ("\x00", ["x"], [2**70], [1.5], {"a": 1}, "x" * 300):
            changed = dict(payload)
            changed[key] = value
            text = json.dumps(changed).encode()
            edited.append(base64.urlsafe_b64encode(text).decode())
    return edited


@pytest.fixture(scope="module")
def large_sessions(server: Daemon) -> Iterator[session_pb2_grpc.SessionServiceStub]:
    """A client that accepts messages as large as the daemon sends."""
    limit = Settings().max_message_bytes
    options = [("grpc.max_receive_message_length", limit)]
    with grpc.insecure_channel(server.address, options=options) as opened:
        yield session_pb2_grpc.SessionServiceStub(opened)


@pytest.mark.timeout(300)
def test_resume_session_ends_lists_before_size_limit(
    large_sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    sessions = large_sessions
    session = new_session(sessions)
    label = "é" * 8000
    for batch in range(8):
        sessions.BatchCreateEntities(
            pb.BatchCreateEntitiesRequest(
                session_id=session.id,
                entities=[
                    pb.Entity(entity_id=f"e_{batch}_{index}", label=label)
                    for index in range(100)
                ],
            ),
            timeout=60,
        )
    resumed = sessions.ResumeSession(pb.ResumeSessionRequest(id=session.id), timeout=60)
    assert 0 < len(resumed.entities) < 800
    assert resumed.entities_next_page_token
    assert resumed.prompts_next_page_token == ""
    rest, _ = list_records_pages(
        sessions,
        "ListEntities",
        session.id,
        0,
        page_token=resumed.entities_next_page_token,
    )
    ids = [entity.entity_id for entity in [*resumed.entities, *rest]]
    assert ids == [f"e_{batch}_{index}" for batch in range(8) for index in range(100)]
    everything, pages = list_records_pages(sessions, "ListEntities", session.id, 0)
    assert pages > 1
    assert [entity.entity_id for entity in everything] == ids


@pytest.mark.timeout(300)
def test_resume_session_pages_past_1000_prompts(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    session = new_session(sessions)
    futures = [
        sessions.CreatePrompt.future(
            pb.CreatePromptRequest(
                prompt=pb.Prompt(session_id=session.id, iteration=iteration)
            ),
            timeout=60,
        )
        for iteration in range(1001)
    ]
    for future in futures:
        future.result()
    resumed = sessions.ResumeSession(pb.ResumeSessionRequest(id=session.id), timeout=60)
    assert [prompt.iteration for prompt in resumed.prompts] == list(range(1000))
    assert resumed.prompts_next_page_token
    rest, pages = list_records_pages(
        sessions, "ListPrompts", session.id, 0, resumed.prompts_next_page_token
    )
    assert pages == 1
    assert [prompt.iteration for prompt in rest] == [1000]
