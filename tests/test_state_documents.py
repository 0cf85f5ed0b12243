"""StateService documents: get, put, patch, versions, limits and exact values.

Each test runs against a real daemon on SQLite and on PostgreSQL. Documents
are compared after parsing the returned ``document_json`` with Python's json,
which keeps integers exact and distinguishes 3 from 3.0, and also as text where the
exact form matters.
"""

from __future__ import annotations

import gc
import json
import pathlib
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from editstore.server import documents
from editstore.v1 import session_pb2, session_pb2_grpc, state_pb2, state_pb2_grpc
from tests.conftest import module_daemon
from tests.daemon import Daemon, free_port

pytestmark = pytest.mark.timeout(60)

BIG_INTEGER = 9007199254740993  # 2**53 + 1, which no 64-bit float represents exactly
DEFAULT_DOCUMENT_LIMIT = 4 * 1024 * 1024
# The daemon's gRPC message limit: the largest document plus 64 KiB of framing.
DEFAULT_MESSAGE_LIMIT = DEFAULT_DOCUMENT_LIMIT + 64 * 1024


class Client:
    """The two service stubs over one channel, with short helpers."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.sessions = session_pb2_grpc.SessionServiceStub(channel)
        self.states = state_pb2_grpc.StateServiceStub(channel)

    def create_session(self) -> str:
        session = session_pb2.Session(
            image_path="/photos/lake.jpg", naive_prompt="make the sky dramatic"
        )
        request = session_pb2.CreateSessionRequest(session=session)
        return self.sessions.CreateSession(request, timeout=10).id

    def get(self, session_id: str) -> session_pb2.StateDocument:
        request = state_pb2.GetStateRequest(session_id=session_id)
        return self.states.GetState(request, timeout=10)

    def put(
        self, session_id: str, document: str | dict[str, Any], **fields: Any
    ) -> session_pb2.StateDocument:
        text = document if isinstance(document, str) else json.dumps(document)
        request = state_pb2.PutStateRequest(
            session_id=session_id, document_json=text, **fields
        )
        return self.states.PutState(request, timeout=30)

    def patch(
        self, session_id: str, patch: str | dict[str, Any], **fields: Any
    ) -> session_pb2.StateDocument:
        text = patch if isinstance(patch, str) else json.dumps(patch)
        request = state_pb2.PatchStateRequest(
            session_id=session_id, merge_patch_json=text, **fields
        )
        return self.states.PatchState(request, timeout=30)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def shared_daemon(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """One daemon for the tests of this module that need no special flags.

    Every test makes sessions of its own, so they do not see each other's
    documents, and starting a daemon per test would cost most of the run.
    """
    with module_daemon(request.param, tmp_path_factory, []) as process:
        yield process


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def small_limit_daemon(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """A daemon whose documents may be at most 4096 bytes."""
    extra_args = ["--max-document-bytes", "4096"]
    with module_daemon(request.param, tmp_path_factory, extra_args) as process:
        yield process


@pytest.fixture
def client(shared_daemon: Daemon) -> Iterator[Client]:
    with grpc.insecure_channel(shared_daemon.address) as channel:
        yield Client(channel)


def rpc_error(call: Callable[..., Any], *args: Any, **kwargs: Any) -> grpc.RpcError:
    """Call and return the RpcError it raises; fail if it succeeds."""
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


def parsed(state: session_pb2.StateDocument) -> dict[str, Any]:
    value = json.loads(state.document_json)
    assert isinstance(value, dict)
    return value


def start_daemon(
    database_url: str, tmp_path: pathlib.Path, extra_args: list[str]
) -> Daemon:
    process = Daemon(
        database_url,
        port=free_port(),
        log_path=tmp_path / f"daemon-{uuid.uuid4().hex[:6]}.log",
        extra_args=extra_args,
    )
    process.start()
    return process


# Get, put and patch


def test_get_state_before_any_write_is_version_zero(client: Client) -> None:
    session_id = client.create_session()

    state = client.get(session_id)

    assert state.session_id == session_id
    assert state.version == 0
    assert state.document_json == "{}"
    assert not state.HasField("update_time")


def test_state_calls_on_missing_session_are_not_found(client: Client) -> None:
    missing = str(uuid.uuid4())
    states = client.states
    calls: list[tuple[Callable[..., Any], Any]] = [
        (states.GetState, state_pb2.GetStateRequest(session_id=missing)),
        (
            states.PutState,
            state_pb2.PutStateRequest(session_id=missing, document_json="{}"),
        ),
        (
            states.PatchState,
            state_pb2.PatchStateRequest(session_id=missing, merge_patch_json="{}"),
        ),
        (
            states.ListStateVersions,
            state_pb2.ListStateVersionsRequest(session_id=missing),
        ),
    ]
    for call, request in calls:
        error = rpc_error(call, request, timeout=10)
        assert error.code() == grpc.StatusCode.NOT_FOUND, call
        assert missing in error.details()


def test_missing_session_id_quoted_in_error(client: Client) -> None:
    """An id that reads like a word is quoted, so the message is unambiguous."""
    states = client.states
    for session_id in ("null", "a b", "not"):
        error = rpc_error(
            states.PatchState,
            state_pb2.PatchStateRequest(session_id=session_id, merge_patch_json="{}"),
            timeout=10,
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert f"session {session_id!r} not found" in error.details()
        error = rpc_error(
            states.GetState,
            state_pb2.GetStateRequest(session_id=session_id),
            timeout=10,
        )
        assert f"session {session_id!r} not found" in error.details()


def test_put_state_gives_each_write_the_next_version(client: Client) -> None:
    session_id = client.create_session()

    first = client.put(session_id, {"current_stage": "analysis"})
    second = client.put(session_id, {"current_stage": "prompting"})
    current = client.get(session_id)

    assert first.version == 1
    assert second.version == 2
    assert first.HasField("update_time")
    assert current.version == 2
    assert parsed(current) == {"current_stage": "prompting"}
    assert current.update_time == second.update_time


def test_put_state_with_matching_expected_version_applies(client: Client) -> None:
    session_id = client.create_session()

    first = client.put(session_id, {"step": 1}, expected_version=0)
    second = client.put(session_id, {"step": 2}, expected_version=1)

    assert first.version == 1
    assert second.version == 2
    assert parsed(client.get(session_id)) == {"step": 2}


def test_put_state_with_stale_expected_version_is_aborted(client: Client) -> None:
    session_id = client.create_session()
    client.put(session_id, {"step": 1})
    client.put(session_id, {"step": 2})

    error = rpc_error(client.put, session_id, {"step": 3}, expected_version=1)

    assert error.code() == grpc.StatusCode.ABORTED
    assert "version 2" in error.details()
    assert "expected_version is 1" in error.details()
    current = client.get(session_id)
    assert current.version == 2
    assert parsed(current) == {"step": 2}


def test_put_state_expecting_version_zero_fails_once_written(client: Client) -> None:
    session_id = client.create_session()
    client.put(session_id, {"step": 1}, expected_version=0)

    error = rpc_error(client.put, session_id, {"step": 2}, expected_version=0)

    assert error.code() == grpc.StatusCode.ABORTED
    assert client.get(session_id).version == 1


def test_put_state_with_negative_expected_version_is_invalid(client: Client) -> None:
    session_id = client.create_session()

    error = rpc_error(client.put, session_id, {"step": 1}, expected_version=-1)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected_version" in error.details()
    assert client.get(session_id).version == 0


# Merge patches: the examples of RFC 7386, appendix A.
MERGE_PATCH_CASES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    (
        {"a": {"b": "c"}},
        {"a": {"b": "d", "c": None}},
        {"a": {"b": "d"}},
    ),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    (
        {"a": {"b": {"c": 1, "d": 2}, "e": 3}},
        {"a": {"b": {"d": None, "f": [4, 5]}}},
        {"a": {"b": {"c": 1, "f": [4, 5]}, "e": 3}},
    ),
    ({"list": [1, 2, 3]}, {"list": []}, {"list": []}),
    ({"x": 1}, {}, {"x": 1}),
]


@pytest.mark.parametrize(("document", "patch", "expected"), MERGE_PATCH_CASES)
def test_patch_state_applies_json_merge_patch(
    client: Client,
    document: dict[str, Any],
    patch: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    session_id = client.create_session()
    client.put(session_id, document)

    result = client.patch(session_id, patch)

    assert result.version == 2
    assert parsed(result) == expected
    assert parsed(client.get(session_id)) == expected


def test_patch_state_on_empty_session_patches_empty_object(client: Client) -> None:
    session_id = client.create_session()

    result = client.patch(session_id, {"current_stage": "analysis", "gone": None})

    assert result.version == 1
    assert parsed(result) == {"current_stage": "analysis"}


def test_patch_state_with_expected_version(client: Client) -> None:
    session_id = client.create_session()
    client.put(session_id, {"a": 1})

    applied = client.patch(session_id, {"b": 2}, expected_version=1)
    error = rpc_error(client.patch, session_id, {"c": 3}, expected_version=1)

    assert applied.version == 2
    assert error.code() == grpc.StatusCode.ABORTED
    assert "version 2" in error.details()
    assert "expected_version is 1" in error.details()
    current = client.get(session_id)
    assert current.version == 2
    assert parsed(current) == {"a": 1, "b": 2}


def test_put_state_with_request_id_applies_once(client: Client) -> None:
    session_id = client.create_session()
    request_id = str(uuid.uuid4())

    first = client.put(session_id, {"a": 1}, request_id=request_id)
    again = client.put(session_id, {"a": 1}, request_id=request_id)

    assert first.version == 1
    assert again.version == 1
    assert again.document_json == first.document_json
    assert client.get(session_id).version == 1


def test_patch_state_with_request_id_applies_once(client: Client) -> None:
    session_id = client.create_session()
    request_id = str(uuid.uuid4())
    client.put(session_id, {"count": 0})

    first = client.patch(session_id, {"added": True}, request_id=request_id)
    again = client.patch(session_id, {"added": True}, request_id=request_id)

    assert first.version == 2
    assert again.version == 2
    assert client.get(session_id).version == 2


def test_retried_patch_returns_its_own_version(client: Client) -> None:
    session_id = client.create_session()
    request_id = str(uuid.uuid4())
    client.put(session_id, {"a": 1})
    first = client.patch(session_id, {"b": 2}, request_id=request_id)
    client.patch(session_id, {"c": 3})
    client.patch(session_id, {"b": 5})

    again = client.patch(session_id, {"b": 2}, request_id=request_id)

    assert first.version == 2
    assert again.version == 2
    assert parsed(again) == {"a": 1, "b": 2}
    assert again.document_json == first.document_json
    assert again.update_time == first.update_time
    assert parsed(client.get(session_id)) == {"a": 1, "b": 5, "c": 3}


def test_request_id_stores_no_document_copy(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'ids.db'}"
    process = start_daemon(url, tmp_path, [])
    try:
        with grpc.insecure_channel(process.address) as channel:
            client = Client(channel)
            session_id = client.create_session()
            large = {"mask": "m" * 100_000}
            put = client.put(session_id, large, request_id=str(uuid.uuid4()))
            patched = client.patch(
                session_id, {"step": 1}, request_id=str(uuid.uuid4())
            )
    finally:
        process.stop()

    assert put.version == 1
    assert patched.version == 2
    with sqlite3.connect(tmp_path / "ids.db") as connection:
        sizes = [
            row[0]
            for row in connection.execute("SELECT length(response) FROM request_ids")
        ]
    assert len(sizes) == 2
    assert max(sizes) < 200


def test_request_id_stored_whole_still_answers(tmp_path: pathlib.Path) -> None:
    # Earlier releases stored the whole result with the request id. A retry
    # of such a request returns that stored result.
    url = f"sqlite:///{tmp_path / 'old-ids.db'}"
    process = start_daemon(url, tmp_path, [])
    try:
        with grpc.insecure_channel(process.address) as channel:
            client = Client(channel)
            session_id = client.create_session()
            request_id = str(uuid.uuid4())
            first = client.patch(session_id, {"step": 1}, request_id=request_id)
            with sqlite3.connect(tmp_path / "old-ids.db") as connection:
                (response,) = connection.execute(
                    "SELECT response FROM request_ids WHERE request_id = ?",
                    (request_id,),
                ).fetchone()
                whole = {**json.loads(response), "document": '{"step":1,"old":1}'}
                connection.execute(
                    "UPDATE request_ids SET response = ? WHERE request_id = ?",
                    (json.dumps(whole), request_id),
                )
            again = client.patch(session_id, {"step": 1}, request_id=request_id)
    finally:
        process.stop()

    assert again.version == first.version
    assert parsed(again) == {"step": 1, "old": 1}
    assert again.update_time == first.update_time


def test_retry_after_history_returns_current(
    database_url: str, tmp_path: pathlib.Path
) -> None:
    process = start_daemon(database_url, tmp_path, ["--state-history", "5"])
    try:
        with grpc.insecure_channel(process.address) as channel:
            client = Client(channel)
            session_id = client.create_session()
            request_id = str(uuid.uuid4())
            first = client.patch(session_id, {"step": 1}, request_id=request_id)
            for step in range(2, 41):
                client.patch(session_id, {"step": step})
            oldest = client.states.ListStateVersions(
                state_pb2.ListStateVersionsRequest(session_id=session_id),
                timeout=10,
            ).oldest_kept_version
            again = client.patch(session_id, {"step": 1}, request_id=request_id)
            current = client.get(session_id)
    finally:
        process.stop()

    assert first.version == 1
    assert oldest > 1
    assert again.version == 40
    assert again.document_json == current.document_json
    assert parsed(again) == {"step": 40}


def test_resume_session_returns_state_document(client: Client) -> None:
    session_id = client.create_session()
    request = session_pb2.ResumeSessionRequest(id=session_id)
    before = client.sessions.ResumeSession(request, timeout=10)
    client.put(session_id, {"current_stage": "validation", "n": BIG_INTEGER})
    client.patch(session_id, {"retries": 2})

    after = client.sessions.ResumeSession(request, timeout=10)

    assert before.state.version == 0
    assert before.state.document_json == "{}"
    assert after.state.session_id == session_id
    assert after.state.version == 2
    assert parsed(after.state) == {
        "current_stage": "validation",
        "n": BIG_INTEGER,
        "retries": 2,
    }
    assert after.state.document_json == client.get(session_id).document_json


# Versions and their kept history


def test_list_state_versions_returns_versions_oldest_first(client: Client) -> None:
    session_id = client.create_session()
    client.put(session_id, {"step": 1})
    client.patch(session_id, {"extra": "x"})
    client.put(session_id, {"step": 3})

    response = client.states.ListStateVersions(
        state_pb2.ListStateVersionsRequest(session_id=session_id), timeout=10
    )

    assert [v.version for v in response.versions] == [1, 2, 3]
    assert [parsed(v) for v in response.versions] == [
        {"step": 1},
        {"step": 1, "extra": "x"},
        {"step": 3},
    ]
    assert all(v.session_id == session_id for v in response.versions)
    assert response.oldest_kept_version == 1


def test_list_state_versions_pages_by_after_version(client: Client) -> None:
    session_id = client.create_session()
    for step in range(1, 8):
        client.put(session_id, {"step": step})
    seen: list[int] = []
    after = 0

    while True:
        response = client.states.ListStateVersions(
            state_pb2.ListStateVersionsRequest(
                session_id=session_id, after_version=after, page_size=3
            ),
            timeout=10,
        )
        if not response.versions:
            break
        assert len(response.versions) <= 3
        seen.extend(v.version for v in response.versions)
        after = response.versions[-1].version

    assert seen == [1, 2, 3, 4, 5, 6, 7]


def test_list_state_versions_of_empty_session(client: Client) -> None:
    session_id = client.create_session()

    response = client.states.ListStateVersions(
        state_pb2.ListStateVersionsRequest(session_id=session_id), timeout=10
    )

    assert list(response.versions) == []
    assert response.oldest_kept_version == 0


def test_list_state_versions_rejects_bad_page_size(client: Client) -> None:
    session_id = client.create_session()

    for page_size in (-1, 1001):
        error = rpc_error(
            client.states.ListStateVersions,
            state_pb2.ListStateVersionsRequest(
                session_id=session_id, page_size=page_size
            ),
            timeout=10,
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_size" in error.details()


def test_state_history_keeps_last_versions(
    database_url: str, tmp_path: pathlib.Path
) -> None:
    process = start_daemon(database_url, tmp_path, ["--state-history", "5"])
    try:
        with grpc.insecure_channel(process.address) as channel:
            client = Client(channel)
            session_id = client.create_session()
            other_id = client.create_session()
            for step in range(1, 13):
                client.put(session_id, {"step": step})
            client.put(other_id, {"step": 1})

            response = client.states.ListStateVersions(
                state_pb2.ListStateVersionsRequest(session_id=session_id),
                timeout=10,
            )
            other = client.states.ListStateVersions(
                state_pb2.ListStateVersionsRequest(session_id=other_id),
                timeout=10,
            )
    finally:
        process.stop()

    assert [v.version for v in response.versions] == [8, 9, 10, 11, 12]
    assert [parsed(v)["step"] for v in response.versions] == [8, 9, 10, 11, 12]
    assert response.oldest_kept_version == 8
    assert [v.version for v in other.versions] == [1]
    assert other.oldest_kept_version == 1


def test_list_state_versions_pages_large_documents(
    small_limit_daemon: Daemon,
) -> None:
    # 30 versions of nearly 4096 bytes are more than one response message of
    # the daemon (4096 + 64 KiB) can carry, so pages must come back shorter
    # than asked and paging by after_version must still reach every version.
    with grpc.insecure_channel(small_limit_daemon.address) as channel:
        client = Client(channel)
        session_id = client.create_session()
        for step in range(1, 31):
            client.put(session_id, {"step": step, "blob": "x" * 4000})
        seen: list[int] = []
        after = 0
        while True:
            response = client.states.ListStateVersions(
                state_pb2.ListStateVersionsRequest(
                    session_id=session_id, after_version=after
                ),
                timeout=10,
            )
            if not response.versions:
                break
            seen.extend(v.version for v in response.versions)
            after = response.versions[-1].version

    assert seen == list(range(1, 31))


# Exact values


def test_big_integer_round_trips_exactly(client: Client) -> None:
    session_id = client.create_session()
    document = {"n": BIG_INTEGER, "negative": -BIG_INTEGER, "huge": 10**30}

    put = client.put(session_id, document)
    got = client.get(session_id)

    for state in (put, got):
        value = parsed(state)
        assert value["n"] == BIG_INTEGER
        assert isinstance(value["n"], int)
        assert value["negative"] == -BIG_INTEGER
        assert value["huge"] == 10**30
        assert "9007199254740993" in state.document_json
        assert "1000000000000000000000000000000" in state.document_json


def test_big_integer_survives_merge_patch(client: Client) -> None:
    session_id = client.create_session()
    client.put(session_id, {"n": BIG_INTEGER})

    patched = client.patch(session_id, {"m": BIG_INTEGER + 2})

    value = parsed(patched)
    assert value == {"n": BIG_INTEGER, "m": BIG_INTEGER + 2}
    assert "9007199254740995" in patched.document_json


def test_integers_and_floats_keep_their_form(client: Client) -> None:
    session_id = client.create_session()
    text = (
        '{"int":3,"float":3.0,"zero":0,"negzero":-0.0,"pi":3.141592653589793,'
        '"tiny":5e-324,"zerofloat":0.0}'
    )

    client.put(session_id, text)
    got = client.get(session_id)

    value = parsed(got)
    assert value["int"] == 3
    assert type(value["int"]) is int
    assert value["float"] == 3.0
    assert type(value["float"]) is float
    assert type(value["zero"]) is int
    assert str(value["negzero"]) == "-0.0"
    assert value["pi"] == 3.141592653589793
    assert got.document_json == text


def test_integer_stays_integer_after_patch(client: Client) -> None:
    session_id = client.create_session()
    client.put(session_id, '{"count":3}')

    patched = client.patch(session_id, '{"ratio":3.0}')

    assert patched.document_json == '{"count":3,"ratio":3.0}'


TEXT_CASES = {
    "emoji": "🎨🖼️ 👩🏽‍🎨 family 👨‍👩‍👧‍👦",
    "combining": "e\u0301 a\u0308 n\u0303 \u1100\u1161\u11a8",
    "right_to_left": "ערוך את השמים \u202eabc\u202c مرحبا",
    "line_separators": "a\u2028b\u2029c",
    "control_characters": "".join(chr(code) for code in range(32)) + "\x7f",
    "quotes_and_backslashes": 'say "hi" \\ back\\slash \\u0041 /',
    "long": "ab\u00e9\U0001f600" * 50_000,
    "non_characters": "\ufffe\uffff\U0010ffff",
}


@pytest.mark.parametrize("name", sorted(TEXT_CASES))
def test_text_round_trips_exactly(client: Client, name: str) -> None:
    session_id = client.create_session()
    value = TEXT_CASES[name]
    document = {"text": value, value[:40]: "as a key"}
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))

    put = client.put(session_id, text)
    got = client.get(session_id)

    for state in (put, got):
        assert parsed(state) == document
        assert state.document_json == text


def test_escaped_text_reads_back_as_same_characters(client: Client) -> None:
    session_id = client.create_session()
    # \ud83d\ude00 is a surrogate pair: the escape of one emoji.
    text = '{"a":"\\u2028\\u00e9\\ud83d\\ude00\\u0000\\n"}'

    got = client.put(session_id, text)

    assert parsed(got) == {"a": "\u2028\u00e9\U0001f600\x00\n"}
    assert got.document_json == '{"a":"\u2028\u00e9\U0001f600\\u0000\\n"}'


# Numbers no 64-bit float can hold; 1e-400 would silently read back as 0.0.
REJECTED_NUMBERS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    "1e-400",
    "-2E-324",
]


@pytest.mark.parametrize("literal", REJECTED_NUMBERS)
def test_put_state_rejects_unrepresentable_number(client: Client, literal: str) -> None:
    session_id = client.create_session()
    client.put(session_id, {"ok": 1})

    error = rpc_error(client.put, session_id, '{"x": ' + literal + "}")

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "document_json" in error.details()
    assert_unchanged(client, session_id, 1, {"ok": 1})


@pytest.mark.parametrize("literal", REJECTED_NUMBERS)
def test_patch_state_rejects_unrepresentable_number(
    client: Client, literal: str
) -> None:
    session_id = client.create_session()
    client.put(session_id, {"ok": 1})

    error = rpc_error(client.patch, session_id, '{"x": {"y": ' + literal + "}}")

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "merge_patch_json" in error.details()
    assert_unchanged(client, session_id, 1, {"ok": 1})


INVALID_DOCUMENTS = {
    "duplicate_key": '{"a": 1, "a": 2}',
    "nested_duplicate_key": '{"a": {"b": 1, "b": 1}}',
    "array": "[1, 2]",
    "string": '"text"',
    "number": "3",
    "null": "null",
    "empty": "",
    "truncated": '{"a": ',
    "trailing_comma": '{"a": 1,}',
    "single_quotes": "{'a': 1}",
    "trailing_data": '{"a": 1} {"b": 2}',
    "unpaired_surrogate": '{"a": "\\ud800"}',
    "long_integer": '{"a": ' + "9" * 5000 + "}",
    "deep_nesting": '{"a":' * 100_000 + "1" + "}" * 100_000,
}


@pytest.mark.parametrize("name", sorted(INVALID_DOCUMENTS))
def test_put_state_rejects_invalid_document(client: Client, name: str) -> None:
    session_id = client.create_session()
    client.put(session_id, {"ok": 1})

    error = rpc_error(client.put, session_id, INVALID_DOCUMENTS[name])

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "document_json" in error.details()
    assert_unchanged(client, session_id, 1, {"ok": 1})


@pytest.mark.parametrize("name", sorted(INVALID_DOCUMENTS))
def test_patch_state_rejects_invalid_patch(client: Client, name: str) -> None:
    session_id = client.create_session()
    client.put(session_id, {"ok": 1})

    error = rpc_error(client.patch, session_id, INVALID_DOCUMENTS[name])

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "merge_patch_json" in error.details()
    assert_unchanged(client, session_id, 1, {"ok": 1})


def test_state_with_invalid_utf8_is_rejected(shared_daemon: Daemon) -> None:
    # A client without protobuf's UTF-8 check can send such bytes in a string
    # field. The daemon rejects the request instead of storing them.
    with grpc.insecure_channel(shared_daemon.address) as channel:
        client = Client(channel)
        session_id = client.create_session()
        put = channel.unary_unary(
            "/editstore.v1.StateService/PutState",
            request_serializer=lambda data: data,
            response_deserializer=session_pb2.StateDocument.FromString,
        )
        valid = state_pb2.PutStateRequest(
            session_id=session_id, document_json='{"a":"XY"}'
        ).SerializeToString()
        invalid = valid.replace(b"XY", b"\xff\xfe")

        error = rpc_error(put, invalid, timeout=10)

        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert client.get(session_id).version == 0


# Size limits


def assert_unchanged(
    client: Client, session_id: str, version: int, document: dict[str, Any]
) -> None:
    """Check that a refused write left the stored document as it was."""
    current = client.get(session_id)
    assert current.version == version
    assert parsed(current) == document
    versions = client.states.ListStateVersions(
        state_pb2.ListStateVersionsRequest(session_id=session_id), timeout=10
    ).versions
    assert [v.version for v in versions] == list(range(1, version + 1))


def document_of_size(size: int, **fields: Any) -> str:
    """Return compact JSON of exactly ``size`` bytes in UTF-8."""
    head = json.dumps(fields, separators=(",", ":"))[:-1]
    prefix = (head + "," if fields else "{") + '"blob":"'
    filler = size - len(prefix.encode()) - len('"}')
    assert filler >= 0
    text = prefix + "x" * filler + '"}'
    assert len(text.encode()) == size
    return text


def test_document_at_size_limit_is_accepted(small_limit_daemon: Daemon) -> None:
    with grpc.insecure_channel(small_limit_daemon.address) as channel:
        client = Client(channel)
        session_id = client.create_session()
        text = document_of_size(4096)

        put = client.put(session_id, text)

        assert put.version == 1
        assert client.get(session_id).document_json == text


def test_document_over_size_limit_is_resource_exhausted(
    small_limit_daemon: Daemon,
) -> None:
    with grpc.insecure_channel(small_limit_daemon.address) as channel:
        client = Client(channel)
        session_id = client.create_session()
        client.put(session_id, {"ok": 1})

        error = rpc_error(client.put, session_id, document_of_size(4097))

        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "4097" in error.details()
        assert "4096" in error.details()
        assert_unchanged(client, session_id, 1, {"ok": 1})


def test_document_size_counts_utf8_bytes_of_compact_json(
    small_limit_daemon: Daemon,
) -> None:
    with grpc.insecure_channel(small_limit_daemon.address) as channel:
        client = Client(channel)
        session_id = client.create_session()
        # 1100 "é" are 2200 bytes in UTF-8 but 6600 bytes as \u00e9 escapes;
        # whitespace outside strings does not count either.
        spaced = '{ "a" :  "' + "\\u00e9" * 1100 + '" }'
        over = {"a": "\u00e9" * 2100}

        accepted = client.put(session_id, spaced)
        error = rpc_error(client.put, session_id, over)

        assert accepted.version == 1
        assert len(accepted.document_json.encode()) == 2208
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_patch_growing_document_over_limit_is_resource_exhausted(
    small_limit_daemon: Daemon,
) -> None:
    with grpc.insecure_channel(small_limit_daemon.address) as channel:
        client = Client(channel)
        session_id = client.create_session()
        client.put(session_id, {"a": "x" * 3000})

        error = rpc_error(client.patch, session_id, {"b": "y" * 2000})

        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert_unchanged(client, session_id, 1, {"a": "x" * 3000})


@pytest.fixture
def wide_client(shared_daemon: Daemon) -> Iterator[Client]:
    """A client whose message limits match the daemon's default ones."""
    options = [
        ("grpc.max_send_message_length", DEFAULT_MESSAGE_LIMIT),
        ("grpc.max_receive_message_length", DEFAULT_MESSAGE_LIMIT),
    ]
    with grpc.insecure_channel(shared_daemon.address, options=options) as channel:
        yield Client(channel)


