"""Schema migrations, run as an operator runs them: ``editstore migrate``.

A database made by hand from the specification's SQL, with rows in every
table, upgrades without a row changing and is then served. A migrated schema
matches the models. ``editstore serve`` refuses a database that is behind or
ahead of the code. Every query the API makes uses an index.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import pathlib
import re
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import peewee
import pytest
from playhouse.schema_diff import diff_models

from editstore.server import records, states
from editstore.server.database import open_database
from editstore.server.models import ALL_MODELS
from editstore.v1 import session_pb2 as pb
from editstore.v1 import session_pb2_grpc
from tests.daemon import Daemon, free_port

SPEC = pathlib.Path(__file__).resolve().parents[2] / "shared" / "spec"
SPEC_FILE = SPEC / "storage-layer.md"
EDITSTORE = pathlib.Path(sys.executable).parent / "editstore"
SPEC_TABLES = ("sessions", "prompts", "entities", "validations", "user_feedback")
MIGRATIONS = (
    "0001_specification_tables",
    "0002_lookup_indexes",
    "0003_state_documents_and_request_ids",
    "0004_state_versions_hold_patches",
)


def specification_sql() -> str:
    """Return the SQL block of the specification, exactly as written."""
    if not SPEC_FILE.is_file():
        pytest.skip(f"specification not found at {SPEC_FILE}")
    text = SPEC_FILE.read_text(encoding="utf-8")
    match = re.search(r"```sql\n(.*?)```", text, re.DOTALL)
    assert match is not None, f"no ```sql block in {SPEC_FILE}"
    sql = match.group(1)
    assert sql.count("CREATE TABLE") == 5
    return sql


def run_editstore(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EDITSTORE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "EDITSTORE_LOG_LEVEL": "info"},
    )


# Rows of a database made by hand: NULLs where the specification allows
# them, and times written by CURRENT_TIMESTAMP as well as by hand.
HAND_ROWS = """
INSERT INTO sessions (id, image_path, naive_prompt, status, final_alignment_score)
VALUES ('s-full', '/photos/beach.jpg', 'make the sky dramatic', 'in_progress', 0.5);
INSERT INTO sessions (id, created_at, image_path, naive_prompt, status)
VALUES ('s-done', '2024-01-02 03:04:05', 'photos/é 1.png', 'remove the 🐈',
    'completed');
INSERT INTO sessions (id, image_path, naive_prompt)
VALUES ('s-nulls', 'a.jpg', 'brighten');
INSERT INTO sessions (id, created_at, image_path, naive_prompt, status)
VALUES ('s-failed', '2023-06-30 23:59:59', 'b.jpg', 'sharpen', 'failed');
INSERT INTO sessions (id, created_at, image_path, naive_prompt)
VALUES ('s-untimed-1', NULL, 'c.jpg', 'crop'), ('s-untimed-2', NULL, 'd.jpg', 'blur');

INSERT INTO prompts (session_id, iteration, positive_prompt, negative_prompt,
    quality_score)
VALUES ('s-full', 0, 'dramatic storm clouds', 'blurry', 0.25);
INSERT INTO prompts (session_id, iteration, positive_prompt, created_at)
VALUES ('s-full', 1, 'dramatic storm clouds, golden light', '2024-05-06 07:08:09');
INSERT INTO prompts (session_id) VALUES ('s-nulls');
INSERT INTO prompts (session_id, iteration) VALUES (NULL, 7);

INSERT INTO entities (session_id, entity_id, label, confidence, bbox_json,
    mask_path, color_hex, area_percent)
VALUES ('s-full', 'sky_0', 'sky', 0.97, '[0, 0, 640, 180]', 'masks/sky_0.png',
    '#87CEEB', 37.5);
