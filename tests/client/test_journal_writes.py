"""When the state writers write their journal, and what a failed write leaves.

Each test runs a writer against a real daemon.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import time
from collections.abc import Iterator

import pytest

from editstore.client import AsyncClient, AsyncStateWriter, Client, StateWriter
from editstore.client.journal import Journal, JournalInUse
from tests.conftest import small_tmpfs
from tests.daemon import Daemon

pytestmark = pytest.mark.timeout(60)


def wait_for_journal(path: pathlib.Path, keys: set[str]) -> dict[str, object]:
    """Return the unsent patches of the journal once they hold ``keys``."""
    deadline = time.monotonic() + 10
    while True:
        journal = Journal.load(path)
        unsent: dict[str, object] = {}
        for item in journal.unsent if journal is not None else []:
            unsent.update(item.merge_patch)
        if keys <= set(unsent) or time.monotonic() > deadline:
            return unsent
        time.sleep(0.02)


def test_journal_writes_gathered_during_updates(
    client: Client, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Updates that keep coming are journaled together, not one write each."""
    writes = 0
    save = Journal.save

    def counted_save(journal: Journal, path: str) -> None:
        nonlocal writes
        writes += 1
        save(journal, path)

    monkeypatch.setattr(Journal, "save", counted_save)
    session = client.create_session("/photos/1.png", "make it snow")
    path = tmp_path / "journal.json"
    writer = StateWriter(client, session.id, flush_interval=60, journal_path=path)
    try:
        started = time.monotonic()
        updates = 0
        while time.monotonic() - started < 1.0:
            writer.update({f"key_{updates}": updates})
            updates += 1
            time.sleep(0.0005)
        unsent = wait_for_journal(path, {f"key_{updates - 1}"})
        elapsed = time.monotonic() - started
        journal_writes = writes
    finally:
        writer.close()

    assert len(unsent) == updates
    # One write at the first update, then at most one per 0.1 s gathering
    # wait: a slow machine makes fewer, never more.
    assert journal_writes <= 2 + elapsed / 0.1
    assert updates > 3 * journal_writes


@pytest.fixture
def tiny_disk(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    with small_tmpfs(tmp_path / "tiny-disk", "64k") as folder:
        yield folder


def test_failed_journal_write_removes_older_journal(
    client: Client, tiny_disk: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A journal that could not be replaced must not be recovered from.

    The first update fits in the journal. The second does not, and is sent
    and acknowledged. A writer built on the older journal would send the
    first update again, after the second.
    """
    session = client.create_session("/photos/1.png", "make it snow")
    path = tiny_disk / "journal.json"
    with caplog.at_level(logging.WARNING, logger="editstore.client.writer"):
        writer = StateWriter(client, session.id, flush_interval=60, journal_path=path)
        writer.update({"stage": "a"})
        assert wait_for_journal(path, {"stage"}) == {"stage": "a"}
        writer.update({"stage": "b", "blob": "x" * 100_000})
        assert writer.flush(timeout=30)
        writer.update({"stage": "c", "blob": None})
        assert writer.close(timeout=30)

    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert not path.exists() or json.loads(path.read_text())["unsent"] == []
    assert len(errors) == 1
    assert "the older journal was removed" in errors[0].getMessage()
    assert not any(record.exc_info for record in caplog.records)
    with StateWriter(client, session.id, journal_path=path) as again:
        again.flush()
    state = client.get_state(session.id)
    assert state.document == {"stage": "c"}
    assert state.version == 2


def test_second_writer_on_journal_rejected(
    client: Client, tmp_path: pathlib.Path
) -> None:
    session = client.create_session("/photos/1.png", "make it snow")
    path = tmp_path / "journal.json"
    first = StateWriter(client, session.id, journal_path=path)
    try:
        with pytest.raises(JournalInUse) as in_use:
            StateWriter(client, session.id, journal_path=path)
    finally:
        first.close()
    with StateWriter(client, session.id, journal_path=path) as after_close:
        after_close.update({"step": 1})

    assert "in use by another state writer" in str(in_use.value)
    assert str(path) in str(in_use.value)
    assert client.get_state(session.id).document == {"step": 1}


def test_async_writer_rejected_on_sync_journal(
    daemon: Daemon, tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "journal.json"

    async def run() -> None:
        async with AsyncClient(daemon.address) as client:
            session = await client.create_session("/photos/1.png", "make it snow")
            with Client(daemon.address) as sync_client:
                with StateWriter(sync_client, session.id, journal_path=path):
                    with pytest.raises(JournalInUse):
                        AsyncStateWriter(client, session.id, journal_path=path)

    asyncio.run(run())