def test_document_of_default_limit_is_accepted(wide_client: Client) -> None:
    session_id = wide_client.create_session()
    text = document_of_size(DEFAULT_DOCUMENT_LIMIT, current_stage="analysis")

    put = wide_client.put(session_id, text)
    got = wide_client.get(session_id)

    assert put.version == 1
    assert got.document_json == text


def test_document_over_default_limit_is_resource_exhausted(
    wide_client: Client,
) -> None:
    session_id = wide_client.create_session()
    wide_client.put(session_id, {"ok": 1})

    error = rpc_error(
        wide_client.put, session_id, document_of_size(DEFAULT_DOCUMENT_LIMIT + 1)
    )

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The daemon's own check names the limit; gRPC's transport would not.
    assert str(DEFAULT_DOCUMENT_LIMIT) in error.details()
    assert "--max-document-bytes" in error.details()
    assert_unchanged(wide_client, session_id, 1, {"ok": 1})


# The fields of the state file


def test_state_fields_of_right_types_are_accepted(client: Client) -> None:
    session_id = client.create_session()
    document = {
        "session_id": session_id,
        "current_stage": "validation",
        "image_path": "/photos/lake.jpg",
        "naive_prompt": "make the sky dramatic",
        "edited_image_path": "/photos/lake-edited.jpg",
        "scene_analysis": {"objects": ["sky", "lake"]},
        "intent": {"confidence": 1, "target_entities": ["sky"]},
        "prompts": {"positive": "dramatic sky"},
        "validation": {"score": 0.82},
        "anything_else": [1, "two", None, {"three": 3.0}],
    }

    put = client.put(session_id, document)

    assert parsed(put) == document