INSERT INTO entities (session_id, entity_id, bbox_json)
VALUES ('s-full', 'sea_0', '{"x": 1, "y": 2, "width": 3, "height": 4}');
INSERT INTO entities (session_id, entity_id, bbox_json)
VALUES ('s-full', 'odd_0', 'not json');
INSERT INTO entities (session_id) VALUES ('s-nulls');

INSERT INTO validations (session_id, attempt_number, alignment_score,
    preserved_count, modified_count, unintended_count, user_feedback)
VALUES ('s-full', 0, 0.8, 5, 1, 0, 'the sea changed too');
INSERT INTO validations (session_id) VALUES ('s-nulls');

INSERT INTO user_feedback (session_id, feedback_type, comments, rating)
VALUES ('s-done', 'accept', 'great', 5);
INSERT INTO user_feedback (session_id, feedback_type, rating)
VALUES ('s-full', 'partial', 1);
INSERT INTO user_feedback (session_id) VALUES ('s-nulls');
"""


def make_hand_database(path: pathlib.Path) -> None:
    """Create a database from the specification's SQL and fill every table."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.executescript(specification_sql())
        connection.executescript(HAND_ROWS)
        connection.commit()


def snapshot(path: pathlib.Path) -> dict[str, list[tuple[Any, ...]]]:
    """Return every row of the five tables, with the storage type of each value."""
    rows = {}
    with contextlib.closing(sqlite3.connect(path)) as connection:
        for table in SPEC_TABLES:
            columns = [
                row[1] for row in connection.execute(f"PRAGMA table_info({table})")
            ]
            typed = ", ".join(f"{name}, typeof({name})" for name in columns)
            rows[table] = connection.execute(
                f"SELECT rowid, {typed} FROM {table} ORDER BY rowid"
            ).fetchall()
    return rows


def sqlite_schema(path: pathlib.Path) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return connection.execute(
            "SELECT type, name, sql FROM sqlite_master ORDER BY name"
        ).fetchall()


