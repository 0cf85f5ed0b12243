"""Bad values: the API rejects them naming the field, and the database too.

Every bad value must come back as INVALID_ARGUMENT with a message that names
the field, and leave nothing stored. Behind the API, the database itself has
the specification's CHECK constraints and enforces foreign keys on every
connection, so rows written around the daemon are checked as well.
"""

from __future__ import annotations

import datetime
import math
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import peewee
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2

from editstore.server.database import open_database
from editstore.v1 import session_pb2 as pb
from editstore.v1 import session_pb2_grpc
from tests.daemon import Daemon

POSTGRES_ENV = "EDITSTORE_TEST_POSTGRES"
NAN = math.nan
INF = math.inf


@pytest.fixture(scope="module")
def sessions(server: Daemon) -> Iterator[session_pb2_grpc.SessionServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield session_pb2_grpc.SessionServiceStub(channel)


@pytest.fixture(scope="module")
def session(sessions: session_pb2_grpc.SessionServiceStub) -> pb.Session:
    """A session that receives only bad records, so it must stay empty."""
    return sessions.CreateSession(
        pb.CreateSessionRequest(
            session=pb.Session(image_path="photos/a.jpg", naive_prompt="brighten")
        ),
        timeout=10,
    )


def rejection(call: Callable[..., Any], request: Any) -> grpc.RpcError:
    """Send a request that must fail with INVALID_ARGUMENT and return the error."""
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    return error


def now_stamp() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.datetime.now(datetime.UTC))
    return stamp


# Each case: the field the message must name, and the bad value's fields.
BAD_SESSIONS: list[tuple[str, dict[str, Any]]] = [
    ("image_path", {"image_path": ""}),
    ("image_path", {"image_path": "   "}),
    ("image_path", {"image_path": "photo\x00.jpg"}),
    ("naive_prompt", {"naive_prompt": ""}),
    ("naive_prompt", {"naive_prompt": "\t\n"}),
    ("naive_prompt", {"naive_prompt": "make it\x00 pop"}),
    ("naive_prompt", {"naive_prompt": "x" * (64 * 1024 + 1)}),
    ("final_alignment_score", {"final_alignment_score": NAN}),
    ("final_alignment_score", {"final_alignment_score": INF}),
    ("final_alignment_score", {"final_alignment_score": -INF}),
    ("status", {"status": 4}),
    ("status", {"status": -1}),
]


@pytest.mark.parametrize(
    ("field", "values"), BAD_SESSIONS, ids=[f for f, _ in BAD_SESSIONS]
)
def test_bad_session_is_rejected_and_not_stored(
    sessions: session_pb2_grpc.SessionServiceStub, field: str, values: dict[str, Any]
) -> None:
    start = now_stamp()
    fields: dict[str, Any] = {"image_path": "photos/a.jpg", "naive_prompt": "sky"}
    fields.update(values)
    request = pb.CreateSessionRequest(session=pb.Session(**fields))
    error = rejection(sessions.CreateSession, request)
    assert field in error.details()
    listed = sessions.ListSessions(
        pb.ListSessionsRequest(create_time_after=start), timeout=10
    )
    assert list(listed.sessions) == []


@pytest.mark.parametrize(
    "request_id",
    ["abc", "12345", "g" * 32, "00000000-0000-0000-0000-00000000000", "\x00"],
)
def test_request_id_that_is_not_uuid_is_rejected(
    sessions: session_pb2_grpc.SessionServiceStub,
    session: pb.Session,
    request_id: str,
) -> None:
    start = now_stamp()
    requests: list[tuple[Callable[..., Any], Any]] = [
        (
            sessions.CreateSession,
            pb.CreateSessionRequest(
                session=pb.Session(image_path="a.jpg", naive_prompt="sky"),
                request_id=request_id,
            ),
        ),
        (
            sessions.CreatePrompt,
            pb.CreatePromptRequest(
                prompt=pb.Prompt(session_id=session.id), request_id=request_id
            ),
        ),
        (
            sessions.BatchCreateEntities,
            pb.BatchCreateEntitiesRequest(
                session_id=session.id,
                entities=[pb.Entity(entity_id="sky_0")],
                request_id=request_id,
            ),
        ),
        (
            sessions.CreateValidation,
            pb.CreateValidationRequest(
                validation=pb.Validation(session_id=session.id), request_id=request_id
            ),
        ),
        (
            sessions.CreateUserFeedback,
            pb.CreateUserFeedbackRequest(
                user_feedback=pb.UserFeedback(
                    session_id=session.id, feedback_type=pb.FEEDBACK_TYPE_ACCEPT
                ),
                request_id=request_id,
            ),
        ),
    ]
    for call, request in requests:
        assert "request_id" in rejection(call, request).details()
    listed = sessions.ListSessions(
        pb.ListSessionsRequest(create_time_after=start), timeout=10
    )
    assert list(listed.sessions) == []
    assert_session_empty(sessions, session.id)