STATE_FIELD_VIOLATIONS = {
    "session_id_of_other_session": ({"session_id": "other"}, "session_id"),
    "session_id_not_string": ({"session_id": 7}, "session_id"),
    "current_stage_number": ({"current_stage": 2}, "current_stage"),
    "current_stage_null": ({"current_stage": None}, "current_stage"),
    "image_path_array": ({"image_path": ["a"]}, "image_path"),
    "naive_prompt_object": ({"naive_prompt": {}}, "naive_prompt"),
    "edited_image_path_bool": ({"edited_image_path": True}, "edited_image_path"),
    "scene_analysis_string": ({"scene_analysis": "sky"}, "scene_analysis"),
    "intent_array": ({"intent": []}, "intent"),
    "prompts_number": ({"prompts": 1}, "prompts"),
    "validation_string": ({"validation": "ok"}, "validation"),
    "confidence_above_one": ({"intent": {"confidence": 1.5}}, "intent.confidence"),
    "confidence_negative": ({"intent": {"confidence": -0.1}}, "intent.confidence"),
    "confidence_string": ({"intent": {"confidence": "high"}}, "intent.confidence"),
    "confidence_bool": ({"intent": {"confidence": True}}, "intent.confidence"),
    "targets_string": (
        {"intent": {"target_entities": "sky"}},
        "intent.target_entities",
    ),
    "targets_numbers": (
        {"intent": {"target_entities": [1]}},
        "intent.target_entities",
    ),
    "score_string": ({"validation": {"score": "0.9"}}, "validation.score"),
    "score_null": ({"validation": {"score": None}}, "validation.score"),
}


