"""Generated bad input: nothing a client sends makes the daemon fail.

For every unary method of SessionService and StateService, hypothesis builds
requests from the method's descriptor with hostile values: huge, empty and
NUL-laden strings, NaN and infinite floats, extreme integers, unknown enum
numbers, and JSON-like text for documents and patches. Other examples send
raw bytes: a valid request with a string field replaced by invalid UTF-8, or
random bytes as the whole request. Every status must be OK or a code the
contract names for bad input, never UNKNOWN or INTERNAL, and the daemon must
still pass its health check afterwards.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from editstore.v1 import session_pb2, session_pb2_grpc, state_pb2
from tests.daemon import Daemon

POSTGRES_ENV = "EDITSTORE_TEST_POSTGRES"
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
SERVICES = [
    session_pb2.DESCRIPTOR.services_by_name["SessionService"],
    state_pb2.DESCRIPTOR.services_by_name["StateService"],
]
UNARY_METHODS = [
    method
    for service in SERVICES
    for method in service.methods
    if not method.client_streaming and not method.server_streaming
]
METHOD_IDS = [
    f"{method.containing_service.name}.{method.name}" for method in UNARY_METHODS
]
FIELD = descriptor.FieldDescriptor
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
# A request id reused across examples, so that some requests collide.
SHARED_REQUEST_ID = str(uuid.uuid4())
FUZZ_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Broken bytes stop at the parser, so fewer examples cover them.
PARSER_SETTINGS = settings(FUZZ_SETTINGS, max_examples=25)


@pytest.fixture(scope="module")
def channel(server: Daemon) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as opened:
        yield opened


@pytest.fixture
def session_id(channel: grpc.Channel) -> str:
    """The id of a real session, so that generated requests can reach one."""
    stub = session_pb2_grpc.SessionServiceStub(channel)
    created = stub.CreateSession(
        session_pb2.CreateSessionRequest(
            session=session_pb2.Session(image_path="a.jpg", naive_prompt="sky")
        ),
        timeout=10,
    )
    return str(created.id)


# Value strategies

HUGE_LENGTHS = [64 * 1024, 64 * 1024 + 1, 300_000, 5 * 1024 * 1024]
SPECIAL_TEXT = ["", " ", "\x00", "a\x00b", "é🐈", "\u202e", "\t\n", "null", "{}"]


def texts() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=40),
        st.sampled_from(SPECIAL_TEXT),
        st.sampled_from(HUGE_LENGTHS).map(lambda length: "x" * length),
    )


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    )
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=10), children, max_size=4),
        ),
        max_leaves=12,
    )


SPECIAL_JSON = [
    "",
    "{",
    "[]",
    "null",
    '{"a": NaN}',
    '{"a": Infinity}',
    '{"a": -Infinity}',
    '{"a": 1e999}',
    '{"a": "\\ud800"}',
    '{"a": 1, "a": 2}',
    '{"a": "\\u0000"}',
    '{"\\u0000": 1}',
    '{"n": ' + "9" * 5000 + "}",
    "[" * 100_000 + "]" * 100_000,
    '{"a":' * 5000 + "1" + "}" * 5000,
    '{"session_id": 5}',
    '{"session_id": "someone else"}',
    '{"intent": {"confidence": 2}}',
    '{"intent": {"target_entities": [1]}}',
    '{"validation": {"score": "high"}}',
    '{"scene_analysis": []}',
    '{"big": "' + "x" * (5 * 1024 * 1024) + '"}',
]


def json_texts() -> st.SearchStrategy[str]:
    documents = st.dictionaries(st.text(max_size=10), json_values(), max_size=5)
    return st.one_of(
        documents.map(json.dumps),
        json_values().map(json.dumps),
        st.sampled_from(SPECIAL_JSON),
        st.text(max_size=40),
    )


def identifiers(session_id: str) -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(session_id),
        st.just(session_id),
        st.uuids().map(str),
        texts(),
    )


def request_ids() -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(""),
        st.just(SHARED_REQUEST_ID),
        st.uuids().map(str),
        st.text(max_size=40),
    )


def integers(bounds: tuple[int, int]) -> st.SearchStrategy[int]:
    low, high = bounds
    return st.one_of(
        st.integers(-3, 10),
        st.integers(low, high),
        st.sampled_from([low, high, -1, 0]),
    )


def floats() -> st.SearchStrategy[float]:
    return st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0, 1.0, -0.0]),
        st.floats(0, 1),
    )


PLAIN = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "N", "Zs")),
    min_size=1,
    max_size=20,
)


def plausible_values(
    field: descriptor.FieldDescriptor, session_id: str
) -> st.SearchStrategy[Any]:
    """Return a strategy for values of a field that a correct client sends."""
    name = field.name
    if field.type == FIELD.TYPE_STRING:
        if name in ("id", "session_id"):
            return st.just(session_id)
        if name == "request_id":
            return st.one_of(st.just(""), st.uuids().map(str))
        if name in ("document_json", "merge_patch_json"):
            keys = st.sampled_from(["current_stage", "step", "notes", "a"])
            return st.dictionaries(keys, json_values(), max_size=3).map(json.dumps)
        if name == "paths":
            known = ["image_path", "naive_prompt", "status", "final_alignment_score"]
            return st.sampled_from(known)
        if name == "color_hex":
            return st.just("#aabbcc")
        if name in ("page_token", "etag"):
            return st.just("")
        return PLAIN
    if field.type in (FIELD.TYPE_DOUBLE, FIELD.TYPE_FLOAT):
        return st.floats(0, 1)
    if field.type == FIELD.TYPE_ENUM:
        known = [value.number for value in field.enum_type.values if value.number]
        return st.sampled_from(known)
    if field.type == FIELD.TYPE_BOOL:
        return st.booleans()
    return st.integers(0, 5)


def field_values(
    field: descriptor.FieldDescriptor, session_id: str, depth: int
) -> st.SearchStrategy[Any]:
    """Return a strategy for one value of a field: mostly plausible, or hostile."""
    if field.type == FIELD.TYPE_MESSAGE:
        return messages(field.message_type, session_id, depth + 1)
    plausible = plausible_values(field, session_id)
    hostile = hostile_values(field, session_id)
    return st.one_of(plausible, plausible, plausible, hostile)


def hostile_values(
    field: descriptor.FieldDescriptor, session_id: str
) -> st.SearchStrategy[Any]:
    """Return a strategy for bad values of a field, chosen by name and type."""
    name = field.name
    if field.type == FIELD.TYPE_STRING:
        if name in ("id", "session_id"):
            return identifiers(session_id)
        if name == "request_id":
            return request_ids()
        if name in ("document_json", "merge_patch_json"):
            return json_texts()
        if name == "paths":
            known = ["image_path", "naive_prompt", "status", "final_alignment_score"]
            return st.one_of(st.sampled_from([*known, "*", "id"]), texts())
        if name == "color_hex":
            return st.one_of(st.sampled_from(["#aabbcc", "#FFFFFF", ""]), texts())
        return texts()
    if field.type in (FIELD.TYPE_DOUBLE, FIELD.TYPE_FLOAT):
        return floats()
    if field.type in (FIELD.TYPE_INT32, FIELD.TYPE_SINT32, FIELD.TYPE_SFIXED32):
        return integers(INT32)
    if field.type in (FIELD.TYPE_INT64, FIELD.TYPE_SINT64, FIELD.TYPE_SFIXED64):
        return integers(INT64)
    if field.type == FIELD.TYPE_BOOL:
        return st.booleans()
    if field.type == FIELD.TYPE_ENUM:
        known = [value.number for value in field.enum_type.values]
        return st.one_of(st.sampled_from(known), integers(INT32))
    raise AssertionError(f"no strategy for {field.full_name} of type {field.type}")


def messages(
    message_type: descriptor.Descriptor, session_id: str, depth: int = 0
) -> st.SearchStrategy[Message]:
    """Return a strategy for messages of a type, each field set or not."""
    message_class = message_factory.GetMessageClass(message_type)
    if depth > 3:
        return st.just(message_class())
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for field in message_type.fields:
        value = field_values(field, session_id, depth)
        if field.is_repeated:
            parts[field.name] = st.lists(value, max_size=3)
        else:
            parts[field.name] = st.one_of(st.none(), value, value)

    def build(values: dict[str, Any]) -> Message:
        message = message_class()
        for name, value in values.items():
            if value is None:
                continue
            field = message_type.fields_by_name[name]
            if field.is_repeated:
                getattr(message, name).extend(value)
            elif field.type == FIELD.TYPE_MESSAGE:
                getattr(message, name).CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries(parts).map(build)


# Calls


def raw_call(channel: grpc.Channel, method: descriptor.MethodDescriptor) -> Any:
    path = f"/{method.containing_service.full_name}/{method.name}"
    return channel.unary_unary(path)


def status_of(call: Any, data: bytes) -> grpc.StatusCode:
    try:
        call(data, timeout=30)
    except grpc.RpcError as error:
        assert isinstance(error, grpc.Call)
        code = error.code()
        assert code in ALLOWED, f"{code}: {error.details()}"
        return code
    return grpc.StatusCode.OK


def check_health(channel: grpc.Channel) -> None:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=10
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def varint(number: int) -> bytes:
    out = bytearray()
    while True:
        byte = number & 0x7F
        number >>= 7
        if number:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    return varint(field_number << 3 | 2) + varint(len(payload)) + payload


def string_field_paths(
    message_type: descriptor.Descriptor, depth: int = 0
) -> list[list[int]]:
    """Return the field numbers leading to each string field, nested or not."""
    paths: list[list[int]] = []
    for field in message_type.fields:
        if field.type == FIELD.TYPE_STRING:
            paths.append([field.number])
        elif field.type == FIELD.TYPE_MESSAGE and depth < 2:
            for inner in string_field_paths(field.message_type, depth + 1):
                paths.append([field.number, *inner])
    return paths


def nested_field(path: list[int], payload: bytes) -> bytes:
    """Encode a length-delimited value at a path of field numbers."""
    data = length_delimited(path[-1], payload)
    for number in reversed(path[:-1]):
        data = length_delimited(number, data)
    return data


INVALID_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"a\x80"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("method", UNARY_METHODS, ids=METHOD_IDS)
def test_generated_requests_get_contract_codes(
    channel: grpc.Channel, session_id: str, method: descriptor.MethodDescriptor
) -> None:
    call = raw_call(channel, method)

    @FUZZ_SETTINGS
    @given(request=messages(method.input_type, session_id))
    def send(request: Message) -> None:
        status_of(call, request.SerializeToString())

    send()
    check_health(channel)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("method", UNARY_METHODS, ids=METHOD_IDS)
def test_invalid_utf8_gets_invalid_argument(
    channel: grpc.Channel, session_id: str, method: descriptor.MethodDescriptor
) -> None:
    call = raw_call(channel, method)
    paths = string_field_paths(method.input_type)
    assert paths, method.full_name

    @PARSER_SETTINGS
    @given(
        request=messages(method.input_type, session_id),
        path=st.sampled_from(paths),
        payload=st.sampled_from(INVALID_UTF8),
    )
    def send(request: Message, path: list[int], payload: bytes) -> None:
        data = request.SerializeToString() + nested_field(path, payload)
        code = status_of(call, data)
        assert code in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )

    send()
    check_health(channel)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("method", UNARY_METHODS, ids=METHOD_IDS)
def test_random_bytes_get_contract_codes(
    channel: grpc.Channel, method: descriptor.MethodDescriptor
) -> None:
    call = raw_call(channel, method)

    @PARSER_SETTINGS
    @given(data=st.binary(max_size=300))
    def send(data: bytes) -> None:
        status_of(call, data)

    send()
    check_health(channel)


def test_daemon_logged_no_unexpected_error(
    server: Daemon, channel: grpc.Channel
) -> None:
    check_health(channel)
    log = server.log()
    assert "failed with an unexpected error" not in log
    assert "Traceback" not in log