def assert_session_empty(
    sessions: session_pb2_grpc.SessionServiceStub, session_id: str
) -> None:
    resumed = sessions.ResumeSession(pb.ResumeSessionRequest(id=session_id), timeout=10)
    assert list(resumed.prompts) == []
    assert list(resumed.entities) == []
    assert list(resumed.validations) == []
    assert list(resumed.user_feedback) == []


BAD_UPDATES: list[tuple[str, dict[str, Any], str]] = [
    ("image_path", {"image_path": ""}, "image_path"),
    ("naive_prompt", {"naive_prompt": " "}, "naive_prompt"),
    ("naive_prompt", {"naive_prompt": "a\x00b"}, "naive_prompt"),
    ("final_alignment_score", {"final_alignment_score": NAN}, "final_alignment_score"),
    ("final_alignment_score", {"final_alignment_score": INF}, "final_alignment_score"),
    ("status", {"status": 17}, "status"),
    ("status", {}, "status"),
]


@pytest.mark.parametrize(
    ("field", "values", "path"), BAD_UPDATES, ids=[f for f, _, _ in BAD_UPDATES]
)
def test_bad_update_is_rejected_and_not_applied(
    sessions: session_pb2_grpc.SessionServiceStub,
    session: pb.Session,
    field: str,
    values: dict[str, Any],
    path: str,
) -> None:
    request = pb.UpdateSessionRequest(
        session=pb.Session(id=session.id, **values),
        update_mask=field_mask_pb2.FieldMask(paths=[path]),
    )
    assert field in rejection(sessions.UpdateSession, request).details()
    fetched = sessions.GetSession(pb.GetSessionRequest(id=session.id), timeout=10)
    assert fetched == session


BAD_PROMPTS: list[tuple[str, dict[str, Any]]] = [
    ("iteration", {"iteration": -1}),
    ("iteration", {"iteration": -(2**31)}),
    ("quality_score", {"quality_score": NAN}),
    ("quality_score", {"quality_score": INF}),
    ("quality_score", {"quality_score": -INF}),
    ("positive_prompt", {"positive_prompt": "sky\x00"}),
    ("negative_prompt", {"negative_prompt": "\x00"}),
    ("negative_prompt", {"negative_prompt": "n" * (64 * 1024 + 1)}),
]


@pytest.mark.parametrize(
    ("field", "values"), BAD_PROMPTS, ids=[f for f, _ in BAD_PROMPTS]
)
def test_bad_prompt_is_rejected_and_not_stored(
    sessions: session_pb2_grpc.SessionServiceStub,
    session: pb.Session,
    field: str,
    values: dict[str, Any],
) -> None:
    request = pb.CreatePromptRequest(prompt=pb.Prompt(session_id=session.id, **values))
    assert field in rejection(sessions.CreatePrompt, request).details()
    assert_session_empty(sessions, session.id)


def box(**values: float) -> pb.BoundingBox:
    fields = {"x": 1.0, "y": 2.0, "width": 3.0, "height": 4.0}
    fields.update(values)
    return pb.BoundingBox(**fields)