def applied_migrations(path: pathlib.Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return [
            row[0]
            for row in connection.execute(
                "SELECT name FROM schema_migration ORDER BY id"
            )
        ]


def stamp_of(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.UTC)


@pytest.fixture
def hand_database(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "by-hand.db"
    make_hand_database(path)
    return path


@pytest.mark.timeout(180)
def test_migrate_keeps_every_row_of_hand_made_database(
    hand_database: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    before = snapshot(hand_database)
    assert all(before[table] for table in SPEC_TABLES)
    result = run_editstore("migrate", "--database", f"sqlite:///{hand_database}")
    assert result.returncode == 0, result.stderr
    assert "from schema version 0 to 4" in result.stdout
    assert snapshot(hand_database) == before
    assert applied_migrations(hand_database) == list(MIGRATIONS)
    with contextlib.closing(sqlite3.connect(hand_database)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []


@pytest.mark.timeout(180)
def test_hand_made_database_is_served_after_migrate(
    hand_database: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    result = run_editstore("migrate", "--database", f"sqlite:///{hand_database}")
    assert result.returncode == 0, result.stderr
    process = Daemon(
        f"sqlite:///{hand_database}", port=free_port(), log_path=tmp_path / "log"
    )
    process.start()
    try:
        with grpc.insecure_channel(process.address) as channel:
            check_hand_rows(session_pb2_grpc.SessionServiceStub(channel))
            check_hand_database_takes_writes(
                session_pb2_grpc.SessionServiceStub(channel), hand_database
            )
    finally:
        process.stop()


def test_hand_made_times_in_other_forms_are_read(
    hand_database: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    # SQLite keeps any value in a TIMESTAMP column: seconds since 1970, ISO
    # 8601 with an offset, or text that is no time at all.
    with contextlib.closing(sqlite3.connect(hand_database)) as connection:
        connection.executescript(
            """
            INSERT INTO sessions (id, created_at, image_path, naive_prompt)
            VALUES ('s-epoch', 1704164645, 'e.jpg', 'warm it up'),
                ('s-offset', '2024-01-02T05:04:05+02:00', 'f.jpg', 'cool it'),
                ('s-garbled', 'yesterday', 'g.jpg', 'crop it');
            """
        )
    result = run_editstore("migrate", "--database", f"sqlite:///{hand_database}")
    assert result.returncode == 0, result.stderr
    process = Daemon(
        f"sqlite:///{hand_database}", port=free_port(), log_path=tmp_path / "log"
    )
    process.start()
    try:
        with grpc.insecure_channel(process.address) as channel:
            stub = session_pb2_grpc.SessionServiceStub(channel)
            epoch, offset, garbled = (
                stub.GetSession(pb.GetSessionRequest(id=session_id), timeout=10)
                for session_id in ("s-epoch", "s-offset", "s-garbled")
            )
            resumed = stub.ResumeSession(
                pb.ResumeSessionRequest(id="s-garbled"), timeout=10
            )
    finally:
        process.stop()

    expected = stamp_of("2024-01-02 03:04:05")
    assert epoch.create_time.ToDatetime(tzinfo=datetime.UTC) == expected
    assert offset.create_time.ToDatetime(tzinfo=datetime.UTC) == expected
    assert not garbled.HasField("create_time")
    assert garbled.naive_prompt == "crop it"
    assert resumed.session.id == "s-garbled"
    assert "'yesterday'" in process.log_path.read_text()


# created_at values SQLite keeps that the daemon never writes: numbers,
# offsets, text that is no time, a blob.
ODD_TIMES: list[object] = [
    -1000000000000000,
    0,
    1,
    1700000000,
    1700000000.5,
    9999999999999,
    1.0e20,
    "",
    "0001-01-01 00:00:00+05:00",
    "2024-01-02 03:04:05.123456789",
    "2024-01-02T03:04:05+02:00",
    "2024-01-02T03:04:05Z",
    "2024-13-45 99:99:99",
    "9999-12-31T23:59:59-05:00",
    "garbage",
    b"\x00\x01",
]


def test_hand_made_odd_times_listed_and_read(
    hand_database: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    odd_ids = [f"s-odd-{index:02d}" for index in range(len(ODD_TIMES))]
    with contextlib.closing(sqlite3.connect(hand_database)) as connection:
        connection.executemany(
            "INSERT INTO sessions (id, created_at, image_path, naive_prompt) "
            "VALUES (?, ?, 'odd.jpg', 'odd time')",
            list(zip(odd_ids, ODD_TIMES, strict=True)),
        )
        connection.commit()
        every_id = {row[0] for row in connection.execute("SELECT id FROM sessions")}
    result = run_editstore("migrate", "--database", f"sqlite:///{hand_database}")
    assert result.returncode == 0, result.stderr
    process = Daemon(
        f"sqlite:///{hand_database}", port=free_port(), log_path=tmp_path / "log"
    )
    process.start()
    listed: dict[int, list[str]] = {}
    try:
        with grpc.insecure_channel(process.address) as channel:
            stub = session_pb2_grpc.SessionServiceStub(channel)
            for session_id in odd_ids:
                stub.GetSession(pb.GetSessionRequest(id=session_id), timeout=10)
                stub.ResumeSession(pb.ResumeSessionRequest(id=session_id), timeout=10)
            for page_size in (1, 2, 3, 0):
                token = ""
                listed[page_size] = []
                while True:
                    page = stub.ListSessions(
                        pb.ListSessionsRequest(page_size=page_size, page_token=token),
                        timeout=10,
                    )
                    listed[page_size] += [session.id for session in page.sessions]
                    token = page.next_page_token
                    if not token:
                        break
    finally:
        process.stop()

    for page_size, ids in listed.items():
        assert sorted(ids) == sorted(every_id), page_size
    assert "Traceback" not in process.log_path.read_text()


def check_hand_rows(stub: session_pb2_grpc.SessionServiceStub) -> None:
    """Read the rows of HAND_ROWS through the API and compare them."""
    full = stub.ResumeSession(pb.ResumeSessionRequest(id="s-full"), timeout=10)
    assert full.session.image_path == "/photos/beach.jpg"
    assert full.session.naive_prompt == "make the sky dramatic"
    assert full.session.status == pb.SESSION_STATUS_IN_PROGRESS
    assert full.session.final_alignment_score == 0.5
    now = datetime.datetime.now(datetime.UTC)
    created = full.session.create_time.ToDatetime(tzinfo=datetime.UTC)
    assert abs(created - now) < datetime.timedelta(minutes=5)
    assert [prompt.iteration for prompt in full.prompts] == [0, 1]
    assert full.prompts[0].positive_prompt == "dramatic storm clouds"
    assert full.prompts[0].negative_prompt == "blurry"
    assert full.prompts[0].quality_score == 0.25
    assert not full.prompts[1].HasField("quality_score")
    assert full.prompts[1].create_time.ToDatetime(tzinfo=datetime.UTC) == stamp_of(
        "2024-05-06 07:08:09"
    )
    sky, sea, odd = full.entities
    assert sky.entity_id == "sky_0"
    assert sky.label == "sky"
    assert sky.confidence == 0.97
    assert sky.bbox == pb.BoundingBox(x=0, y=0, width=640, height=180)
    assert sky.mask_path == "masks/sky_0.png"
    assert sky.color_hex == "#87CEEB"
    assert sky.area_percent == 37.5
    assert sea.bbox == pb.BoundingBox(x=1, y=2, width=3, height=4)
    assert not sea.HasField("confidence")
    assert not odd.HasField("bbox")
    (validation,) = full.validations
    assert validation.alignment_score == 0.8
    assert validation.preserved_count == 5
    assert validation.modified_count == 1
    assert validation.user_feedback == "the sea changed too"
    (partial,) = full.user_feedback
    assert partial.feedback_type == pb.FEEDBACK_TYPE_PARTIAL
    assert partial.rating == 1
    assert full.state.version == 0

    done = stub.ResumeSession(pb.ResumeSessionRequest(id="s-done"), timeout=10)
    assert done.session.image_path == "photos/é 1.png"
    assert done.session.naive_prompt == "remove the 🐈"
    assert done.session.status == pb.SESSION_STATUS_COMPLETED
    assert done.session.create_time.ToDatetime(tzinfo=datetime.UTC) == stamp_of(
        "2024-01-02 03:04:05"
    )
    assert not done.session.HasField("final_alignment_score")
    assert done.user_feedback[0].comments == "great"

    empty = stub.ResumeSession(pb.ResumeSessionRequest(id="s-nulls"), timeout=10)
    assert empty.session.status == pb.SESSION_STATUS_UNSPECIFIED
    (prompt,) = empty.prompts
    assert prompt.iteration == 0
    assert not prompt.HasField("quality_score")
    (entity,) = empty.entities
    assert entity.entity_id == ""
    assert not entity.HasField("bbox")
    (nulls,) = empty.validations
    assert nulls.preserved_count == 0
    assert not nulls.HasField("alignment_score")
    (feedback,) = empty.user_feedback
    assert feedback.feedback_type == pb.FEEDBACK_TYPE_UNSPECIFIED
    assert not feedback.HasField("rating")

    untimed = stub.GetSession(pb.GetSessionRequest(id="s-untimed-1"), timeout=10)
    assert not untimed.HasField("create_time")
    expected = ["s-done", "s-failed", "s-full", "s-nulls"]
    expected += ["s-untimed-1", "s-untimed-2"]
    for page_size in (1, 2, 4, 5, 6, 7):
        found: list[str] = []
        token = ""
        while True:
            reply = stub.ListSessions(
                pb.ListSessionsRequest(page_size=page_size, page_token=token),
                timeout=10,
            )
            found.extend(item.id for item in reply.sessions)
            token = reply.next_page_token
            if not token:
                break
        assert sorted(found) == expected, page_size
        assert found.index("s-done") < found.index("s-failed")
        assert found[-2:] == ["s-untimed-2", "s-untimed-1"], page_size
    completed = stub.ListSessions(
        pb.ListSessionsRequest(status=pb.SESSION_STATUS_COMPLETED), timeout=10
    )
    assert [item.id for item in completed.sessions] == ["s-done"]


def check_hand_database_takes_writes(
    stub: session_pb2_grpc.SessionServiceStub, path: pathlib.Path
) -> None:
    """Add and delete through the API on tables without ON DELETE CASCADE."""
    added = stub.CreatePrompt(
        pb.CreatePromptRequest(prompt=pb.Prompt(session_id="s-full", iteration=2)),
        timeout=10,
    )
    assert added.id > 0
    duplicate = pb.CreatePromptRequest(
        prompt=pb.Prompt(session_id="s-full", iteration=1)
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreatePrompt(duplicate, timeout=10)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    reply = stub.DeleteSession(pb.DeleteSessionRequest(id="s-full"), timeout=10)
    assert reply.deleted_records == 3 + 3 + 1 + 1
    with contextlib.closing(sqlite3.connect(path)) as connection:
        for table in SPEC_TABLES:
            column = "id" if table == "sessions" else "session_id"
            count = connection.execute(
                f"SELECT COUNT(*) FROM {table} WHERE {column} = 's-full'"
            ).fetchone()[0]
            assert count == 0, table
        orphans = connection.execute(
            "SELECT COUNT(*) FROM prompts WHERE session_id IS NULL"
        ).fetchone()[0]
        assert orphans == 1


@pytest.mark.timeout(180)
def test_migrate_twice_changes_nothing(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "twice.db"
    first = run_editstore("migrate", "--database", f"sqlite:///{path}")
    assert first.returncode == 0, first.stderr
    assert "from schema version 0 to 4" in first.stdout
    schema = sqlite_schema(path)
    history = applied_migrations(path)
    second = run_editstore("migrate", "--database", f"sqlite:///{path}")
    assert second.returncode == 0, second.stderr
    assert "schema version 4 is current; nothing to apply" in second.stdout
    assert sqlite_schema(path) == schema
    assert applied_migrations(path) == history


def test_migrate_on_postgres_twice_changes_nothing(postgres_url: str) -> None:
    first = run_editstore("migrate", "--database", postgres_url)
    assert first.returncode == 0, first.stderr
    second = run_editstore("migrate", "--database", postgres_url)
    assert second.returncode == 0, second.stderr
    assert "nothing to apply" in second.stdout


def migrated_database(database_url: str) -> peewee.Database:
    result = run_editstore("migrate", "--database", database_url)
    assert result.returncode == 0, result.stderr
    return open_database(database_url)


@pytest.mark.timeout(180)
def test_migrated_schema_matches_models(database_url: str) -> None:
    database = migrated_database(database_url)
    try:
        diff = diff_models(database, list(ALL_MODELS))
        assert not diff, str(diff)
    finally:
        database.close()


@pytest.mark.timeout(180)
def test_migrated_hand_made_schema_matches_models(hand_database: pathlib.Path) -> None:
    database = migrated_database(f"sqlite:///{hand_database}")
    try:
        diff = diff_models(database, list(ALL_MODELS))
        assert not diff, str(diff)
    finally:
        database.close()


def serve_once(database_url: str, tmp_path: pathlib.Path) -> subprocess.Popen[str]:
    """Start ``editstore serve`` without --migrate; the caller waits for it."""
    return subprocess.Popen(
        [
            str(EDITSTORE),
            "serve",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--database",
            database_url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def refused_output(database_url: str, tmp_path: pathlib.Path) -> str:
    process = serve_once(database_url, tmp_path)
    try:
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode not in (0, None), output
    return output


@pytest.mark.timeout(180)
def test_serve_refuses_database_behind_code(
    database_url: str, tmp_path: pathlib.Path
) -> None:
    if database_url.startswith("sqlite:///"):
        # An empty SQLite file: a database at schema version 0.
        sqlite3.connect(database_url.removeprefix("sqlite:///")).close()
    output = refused_output(database_url, tmp_path)
    assert "editstore migrate" in output
    assert "version 0" in output


def test_serve_without_migrate_creates_no_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "typo.db"
    output = refused_output(f"sqlite:///{path}", tmp_path)

    assert f"no database at {path}" in output
    assert "--migrate" in output
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.timeout(180)
def test_serve_refuses_hand_made_database_until_migrated(
    hand_database: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    before = snapshot(hand_database)
    output = refused_output(f"sqlite:///{hand_database}", tmp_path)
    assert "editstore migrate" in output
    assert snapshot(hand_database) == before
    with contextlib.closing(sqlite3.connect(hand_database)) as connection:
        tables = {
            row[0]
            for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            )
        }
    assert "session_states" not in tables


def add_future_migration(database_url: str) -> None:
    database = open_database(database_url)
    try:
        database.execute_sql(
            f"INSERT INTO schema_migration (name, applied) VALUES "
            f"('9999_future', {database.param})",
            (datetime.datetime.now(),),
        )
    finally:
        database.close()


@pytest.mark.timeout(180)
def test_serve_and_migrate_refuse_database_ahead_of_code(
    database_url: str, tmp_path: pathlib.Path
) -> None:
    migrated_database(database_url).close()
    add_future_migration(database_url)
    output = refused_output(database_url, tmp_path)
    assert "9999_future" in output
    assert "newer editstore" in output
    result = run_editstore("migrate", "--database", database_url)
    assert result.returncode != 0
    assert "9999_future" in result.stdout + result.stderr


@pytest.mark.timeout(180)
def test_serve_with_migrate_upgrades_hand_made_database(
    hand_database: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    before = snapshot(hand_database)
    process = Daemon(
        f"sqlite:///{hand_database}", port=free_port(), log_path=tmp_path / "log"
    )
    process.start()
    try:
        with grpc.insecure_channel(process.address) as channel:
            stub = session_pb2_grpc.SessionServiceStub(channel)
            fetched = stub.GetSession(pb.GetSessionRequest(id="s-done"), timeout=10)
        assert fetched.naive_prompt == "remove the 🐈"
        assert "schema version 4" in process.log()
    finally:
        process.stop()
    assert snapshot(hand_database) == before


# Query plans


class SqlCapture(logging.Handler):
    """Collect the statements Peewee runs, with their parameters."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, tuple) and len(record.msg) == 2:
            sql, params = record.msg
            self.statements.append((sql, tuple(params or ())))


@contextlib.contextmanager
def captured_sql() -> Iterator[SqlCapture]:
    logger = logging.getLogger("peewee")
    capture = SqlCapture()
    old_level = logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        logger.removeHandler(capture)
        logger.setLevel(old_level)


def run_api_queries(database: peewee.Database) -> None:
    """Run every read and write the SessionService and StateService make."""
    limits = states.StateLimits(max_document_bytes=1 << 20, state_history=2)

    def write(operation: Any) -> Any:
        with database.atomic():
            return operation([])

    ids = []
    for index in range(3):
        row = write(
            records.create_session(
                {"image_path": "a.jpg", "naive_prompt": f"p{index}"},
                str(uuid.uuid4()),
            )
        )
        ids.append(row["id"])
    session_id = ids[0]
    write(
        records.create_prompt(
            session_id,
            {
                "iteration": 0,
                "positive_prompt": "a",
                "negative_prompt": "",
                "quality_score": None,
            },
            str(uuid.uuid4()),
        )
    )
    entity = {
        "entity_id": "sky_0",
        "label": "sky",
        "confidence": None,
        "bbox": None,
        "mask_path": "",
        "color_hex": "",
        "area_percent": None,
    }
    write(records.create_entities(session_id, [entity], str(uuid.uuid4())))
    write(
        records.create_validation(
            session_id,
            {
                "attempt_number": 0,
                "alignment_score": None,
                "preserved_count": 0,
                "modified_count": 0,
                "unintended_count": 0,
                "user_feedback": "",
            },
            "",
        )
    )
    write(
        records.create_feedback(
            session_id,
            {"feedback_type": "accept", "comments": "", "rating": 5},
            "",
        )
    )
    write(records.update_session(session_id, {"status": "completed"}, ""))
    for step in range(4):
        write(states.patch_state(session_id, f'{{"s":{step}}}', None, "", limits))
    with database.atomic():
        token = records.list_sessions(1, "", None, None, None)[1]
        records.list_sessions(1, token, None, None, None)
        records.list_sessions(50, "", "completed", None, None)
        status_token = records.list_sessions(1, "", "in_progress", None, None)[1]
        records.list_sessions(1, status_token, "in_progress", None, None)
        after = datetime.datetime(2020, 1, 1)
        before = datetime.datetime(2100, 1, 1)
        records.list_sessions(5, "", None, after, before)
        records.list_sessions(5, "", "failed", after, before)
        records.get_session(session_id)
        records.resume(session_id)
        for kind in records.CHILD_KINDS:
            (first, *_) = records.list_children(kind, session_id, 1, "")
            child_token = records.child_page_token(kind, session_id, first)
            records.list_children(kind, session_id, 1, child_token)
        states.get_state(session_id)
        states.list_versions(session_id, 0, 10)
    write(records.delete_session(session_id))


def sqlite_plans(database: peewee.Database, statements: list[Any]) -> list[str]:
    problems = []
    for sql, params in statements:
        if not sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
            continue
        plan = database.execute_sql(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
        for row in plan:
            detail = str(row[-1])
            # Sorting the rows of one session is cheap; sorting all sessions
            # is what the listing index is for. Walking an index in order is
            # right only for the unfiltered listing.
            sorts_sessions = "TEMP B-TREE" in detail and 'FROM "sessions"' in sql
            scans = detail.startswith("SCAN") and (
                "USING" not in detail or "WHERE" in sql
            )
            if scans or sorts_sessions:
                problems.append(f"{detail}: {sql}")
    return problems


def postgres_plans(database: peewee.Database, statements: list[Any]) -> list[str]:
    problems = []
    # Tables this small are read fastest without an index. These settings make
    # the planner use an index whenever one fits, so a scan or a sort that
    # remains means that no index fits.
    database.execute_sql("SET enable_seqscan = off")
    database.execute_sql("SET enable_sort = off")
    for sql, params in statements:
        if not sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
            continue
        if "pg_notify" in sql:
            continue
        with database.atomic() as transaction:
            plan = database.execute_sql(f"EXPLAIN {sql}", params).fetchall()
            transaction.rollback()
        for (line,) in plan:
            sorts_sessions = re.search(r"\bSort\b", line) and 'FROM "sessions"' in sql
            if "Seq Scan" in line or sorts_sessions:
                problems.append(f"{line.strip()}: {sql}")
    return problems


@pytest.mark.timeout(180)
def test_every_api_query_uses_an_index(database_url: str) -> None:
    database = migrated_database(database_url)
    try:
        with captured_sql() as capture:
            run_api_queries(database)
        statements = list(capture.statements)
        assert len(statements) > 30
        if isinstance(database, peewee.SqliteDatabase):
            problems = sqlite_plans(database, statements)
        else:
            problems = postgres_plans(database, statements)
        assert problems == []
    finally:
        database.close()
