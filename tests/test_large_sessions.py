"""Sessions larger than one gRPC message are read back whole, page by page."""

from __future__ import annotations

import grpc
import pytest

from editstore.client import Client
from editstore.v1 import session_pb2 as pb
from editstore.v1 import session_pb2_grpc
from tests.daemon import Daemon

MESSAGE_OPTIONS = [("grpc.max_receive_message_length", 4 * 1024 * 1024 + 64 * 1024)]
LABEL = "é" * 8000  # 16,000 bytes of UTF-8, near the 16 KiB limit of a text field
ENTITY_COUNT = 600


def add_entities(client: Client) -> str:
    """Create a session with ENTITY_COUNT entities of 16 KB labels."""
    session = client.create_session("/photos/big.jpg", "make the sky dramatic")
    for start in range(0, ENTITY_COUNT, 150):
        entities = [
            {"entity_id": f"object_{n}", "label": LABEL, "confidence": 0.5}
            for n in range(start, start + 150)
        ]
        client.batch_create_entities(session.id, entities)
    return session.id


def fill(client: Client) -> str:
    session_id = add_entities(client)
    client.put_state(session_id, {"notes": "n" * (3 * 1024 * 1024)})
    return session_id


@pytest.mark.timeout(180)
def test_large_session_lists_in_pages_under_limit(daemon: Daemon) -> None:
    with Client(daemon.address) as client:
        session_id = fill(client)
    # A channel with gRPC's default 4 MiB receive limit lists every page.
    with grpc.insecure_channel(daemon.address) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        first = stub.ListEntities(pb.ListEntitiesRequest(session_id=session_id))
        assert first.next_page_token
        assert 0 < len(first.entities) < ENTITY_COUNT
        seen = [entity.entity_id for entity in first.entities]
        token = first.next_page_token
        while token:
            page = stub.ListEntities(
                pb.ListEntitiesRequest(session_id=session_id, page_token=token)
            )
            seen += [entity.entity_id for entity in page.entities]
            token = page.next_page_token
        assert seen == [f"object_{n}" for n in range(ENTITY_COUNT)]
    with grpc.insecure_channel(daemon.address, options=MESSAGE_OPTIONS) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        resumed = stub.ResumeSession(pb.ResumeSessionRequest(id=session_id))
        assert resumed.state.version == 1
        assert resumed.entities_next_page_token
        assert len(resumed.entities) < ENTITY_COUNT


@pytest.mark.timeout(180)
def test_resume_without_state_under_default_limit(daemon: Daemon) -> None:
    # Records alone never make a response pass gRPC's default 4 MiB limit.
    with Client(daemon.address) as client:
        session_id = add_entities(client)
    with grpc.insecure_channel(daemon.address) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        resumed = stub.ResumeSession(pb.ResumeSessionRequest(id=session_id))
        seen = [entity.entity_id for entity in resumed.entities]
        token = resumed.entities_next_page_token
        while token:
            page = stub.ListEntities(
                pb.ListEntitiesRequest(session_id=session_id, page_token=token)
            )
            seen += [entity.entity_id for entity in page.entities]
            token = page.next_page_token

    assert resumed.entities_next_page_token
    assert resumed.ByteSize() < 4 * 1024 * 1024
    assert 0 < len(resumed.entities) < ENTITY_COUNT
    assert seen == [f"object_{n}" for n in range(ENTITY_COUNT)]


@pytest.mark.timeout(180)
def test_client_resumes_large_session_whole(daemon: Daemon) -> None:
    with Client(daemon.address) as client:
        session_id = fill(client)
        resumed = client.resume_session(session_id)
        entities = client.list_entities(session_id)

    assert [entity.entity_id for entity in resumed.entities] == [
        f"object_{n}" for n in range(ENTITY_COUNT)
    ]
    assert all(entity.label == LABEL for entity in resumed.entities)
    assert len(entities) == ENTITY_COUNT
    assert resumed.state.version == 1
    assert len(resumed.state.document["notes"]) == 3 * 1024 * 1024


@pytest.mark.timeout(60)
def test_list_page_token_of_other_session_rejected(daemon: Daemon) -> None:
    with Client(daemon.address) as client:
        first = client.create_session("/a.jpg", "x").id
        second = client.create_session("/b.jpg", "y").id
        client.batch_create_entities(first, [{"entity_id": "a"}, {"entity_id": "b"}])
    with grpc.insecure_channel(daemon.address) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        page = stub.ListEntities(pb.ListEntitiesRequest(session_id=first, page_size=1))
        assert page.next_page_token
        with pytest.raises(grpc.RpcError) as rejected:
            stub.ListEntities(
                pb.ListEntitiesRequest(
                    session_id=second, page_token=page.next_page_token
                )
            )
        assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in rejected.value.details()