BAD_ENTITIES: list[tuple[str, dict[str, Any]]] = [
    ("entity_id", {"entity_id": ""}),
    ("entity_id", {"entity_id": "sky\x00"}),
    ("entity_id", {"entity_id": "e" * 257}),
    ("confidence", {"confidence": -0.01}),
    ("confidence", {"confidence": 1.0000001}),
    ("confidence", {"confidence": NAN}),
    ("confidence", {"confidence": INF}),
    ("area_percent", {"area_percent": -1}),
    ("area_percent", {"area_percent": 100.5}),
    ("area_percent", {"area_percent": NAN}),
    ("area_percent", {"area_percent": -INF}),
    ("color_hex", {"color_hex": "red"}),
    ("color_hex", {"color_hex": "#12345"}),
    ("color_hex", {"color_hex": "#1234567"}),
    ("color_hex", {"color_hex": "#GGGGGG"}),
    ("color_hex", {"color_hex": "123456"}),
    ("color_hex", {"color_hex": "#123456\n"}),
    ("bbox.x", {"bbox": box(x=NAN)}),
    ("bbox.y", {"bbox": box(y=INF)}),
    ("bbox.width", {"bbox": box(width=-INF)}),
    ("bbox.height", {"bbox": box(height=NAN)}),
    ("bbox", {"bbox": box(width=-1)}),
    ("bbox", {"bbox": box(height=-0.5)}),
    ("label", {"label": "sky\x00"}),
    ("mask_path", {"mask_path": "masks/\x00.png"}),
]


@pytest.mark.parametrize(
    ("field", "values"), BAD_ENTITIES, ids=[f for f, _ in BAD_ENTITIES]
)
def test_bad_entity_is_rejected_and_none_stored(
    sessions: session_pb2_grpc.SessionServiceStub,
    session: pb.Session,
    field: str,
    values: dict[str, Any],
) -> None:
    fields: dict[str, Any] = {"entity_id": "bad_0"}
    fields.update(values)
    good = pb.Entity(entity_id="good_0", label="sky", confidence=0.5)
    request = pb.BatchCreateEntitiesRequest(
        session_id=session.id, entities=[good, pb.Entity(**fields)]
    )
    assert (
        f"entities[1].{field}"
        in rejection(sessions.BatchCreateEntities, request).details()
    )
    assert_session_empty(sessions, session.id)


