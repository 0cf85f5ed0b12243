"""Request ids: a create or add that arrives more than once applies once.

Every method of SessionService that creates records takes a request_id. A
retry with the same id and the same content gets the first response again,
field for field, and stores nothing new; the same id with other content, or
sent to another method, is ALREADY_EXISTS.
"""

from __future__ import annotations

import concurrent.futures
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from editstore.v1 import session_pb2 as pb
from editstore.v1 import session_pb2_grpc
from tests.daemon import Daemon

POSTGRES_ENV = "EDITSTORE_TEST_POSTGRES"
Stub = session_pb2_grpc.SessionServiceStub


@pytest.fixture(scope="module")
def stub(server: Daemon) -> Iterator[Stub]:
    with grpc.insecure_channel(server.address) as channel:
        yield session_pb2_grpc.SessionServiceStub(channel)


def new_session(stub: Stub, naive_prompt: str = "make the sky dramatic") -> pb.Session:
    return stub.CreateSession(
        pb.CreateSessionRequest(
            session=pb.Session(image_path="photos/beach.jpg", naive_prompt=naive_prompt)
        ),
        timeout=10,
    )


# Each maker returns the method's name and a request for a session; `variant`
# changes the request's content but not its kind.
Maker = Callable[[str, str, int], tuple[str, Any]]


def make_session(session_id: str, request_id: str, variant: int) -> tuple[str, Any]:
    return "CreateSession", pb.CreateSessionRequest(
        session=pb.Session(
            image_path="photos/beach.jpg",
            naive_prompt=f"make the sky dramatic {variant}",
            final_alignment_score=0.5,
        ),
        request_id=request_id,
    )


def make_prompt(session_id: str, request_id: str, variant: int) -> tuple[str, Any]:
    return "CreatePrompt", pb.CreatePromptRequest(
        prompt=pb.Prompt(
            session_id=session_id,
            iteration=0,
            positive_prompt=f"sky, storm clouds {variant}",
            quality_score=0.25,
        ),
        request_id=request_id,
    )


def make_entities(session_id: str, request_id: str, variant: int) -> tuple[str, Any]:
    return "BatchCreateEntities", pb.BatchCreateEntitiesRequest(
        session_id=session_id,
        entities=[
            pb.Entity(entity_id="sky_0", label="sky", confidence=0.9),
            pb.Entity(
                entity_id="sea_0",
                bbox=pb.BoundingBox(x=0, y=300, width=640, height=180 + variant),
            ),
        ],
        request_id=request_id,
    )


def make_validation(session_id: str, request_id: str, variant: int) -> tuple[str, Any]:
    return "CreateValidation", pb.CreateValidationRequest(
        validation=pb.Validation(
            session_id=session_id,
            attempt_number=0,
            alignment_score=0.75,
            preserved_count=3 + variant,
        ),
        request_id=request_id,
    )


def make_feedback(session_id: str, request_id: str, variant: int) -> tuple[str, Any]:
    return "CreateUserFeedback", pb.CreateUserFeedbackRequest(
        user_feedback=pb.UserFeedback(
            session_id=session_id,
            feedback_type=pb.FEEDBACK_TYPE_PARTIAL,
            comments=f"sky yes, sea no {variant}",
            rating=3,
        ),
        request_id=request_id,
    )


MAKERS: list[Maker] = [
    make_session,
    make_prompt,
    make_entities,
    make_validation,
    make_feedback,
]
MAKER_IDS = ["session", "prompt", "entities", "validation", "feedback"]


def stored_count(stub: Stub, method: str, session_id: str, marker: str) -> int:
    """Count what a create method stored: in the session, or sessions by prompt."""
    if method == "CreateSession":
        found = 0
        token = ""
        while True:
            reply = stub.ListSessions(
                pb.ListSessionsRequest(page_size=1000, page_token=token), timeout=10
            )
            found += sum(item.naive_prompt == marker for item in reply.sessions)
            token = reply.next_page_token
            if not token:
                return found
    resumed = stub.ResumeSession(pb.ResumeSessionRequest(id=session_id), timeout=10)
    return {
        "CreatePrompt": len(resumed.prompts),
        "BatchCreateEntities": len(resumed.entities),
        "CreateValidation": len(resumed.validations),
        "CreateUserFeedback": len(resumed.user_feedback),
    }[method]


@pytest.mark.parametrize("maker", MAKERS, ids=MAKER_IDS)
def test_request_sent_twice_is_applied_once(stub: Stub, maker: Maker) -> None:
    session = new_session(stub)
    request_id = str(uuid.uuid4())
    method, request = maker(session.id, request_id, variant=0)
    if method == "CreateSession":
        request.session.naive_prompt = f"twice {request_id}"
    call = getattr(stub, method)
    first = call(request, timeout=10)
    second = call(request, timeout=10)
    assert second == first
    marker = f"twice {request_id}"
    assert stored_count(stub, method, session.id, marker) == (
        2 if method == "BatchCreateEntities" else 1
    )


