"""The state writer's schedule, merging and retries, on a fake clock.

These tests drive `StateWriter` with a fake clock and a fake state service,
so that a 5-second cadence is checked without waiting 5 seconds.
"""

from __future__ import annotations

import json
import pathlib
import threading
from collections.abc import Iterator

import pytest

from editstore.client import SessionStatus, StateWriter
from editstore.client.errors import InvalidArgument
from editstore.client.settings import RetryPolicy
from tests.client.fakes import FakeClock, FakeStateService

pytestmark = pytest.mark.timeout(30)

BACKOFF = RetryPolicy(initial_backoff=1.0, max_backoff=1.0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def service() -> FakeStateService:
    return FakeStateService()


@pytest.fixture
def writer(clock: FakeClock, service: FakeStateService) -> Iterator[StateWriter]:
    writer = StateWriter(
        service, "s-1", flush_interval=5.0, clock=clock, backoff=BACKOFF
    )
    writer.wake()
    try:
        yield writer
    finally:
        service.down = False
        writer.close(timeout=5)


def test_update_waits_for_flush_interval(
    writer: StateWriter, clock: FakeClock, service: FakeStateService
) -> None:
    clock.advance(1.0)
    writer.update({"k": 1})
    writer.wake()
    clock.advance(3.9)
    writer.wake()
    assert service.calls == []
    clock.advance(0.1)
    writer.wake()
    assert [call.patch for call in service.calls] == [{"k": 1}]


def test_cadence_repeats_every_interval(
    writer: StateWriter, clock: FakeClock, service: FakeStateService
) -> None:
    for second in range(1, 16):
        clock.advance(1.0)
        writer.update({f"k{second}": second})
        writer.wake()
    # Sends at 5, 10 and 15 seconds, each with the updates since the last.
    assert [call.patch for call in service.calls] == [
        {f"k{second}": second for second in range(1, 6)},
        {f"k{second}": second for second in range(6, 11)},
        {f"k{second}": second for second in range(11, 16)},
    ]


def test_quiet_interval_sends_nothing(
    writer: StateWriter, clock: FakeClock, service: FakeStateService
) -> None:
    clock.advance(12.0)
    writer.wake()
    assert service.calls == []


def test_updates_are_merged_into_one_patch(
    writer: StateWriter, clock: FakeClock, service: FakeStateService
) -> None:
    writer.update({"intent": {"edit_type": "style", "confidence": 0.4}})
    writer.update({"intent": {"confidence": 0.9}, "scratch": "x"})
    writer.update({"scratch": None})
    clock.advance(5.0)
    writer.wake()
    assert len(service.calls) == 1
    assert service.calls[0].patch == {
        "intent": {"edit_type": "style", "confidence": 0.9},
        "scratch": None,
    }
    assert service.document == {"intent": {"edit_type": "style", "confidence": 0.9}}


def test_important_update_is_sent_at_once(
    writer: StateWriter, service: FakeStateService
) -> None:
    writer.update({"k": 1})
    writer.update({"validation": {"score": 0.8}}, important=True)
    writer.wake()
    assert [call.patch for call in service.calls] == [
        {"k": 1, "validation": {"score": 0.8}}
    ]


def test_stage_change_is_sent_at_once(
    writer: StateWriter, clock: FakeClock, service: FakeStateService
) -> None:
    writer.update({"current_stage": "analysis"})
    writer.wake()
    assert len(service.calls) == 1
    writer.update({"current_stage": "analysis", "k": 1})
    writer.wake()
    assert len(service.calls) == 1
    writer.update({"current_stage": "intent"})
    writer.wake()
    assert len(service.calls) == 2


def test_completion_is_sent_at_once(
    writer: StateWriter, service: FakeStateService
) -> None:
    writer.update({"status": "completed"})
    writer.wake()
    writer.update({"completed": True})
    writer.wake()
    writer.update({"completed": False})
    writer.wake()
    assert [call.patch for call in service.calls] == [
        {"status": "completed"},
        {"completed": True},
    ]


def test_flush_returns_after_acknowledgement(
    writer: StateWriter, service: FakeStateService
) -> None:
    for index in range(30):
        writer.update({f"k{index}": index})
    assert writer.flush(timeout=5) is True
    assert service.document == {f"k{index}": index for index in range(30)}
    assert writer.last_state is not None
    assert writer.last_state.version == 1


def test_update_keeps_patch_as_given(
    writer: StateWriter, service: FakeStateService
) -> None:
    patch = {"prompts": {"iteration_0": {"positive": "a"}}}
    writer.update(patch)
    patch["prompts"]["iteration_0"]["positive"] = "changed later"
    writer.flush(timeout=5)
    assert service.document == {"prompts": {"iteration_0": {"positive": "a"}}}


def test_nan_update_is_dropped_and_raised(
    writer: StateWriter, service: FakeStateService
) -> None:
    writer.update({"k": 1})
    writer.update({"score": float("nan")})
    with pytest.raises(ValueError):
        writer.flush(timeout=5)
    writer.update({"tags": {"sky", "sun"}})
    with pytest.raises(TypeError):
        writer.flush(timeout=5)
    assert writer.flush(timeout=5) is True
    assert service.document == {"k": 1}


def test_update_rejects_unserialisable_object(writer: StateWriter) -> None:
    with pytest.raises(TypeError):
        writer.update({"model": object()})


def test_update_copies_enums_and_tuples(
    writer: StateWriter, service: FakeStateService
) -> None:
    writer.update({"status_name": SessionStatus.COMPLETED, "box": (1, 2, 3, 4)})
    writer.flush(timeout=5)
    assert service.document == {"status_name": "completed", "box": [1, 2, 3, 4]}


def test_unavailable_is_retried_with_same_request_id(
    writer: StateWriter, clock: FakeClock, service: FakeStateService
) -> None:
    service.down = True
    writer.update({"k": 1}, important=True)
    writer.wake()
    assert len(service.calls) == 1
    writer.wake()
    # The backoff has not passed on the fake clock: no second attempt yet.
    assert len(service.calls) == 1
    clock.advance(1.0)
    writer.wake()
    assert len(service.calls) == 2
    service.down = False
    clock.advance(1.0)
    writer.wake()
    assert len(service.calls) == 3
    assert len({call.request_id for call in service.calls}) == 1
    assert service.document == {"k": 1}
    assert service.version == 1


def test_lost_response_is_applied_once(
    writer: StateWriter, clock: FakeClock, service: FakeStateService
) -> None:
    service.down = True
    writer.update({"counter": 1}, important=True)
    writer.wake()
    # The daemon applies the retry; then its response to a later retry of
    # the same request id is the first response, not a second version.
    service.down = False
    clock.advance(1.0)
    writer.wake()
    assert service.version == 1
    first = service.calls[-1].request_id
    assert first is not None
    assert service.patch_state("s-1", {"counter": 1}, request_id=first).version == 1
    assert service.version == 1


def test_updates_during_send_go_in_next_batch(
    writer: StateWriter, clock: FakeClock, service: FakeStateService
) -> None:
    service.gate = threading.Event()
    writer.update({"a": 1}, important=True)
    assert service.entered.wait(5)
    writer.update({"b": 2})
    service.gate.set()
    writer.wake()
    clock.advance(5.0)
    writer.wake()
    assert [call.patch for call in service.calls] == [{"a": 1}, {"b": 2}]
    assert service.calls[0].request_id != service.calls[1].request_id


def test_pending_updates_wait_for_retried_batch(
    writer: StateWriter, clock: FakeClock, service: FakeStateService
) -> None:
    service.down = True
    writer.update({"a": 1}, important=True)
    writer.wake()
    writer.update({"b": 2})
    writer.update({"c": 3}, important=True)
    clock.advance(1.0)
    writer.wake()
    # Both attempts carried only the first batch.
    assert [call.patch for call in service.calls] == [{"a": 1}, {"a": 1}]
    service.down = False
    clock.advance(1.0)
    writer.wake()
    writer.wake()
    assert [call.patch for call in service.calls][-2:] == [{"a": 1}, {"b": 2, "c": 3}]
    assert service.document == {"a": 1, "b": 2, "c": 3}


def test_unmergeable_updates_are_sent_in_order(
    writer: StateWriter, service: FakeStateService
) -> None:
    service.document = {"a": {"old": True}}
    writer.update({"a": None})
    writer.update({"a": {"x": 1}})
    writer.flush(timeout=5)
    assert [call.patch for call in service.calls] == [{"a": None}, {"a": {"x": 1}}]
    assert service.document == {"a": {"x": 1}}


def test_rejected_batch_is_raised_by_flush(
    writer: StateWriter, service: FakeStateService
) -> None:
    service.failures.append(InvalidArgument("intent.confidence must be from 0 to 1"))
    writer.update({"intent": {"confidence": 7}})
    with pytest.raises(InvalidArgument):
        writer.flush(timeout=5)
    writer.update({"k": 1})
    assert writer.flush(timeout=5) is True
    assert service.document == {"k": 1}


def test_update_after_close_raises(writer: StateWriter) -> None:
    writer.close(timeout=5)
    with pytest.raises(RuntimeError):
        writer.update({"k": 1})


def test_close_sends_pending_updates(
    clock: FakeClock, service: FakeStateService
) -> None:
    writer = StateWriter(service, "s-1", clock=clock)
    writer.update({"k": 1})
    assert writer.close(timeout=5) is True
    assert service.document == {"k": 1}


def test_close_while_down_keeps_journal(
    tmp_path: pathlib.Path, clock: FakeClock, service: FakeStateService
) -> None:
    journal = tmp_path / "state.json"
    service.down = True
    writer = StateWriter(
        service, "s-1", clock=clock, journal_path=journal, backoff=BACKOFF
    )
    writer.update({"a": 1})
    writer.update({"b": 2}, important=True)
    writer.wake()
    writer.update({"c": 3})
    assert writer.close(timeout=0.5) is False
    content = json.loads(journal.read_text(encoding="utf-8"))
    assert content["session_id"] == "s-1"
    assert content["unsent"][0]["merge_patch"] == {"a": 1, "b": 2}
    assert content["unsent"][0]["request_id"] == service.calls[0].request_id
    assert content["unsent"][1] == {"request_id": None, "merge_patch": {"c": 3}}


def test_recover_resends_with_journal_request_id(
    tmp_path: pathlib.Path, clock: FakeClock, service: FakeStateService
) -> None:
    journal = tmp_path / "state.json"
    service.down = True
    first = StateWriter(service, "s-1", clock=clock, journal_path=journal)
    first.update({"a": 1}, important=True)
    first.wake()
    first.update({"b": 2})
    assert first.close(timeout=0.2) is False
    # The daemon had applied the first batch; only its response was lost.
    service.down = False
    request_id = service.calls[0].request_id
    service.patch_state("s-1", {"a": 1}, request_id=request_id)
    assert service.version == 1

    second = StateWriter.recover(service, journal, clock=clock)
    try:
        assert second.flush(timeout=5) is True
    finally:
        second.close(timeout=5)
    assert service.document == {"a": 1, "b": 2}
    assert service.version == 2
    content = json.loads(journal.read_text(encoding="utf-8"))
    assert content["unsent"] == []
    assert content["document"] == {"a": 1, "b": 2}
    assert content["version"] == 2


def test_journal_of_other_session_is_rejected(
    tmp_path: pathlib.Path, clock: FakeClock, service: FakeStateService
) -> None:
    journal = tmp_path / "state.json"
    writer = StateWriter(service, "s-1", clock=clock, journal_path=journal)
    writer.update({"a": 1})
    writer.close(timeout=5)
    with pytest.raises(ValueError, match="belongs to session s-1"):
        StateWriter(service, "s-2", clock=clock, journal_path=journal)


def test_flush_does_not_rush_next_update(
    writer: StateWriter, clock: FakeClock, service: FakeStateService
) -> None:
    assert writer.flush(timeout=5) is True
    writer.update({"k": 1})
    writer.wake()
    assert service.calls == []
    clock.advance(5.0)
    writer.wake()
    assert [call.patch for call in service.calls] == [{"k": 1}]