@pytest.mark.parametrize("name", sorted(STATE_FIELD_VIOLATIONS))
def test_put_state_rejects_state_field_of_wrong_type(client: Client, name: str) -> None:
    session_id = client.create_session()
    client.put(session_id, {"ok": 1})
    document, field = STATE_FIELD_VIOLATIONS[name]

    error = rpc_error(client.put, session_id, document)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in error.details()
    assert_unchanged(client, session_id, 1, {"ok": 1})


def test_patch_state_rejects_patch_breaking_state_fields(client: Client) -> None:
    session_id = client.create_session()
    document = {"intent": {"confidence": 0.5, "target_entities": ["sky"]}}
    client.put(session_id, document)

    confidence = rpc_error(client.patch, session_id, {"intent": {"confidence": 2}})
    stage = rpc_error(client.patch, session_id, {"current_stage": 3})
    owner = rpc_error(client.patch, session_id, {"session_id": "someone-else"})

    assert confidence.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "intent.confidence" in confidence.details()
    assert stage.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "current_stage" in stage.details()
    assert owner.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "session_id" in owner.details()
    assert_unchanged(client, session_id, 1, document)


def test_patch_state_may_remove_state_fields(client: Client) -> None:
    session_id = client.create_session()
    client.put(session_id, {"current_stage": "analysis", "intent": {"confidence": 1}})

    patched = client.patch(session_id, {"current_stage": None, "intent": None})

    assert parsed(patched) == {}


