"""Real input made by people outside this project, stored and read back.

Every InstructPix2Pix instruction and every GIER request becomes a session
(its instruction as the naive prompt), each caption or summary a prompt
iteration, and the six COCO objects of one photo become its entities. All of
it must read back equal, character for character. Requests go out as gRPC
futures, many at a time, as a busy agent would send them.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from editstore.v1 import session_pb2 as pb
from editstore.v1 import session_pb2_grpc
from tests.daemon import Daemon

POSTGRES_ENV = "EDITSTORE_TEST_POSTGRES"
Stub = session_pb2_grpc.SessionServiceStub
# Requests in flight at once, as a busy agent sends them.
WINDOW = 200


@pytest.fixture(scope="module")
def stub(server: Daemon) -> Iterator[Stub]:
    with grpc.insecure_channel(server.address) as channel:
        yield session_pb2_grpc.SessionServiceStub(channel)


def call_all(method: Any, requests: list[Any]) -> list[Any]:
    """Send requests as futures, WINDOW at a time, and return the replies."""
    replies: list[Any] = []
    for start in range(0, len(requests), WINDOW):
        futures = [
            method.future(request, timeout=60)
            for request in requests[start : start + WINDOW]
        ]
        replies.extend(future.result() for future in futures)
    return replies


def store(
    stub: Stub, sessions: list[pb.Session], prompts: list[list[str]]
) -> list[str]:
    """Create the sessions, then their prompts; return the session ids."""
    created = call_all(
        stub.CreateSession,
        [pb.CreateSessionRequest(session=session) for session in sessions],
    )
    for reply, session in zip(created, sessions, strict=True):
        assert reply.image_path == session.image_path
        assert reply.naive_prompt == session.naive_prompt
    requests = [
        pb.CreatePromptRequest(
            prompt=pb.Prompt(
                session_id=reply.id, iteration=iteration, positive_prompt=text
            )
        )
        for reply, texts in zip(created, prompts, strict=True)
        for iteration, text in enumerate(texts)
    ]
    call_all(stub.CreatePrompt, requests)
    return [reply.id for reply in created]


def check_read_back(
    stub: Stub, ids: list[str], sessions: list[pb.Session], prompts: list[list[str]]
) -> None:
    resumed = call_all(
        stub.ResumeSession, [pb.ResumeSessionRequest(id=item) for item in ids]
    )
    for reply, session, texts in zip(resumed, sessions, prompts, strict=True):
        assert reply.session.image_path == session.image_path
        assert reply.session.naive_prompt == session.naive_prompt
        assert reply.session.status == pb.SESSION_STATUS_IN_PROGRESS
        assert [prompt.positive_prompt for prompt in reply.prompts] == texts
        assert [prompt.iteration for prompt in reply.prompts] == list(range(len(texts)))


@pytest.mark.timeout(300)
def test_instructpix2pix_edits_read_back_equal(
    stub: Stub, real_data: pathlib.Path
) -> None:
    path = real_data / "instructpix2pix-human-edits.jsonl"
    with path.open(encoding="utf-8") as lines:
        edits = [json.loads(line) for line in lines if line.strip()]
    assert len(edits) == 700
    sessions = [
        pb.Session(
            image_path=f"{path.name}#{index}",
            naive_prompt=edit["edit"],
        )
        for index, edit in enumerate(edits)
    ]
    prompts = [[edit["output"]] for edit in edits]
    ids = store(stub, sessions, prompts)
    check_read_back(stub, ids, sessions, prompts)


@pytest.mark.timeout(300)
def test_gier_requests_read_back_equal(stub: Stub, real_data: pathlib.Path) -> None:
    path = real_data / "gier-test-requests.json"
    with path.open(encoding="utf-8") as file:
        # The file has bare NaN tokens, which Python's json accepts.
        requests = json.load(file)
    assert len(requests) == 618
    sessions = [
        pb.Session(image_path=item["input"], naive_prompt=item["request"])
        for item in requests
    ]
    prompts = [[*item["expert_summary"], *item["amateur_summary"]] for item in requests]
    assert sum(len(texts) for texts in prompts) > 2000
    ids = store(stub, sessions, prompts)
    check_read_back(stub, ids, sessions, prompts)


def test_coco_objects_read_back_as_entities(
    stub: Stub, real_data: pathlib.Path
) -> None:
    folder = real_data / "coco-39769"
    coco = json.loads((folder / "annotations.json").read_text(encoding="utf-8"))
    names = {category["id"]: category["name"] for category in coco["categories"]}
    image = coco["image"]
    pixels = image["width"] * image["height"]
    assert pixels == 640 * 480
    counts: dict[str, int] = {}
    entities = []
    for annotation in coco["annotations"]:
        label = names[annotation["category_id"]]
        number = counts.get(label, 0)
        counts[label] = number + 1
        x, y, width, height = annotation["bbox"]
        entities.append(
            pb.Entity(
                entity_id=f"{label}_{number}",
                label=label,
                bbox=pb.BoundingBox(x=x, y=y, width=width, height=height),
                area_percent=annotation["area"] / pixels * 100,
                mask_path=f"masks/{annotation['id']}.png",
            )
        )
    assert len(entities) == 6
    session = stub.CreateSession(
        pb.CreateSessionRequest(
            session=pb.Session(
                image_path=str(folder / image["file_name"]),
                naive_prompt="make the cats orange",
            )
        ),
        timeout=10,
    )
    stub.BatchCreateEntities(
        pb.BatchCreateEntitiesRequest(session_id=session.id, entities=entities),
        timeout=10,
    )
    listed = stub.ListEntities(
        pb.ListEntitiesRequest(session_id=session.id), timeout=10
    ).entities
    assert len(listed) == 6
    for stored, sent in zip(listed, entities, strict=True):
        assert stored.entity_id == sent.entity_id
        assert stored.label == sent.label
        assert stored.bbox == sent.bbox
        assert stored.area_percent == sent.area_percent
        assert stored.mask_path == sent.mask_path
        assert not stored.HasField("confidence")
    assert sorted(entity.entity_id for entity in listed) == [
        "bed_0",
        "cat_0",
        "cat_1",
        "couch_0",
        "remote_0",
        "remote_1",
    ]