def test_entity_values_at_their_limits_are_accepted(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    target = sessions.CreateSession(
        pb.CreateSessionRequest(
            session=pb.Session(image_path="photos/b.jpg", naive_prompt="limits")
        ),
        timeout=10,
    )
    entities = [
        pb.Entity(
            entity_id="low", confidence=0.0, area_percent=0.0, color_hex="#000000"
        ),
        pb.Entity(
            entity_id="high", confidence=1.0, area_percent=100.0, color_hex="#ffFFff"
        ),
        pb.Entity(entity_id="flat", bbox=box(x=-5, y=-5, width=0, height=0)),
    ]
    reply = sessions.BatchCreateEntities(
        pb.BatchCreateEntitiesRequest(session_id=target.id, entities=entities),
        timeout=10,
    )
    assert [entity.entity_id for entity in reply.entities] == ["low", "high", "flat"]
    assert reply.entities[1].color_hex == "#ffFFff"
    assert reply.entities[2].bbox == box(x=-5, y=-5, width=0, height=0)


BAD_VALIDATIONS: list[tuple[str, dict[str, Any]]] = [
    ("attempt_number", {"attempt_number": -1}),
    ("preserved_count", {"preserved_count": -1}),
    ("modified_count", {"modified_count": -7}),
    ("unintended_count", {"unintended_count": -(2**31)}),
    ("alignment_score", {"alignment_score": NAN}),
    ("alignment_score", {"alignment_score": INF}),
    ("user_feedback", {"user_feedback": "ok\x00"}),
]


@pytest.mark.parametrize(
    ("field", "values"), BAD_VALIDATIONS, ids=[f for f, _ in BAD_VALIDATIONS]
)
def test_bad_validation_is_rejected_and_not_stored(
    sessions: session_pb2_grpc.SessionServiceStub,
    session: pb.Session,
    field: str,
    values: dict[str, Any],
) -> None:
    request = pb.CreateValidationRequest(
        validation=pb.Validation(session_id=session.id, **values)
    )
    assert field in rejection(sessions.CreateValidation, request).details()
    assert_session_empty(sessions, session.id)


BAD_FEEDBACK: list[tuple[str, dict[str, Any]]] = [
    ("rating", {"rating": 0}),
    ("rating", {"rating": 6}),
    ("rating", {"rating": -1}),
    ("rating", {"rating": 2**31 - 1}),
    ("feedback_type", {"feedback_type": pb.FEEDBACK_TYPE_UNSPECIFIED}),
    ("feedback_type", {"feedback_type": 4}),
    ("feedback_type", {"feedback_type": -3}),
    ("comments", {"comments": "\x00"}),
]


@pytest.mark.parametrize(
    ("field", "values"), BAD_FEEDBACK, ids=[f for f, _ in BAD_FEEDBACK]
)
def test_bad_feedback_is_rejected_and_not_stored(
    sessions: session_pb2_grpc.SessionServiceStub,
    session: pb.Session,
    field: str,
    values: dict[str, Any],
) -> None:
    fields: dict[str, Any] = {"feedback_type": pb.FEEDBACK_TYPE_ACCEPT}
    fields.update(values)
    request = pb.CreateUserFeedbackRequest(
        user_feedback=pb.UserFeedback(session_id=session.id, **fields)
    )
    error = rejection(sessions.CreateUserFeedback, request)
    assert field in error.details()
    if field == "rating" and values["rating"] == 0:
        assert "between 1 and 5" in error.details()
    assert_session_empty(sessions, session.id)


@pytest.mark.parametrize("session_id", ["", "s" * 257, "tab\there", "nul\x00"])
def test_bad_session_id_is_rejected(
    sessions: session_pb2_grpc.SessionServiceStub, session_id: str
) -> None:
    requests: list[tuple[Callable[..., Any], Any]] = [
        (sessions.GetSession, pb.GetSessionRequest(id=session_id)),
        (sessions.DeleteSession, pb.DeleteSessionRequest(id=session_id)),
        (sessions.ResumeSession, pb.ResumeSessionRequest(id=session_id)),
        (sessions.ListPrompts, pb.ListPromptsRequest(session_id=session_id)),
        (sessions.ListEntities, pb.ListEntitiesRequest(session_id=session_id)),
        (sessions.ListValidations, pb.ListValidationsRequest(session_id=session_id)),
        (sessions.ListUserFeedback, pb.ListUserFeedbackRequest(session_id=session_id)),
        (
            sessions.CreatePrompt,
            pb.CreatePromptRequest(prompt=pb.Prompt(session_id=session_id)),
        ),
    ]
    for call, request in requests:
        details = rejection(call, request).details()
        assert "id" in details


# The database's own rules

CHECK_VIOLATIONS = [
    (
        "INSERT INTO sessions (id, image_path, naive_prompt, status) "
        "VALUES ('check-1', 'a.jpg', 'sky', 'paused')"
    ),
    (
        "INSERT INTO sessions (id, image_path, naive_prompt, status) "
        "VALUES ('check-2', 'a.jpg', 'sky', 'IN_PROGRESS')"
    ),
    "INSERT INTO user_feedback (session_id, feedback_type) VALUES ('{id}', 'maybe')",
    "INSERT INTO user_feedback (session_id, feedback_type) VALUES ('{id}', '')",
    "INSERT INTO user_feedback (session_id, rating) VALUES ('{id}', 0)",
    "INSERT INTO user_feedback (session_id, rating) VALUES ('{id}', 6)",
    "INSERT INTO user_feedback (session_id, rating) VALUES ('{id}', -1)",
    "INSERT INTO sessions (id, naive_prompt) VALUES ('check-3', 'no image path')",
    "INSERT INTO sessions (id, image_path) VALUES ('check-4', 'no prompt')",
]
CHECK_ACCEPTED = [
    (
        "INSERT INTO sessions (id, image_path, naive_prompt, status) "
        "VALUES ('check-5', 'a.jpg', 'sky', 'failed')"
    ),
    (
        "INSERT INTO sessions (id, image_path, naive_prompt, status) "
        "VALUES ('check-6', 'a.jpg', 'sky', NULL)"
    ),
    (
        "INSERT INTO user_feedback (session_id, feedback_type, rating) "
        "VALUES ('{id}', 'partial', 5)"
    ),
    "INSERT INTO user_feedback (session_id, feedback_type, rating) "
    "VALUES ('{id}', NULL, NULL)",
]


def sqlite_file(server: Daemon) -> str | None:
    if server.database_url.startswith("sqlite:///"):
        return server.database_url.removeprefix("sqlite:///")
    return None


def execute_directly(
    server: Daemon, statement: str, foreign_keys: bool = False
) -> Exception | None:
    """Run one statement around the daemon, roll it back and return its error.

    A bare sqlite3 connection checks no foreign keys unless ``foreign_keys``
    turns them on; PostgreSQL always checks them.
    """
    path = sqlite_file(server)
    if path is not None:
        connection = sqlite3.connect(path, timeout=10, isolation_level=None)
        try:
            if foreign_keys:
                connection.execute("PRAGMA foreign_keys = ON")
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute(statement)
            except sqlite3.Error as error:
                return error
            finally:
                connection.execute("ROLLBACK")
        finally:
            connection.close()
        return None
    import psycopg2

    pg_connection = psycopg2.connect(server.database_url)
    try:
        with pg_connection.cursor() as cursor:
            try:
                cursor.execute(statement)
            except psycopg2.Error as error:
                return error
        return None
    finally:
        pg_connection.rollback()
        pg_connection.close()


@pytest.mark.parametrize("statement", CHECK_VIOLATIONS)
def test_database_rejects_rows_breaking_its_checks(
    server: Daemon, session: pb.Session, statement: str
) -> None:
    error = execute_directly(server, statement.format(id=session.id))
    assert error is not None
    text = str(error).lower()
    assert "check" in text or "not null" in text or "null value" in text, text


@pytest.mark.parametrize("statement", CHECK_ACCEPTED)
def test_database_accepts_rows_within_its_checks(
    server: Daemon, session: pb.Session, statement: str
) -> None:
    assert execute_directly(server, statement.format(id=session.id)) is None


def test_database_rejects_record_of_missing_session(server: Daemon) -> None:
    missing = str(uuid.uuid4())
    for table in ("prompts", "entities", "validations", "user_feedback"):
        statement = f"INSERT INTO {table} (session_id) VALUES ('{missing}')"
        error = execute_directly(server, statement, foreign_keys=True)
        assert error is not None, table
        assert "foreign key" in str(error).lower(), table


def test_daemon_connections_enforce_foreign_keys(server: Daemon) -> None:
    database = open_database(server.database_url)
    results: list[Any] = []

    def check() -> None:
        try:
            if isinstance(database, peewee.SqliteDatabase):
                results.append(database.execute_sql("PRAGMA foreign_keys").fetchone())
            with pytest.raises(peewee.IntegrityError):
                with database.atomic():
                    database.execute_sql(
                        "INSERT INTO prompts (session_id, iteration) "
                        f"VALUES ({database.param}, 0)",
                        (str(uuid.uuid4()),),
                    )
            results.append("rejected")
        except BaseException as error:  # reported by the assertion below
            results.append(error)
        finally:
            database.close()

    threads = [threading.Thread(target=check) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    check()
    expected = 4 if isinstance(database, peewee.PostgresqlDatabase) else 8
    assert len(results) == expected, results
    for result in results:
        assert result in ((1,), "rejected"), result


def test_record_of_missing_session_is_not_found(
    sessions: session_pb2_grpc.SessionServiceStub,
) -> None:
    missing = str(uuid.uuid4())
    request = pb.CreatePromptRequest(prompt=pb.Prompt(session_id=missing))
    with pytest.raises(grpc.RpcError) as caught:
        sessions.CreatePrompt(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert missing in caught.value.details()