# Concurrent writers


def race_writers(
    addresses: dict[str, str], session_id: str, target: int
) -> dict[str, list[int]]:
    """Run one writer per address until the document reaches ``target``.

    Each writer loops: read version v, put with expected_version=v, and on
    ABORTED read again. Returns the versions each writer was acknowledged.
    """
    won: dict[str, list[int]] = {name: [] for name in addresses}
    aborted = dict.fromkeys(addresses, 0)
    failures: list[BaseException] = []

    def write(name: str) -> None:
        try:
            with grpc.insecure_channel(addresses[name]) as channel:
                client = Client(channel)
                while True:
                    version = client.get(session_id).version
                    if version >= target:
                        return
                    try:
                        result = client.put(
                            session_id,
                            {"writer": name, "after": version},
                            expected_version=version,
                        )
                    except grpc.RpcError as error:
                        if error.code() != grpc.StatusCode.ABORTED:
                            raise
                        aborted[name] += 1
                        continue
                    won[name].append(result.version)
        except BaseException as error:  # reported by the main thread
            failures.append(error)

    threads = [threading.Thread(target=write, args=(name,)) for name in addresses]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(50)
    counts = {name: len(versions) for name, versions in won.items()}
    print(f"versions won: {counts}, aborted: {aborted}")
    assert not failures
    return won