@pytest.mark.parametrize("maker", MAKERS, ids=MAKER_IDS)
def test_request_sent_concurrently_is_applied_once(stub: Stub, maker: Maker) -> None:
    session = new_session(stub)
    request_id = str(uuid.uuid4())
    method, request = maker(session.id, request_id, variant=0)
    if method == "CreateSession":
        request.session.naive_prompt = f"concurrent {request_id}"
    call = getattr(stub, method)
    start = threading.Barrier(10)

    def send() -> Any:
        start.wait(10)
        return call(request, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        replies = list(pool.map(lambda _: send(), range(10)))
    for reply in replies[1:]:
        assert reply == replies[0]
    marker = f"concurrent {request_id}"
    assert stored_count(stub, method, session.id, marker) == (
        2 if method == "BatchCreateEntities" else 1
    )


def test_retried_session_keeps_its_id_and_time(stub: Stub) -> None:
    request_id = str(uuid.uuid4())
    request = pb.CreateSessionRequest(
        session=pb.Session(image_path="a.jpg", naive_prompt="retry"),
        request_id=request_id,
    )
    first = stub.CreateSession(request, timeout=10)
    second = stub.CreateSession(request, timeout=10)
    assert second.id == first.id
    assert second.create_time == first.create_time
    assert second.etag == first.etag


@pytest.mark.parametrize("maker", MAKERS, ids=MAKER_IDS)
def test_request_id_with_other_content_already_exists(stub: Stub, maker: Maker) -> None:
    session = new_session(stub)
    request_id = str(uuid.uuid4())
    method, request = maker(session.id, request_id, variant=0)
    call = getattr(stub, method)
    first = call(request, timeout=10)
    _, changed = maker(session.id, request_id, variant=1)
    with pytest.raises(grpc.RpcError) as caught:
        call(changed, timeout=10)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert request_id in caught.value.details()
    assert call(request, timeout=10) == first


@pytest.mark.parametrize("maker", MAKERS, ids=MAKER_IDS)
def test_request_id_of_other_method_already_exists(stub: Stub, maker: Maker) -> None:
    session = new_session(stub)
    request_id = str(uuid.uuid4())
    method, request = maker(session.id, request_id, variant=0)
    getattr(stub, method)(request, timeout=10)
    for other in MAKERS:
        other_method, other_request = other(session.id, request_id, variant=0)
        if other_method == method:
            continue
        with pytest.raises(grpc.RpcError) as caught:
            getattr(stub, other_method)(other_request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS, other_method


def test_request_id_for_other_session_already_exists(stub: Stub) -> None:
    first_session = new_session(stub)
    second_session = new_session(stub)
    request_id = str(uuid.uuid4())
    _, request = make_validation(first_session.id, request_id, variant=0)
    stub.CreateValidation(request, timeout=10)
    _, other = make_validation(second_session.id, request_id, variant=0)
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateValidation(other, timeout=10)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    listed = stub.ListValidations(
        pb.ListValidationsRequest(session_id=second_session.id), timeout=10
    )
    assert list(listed.validations) == []


def test_requests_without_id_are_each_applied(stub: Stub) -> None:
    session = new_session(stub)
    request = pb.CreateValidationRequest(
        validation=pb.Validation(session_id=session.id, attempt_number=0)
    )
    first = stub.CreateValidation(request, timeout=10)
    second = stub.CreateValidation(request, timeout=10)
    assert second.id != first.id
    listed = stub.ListValidations(
        pb.ListValidationsRequest(session_id=session.id), timeout=10
    )
    assert len(listed.validations) == 2


def test_failed_request_can_be_retried_with_its_id(stub: Stub) -> None:
    session = new_session(stub)
    request_id = str(uuid.uuid4())
    taken = pb.CreatePromptRequest(prompt=pb.Prompt(session_id=session.id, iteration=0))
    stub.CreatePrompt(taken, timeout=10)
    request = pb.CreatePromptRequest(
        prompt=pb.Prompt(session_id=session.id, iteration=0), request_id=request_id
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreatePrompt(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    retry = pb.CreatePromptRequest(
        prompt=pb.Prompt(session_id=session.id, iteration=1), request_id=request_id
    )
    assert stub.CreatePrompt(retry, timeout=10).iteration == 1


def test_request_id_is_remembered_across_restart(daemon: Daemon) -> None:
    request_id = str(uuid.uuid4())
    request = pb.CreateSessionRequest(
        session=pb.Session(image_path="a.jpg", naive_prompt="crash"),
        request_id=request_id,
    )
    with grpc.insecure_channel(daemon.address) as channel:
        first = session_pb2_grpc.SessionServiceStub(channel).CreateSession(
            request, timeout=10
        )
    daemon.kill()
    daemon.start()
    with grpc.insecure_channel(daemon.address) as channel:
        restarted = session_pb2_grpc.SessionServiceStub(channel)
        again = restarted.CreateSession(request, timeout=10)
        listed = restarted.ListSessions(pb.ListSessionsRequest(), timeout=10)
    assert again == first
    assert [item.id for item in listed.sessions] == [first.id]
