"""The state writer's journal: format and atomic replacement."""

from __future__ import annotations

import os
import pathlib

import pytest

from editstore.client import journal as journal_module
from editstore.client.journal import Journal, JournalPatch, write_atomic

pytestmark = pytest.mark.timeout(30)


def test_journal_round_trips(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "state.json"
    written = Journal(
        session_id="s-1",
        document={"current_stage": "intent", "n": 9007199254740993, "t": "é"},
        version=4,
        unsent=[
            JournalPatch({"a": None, "b": {"c": 1}}, request_id="r-1"),
            JournalPatch({"current_stage": "editing"}),
        ],
    )
    written.save(path)
    read = Journal.load(path)
    assert read == written


def test_journal_load_missing_file_returns_none(tmp_path: pathlib.Path) -> None:
    assert Journal.load(tmp_path / "absent.json") is None


def test_journal_rejects_other_files(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"session_id": "s-1"}', encoding="utf-8")
    with pytest.raises(ValueError, match="format"):
        Journal.load(path)


def test_write_atomic_replaces_and_leaves_no_temporary(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "state.json"
    write_atomic(path, b"first")
    write_atomic(path, b"second")
    assert path.read_bytes() == b"second"
    assert sorted(os.listdir(tmp_path)) == ["state.json"]


def test_write_atomic_failure_keeps_old_content(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    write_atomic(path, b"old")

    def failing_fsync(descriptor: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_module.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["state.json"]