def test_writers_with_expected_versions_win_each_version_once(
    shared_daemon: Daemon,
) -> None:
    target = 100
    with grpc.insecure_channel(shared_daemon.address) as channel:
        session_id = Client(channel).create_session()

    won = race_writers(
        {"a": shared_daemon.address, "b": shared_daemon.address}, session_id, target
    )

    assert not set(won["a"]) & set(won["b"])
    assert sorted(won["a"] + won["b"]) == list(range(1, target + 1))
    with grpc.insecure_channel(shared_daemon.address) as channel:
        final = Client(channel).get(session_id)
    assert final.version == target
    assert parsed(final)["after"] == target - 1


def test_writers_on_two_daemons_win_each_version_once(
    database_url: str, tmp_path: pathlib.Path
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("two daemons share a database only on PostgreSQL")
    target = 100
    first = start_daemon(database_url, tmp_path, [])
    try:
        second = start_daemon(database_url, tmp_path, [])
        try:
            with grpc.insecure_channel(first.address) as channel:
                session_id = Client(channel).create_session()
            won = race_writers(
                {"a": first.address, "b": second.address}, session_id, target
            )
            with grpc.insecure_channel(second.address) as channel:
                final = Client(channel).get(session_id)
        finally:
            second.stop()
    finally:
        first.stop()

    assert not set(won["a"]) & set(won["b"])
    assert sorted(won["a"] + won["b"]) == list(range(1, target + 1))
    assert final.version == target
    assert parsed(final)["after"] == target - 1


def test_writers_patching_different_keys_lose_no_change(shared_daemon: Daemon) -> None:
    per_writer = 200
    with grpc.insecure_channel(shared_daemon.address) as channel:
        client = Client(channel)
        session_id = client.create_session()
        client.put(session_id, {"start": True})
    failures: list[BaseException] = []

    def write(name: str) -> None:
        try:
            with grpc.insecure_channel(shared_daemon.address) as channel:
                client = Client(channel)
                for index in range(per_writer):
                    client.patch(session_id, {f"{name}-{index}": index})
        except BaseException as error:  # reported by the main thread
            failures.append(error)

    threads = [threading.Thread(target=write, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(50)

    assert not failures
    with grpc.insecure_channel(shared_daemon.address) as channel:
        final = Client(channel).get(session_id)
    document = parsed(final)
    assert final.version == 1 + 2 * per_writer
    for name in "ab":
        for index in range(per_writer):
            assert document[f"{name}-{index}"] == index
    assert document["start"] is True


def test_large_parse_leaves_collector_enabled() -> None:
    """The collector paused for a large document runs again afterwards."""
    members = {f"k{number}": [number, {"a": "v" * 20}] for number in range(5000)}
    text = json.dumps(members)
    assert len(text) >= documents.GC_PAUSE_BYTES
    assert documents.parse_object(text, "document_json") == members
    assert gc.isenabled()
    broken = text[:-1] + ',"k0":1}'
    with pytest.raises(documents.InvalidArgument, match="has the key 'k0' twice"):
        documents.parse_object(broken, "document_json")
    assert gc.isenabled()
    gc.disable()
    try:
        documents.parse_object(text, "document_json")
        assert not gc.isenabled()
    finally:
        gc.enable()
