"""The state writer in a real program that exits, against a real daemon.

Each test runs a small agent program in a subprocess: it makes 30 updates
through a `StateWriter` (none important, so none is sent before exit) and
then returns from main, calls ``sys.exit`` or dies of an exception.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap

import pytest

from editstore.client import Client, StateWriter
from tests.daemon import Daemon

pytestmark = pytest.mark.timeout(180)

AGENT = textwrap.dedent(
    """
    import os
    import signal
    import sys
    import time

    from editstore.client import Client, StateWriter

    address, session_id, ending, journal, exit_timeout = sys.argv[1:6]


    def main() -> None:
        client = Client(address)
        writer = StateWriter(
            client,
            session_id,
            journal_path=journal or None,
            exit_timeout=float(exit_timeout),
        )
        for index in range(30):
            writer.update({f"key_{index:02d}": index})
        if ending == "exit":
            sys.exit(3)
        if ending == "raise":
            raise RuntimeError("the agent crashed")
        if ending == "kill":
            # Ten times the writer's journal delay, then a death that runs
            # no exit handler.
            time.sleep(1)
            os.kill(os.getpid(), signal.SIGKILL)


    main()
    """
)

RECOVER = textwrap.dedent(
    """
    import sys

    from editstore.client import Client, StateWriter

    address, journal = sys.argv[1:3]
    writer = StateWriter.recover(Client(address), journal)
    sys.exit(0 if writer.close(timeout=30) else 1)
    """
)

EXPECTED = {f"key_{index:02d}": index for index in range(30)}


def run_program(
    source: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", source, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("ending", "exit_code"), [("return", 0), ("exit", 3), ("raise", 1)]
)
def test_updates_are_stored_when_program_ends(
    daemon: Daemon, ending: str, exit_code: int
) -> None:
    with Client(daemon.address) as client:
        session = client.create_session("/photos/39769.png", "make the cats purple")
        result = run_program(AGENT, daemon.address, session.id, ending, "", "10")
        assert result.returncode == exit_code, result.stderr
        state = client.get_state(session.id)
    assert state.document == EXPECTED
    assert state.version == 1


def test_daemon_down_at_exit_leaves_journal(
    daemon: Daemon, tmp_path: pathlib.Path
) -> None:
    journal = tmp_path / "agent-state.json"
    with Client(daemon.address) as client:
        session = client.create_session("/photos/39769.png", "make the cats purple")
    daemon.kill()

    # Bounded by the writer's exit timeout of 2 s; the subprocess timeout
    # only stops a program that would hang.
    result = run_program(
        AGENT, daemon.address, session.id, "return", str(journal), "2", timeout=60
    )
    assert result.returncode == 0, result.stderr

    content = json.loads(journal.read_text(encoding="utf-8"))
    assert content["session_id"] == session.id
    unsent: dict[str, object] = {}
    for item in content["unsent"]:
        unsent.update(item["merge_patch"])
    assert unsent == EXPECTED

    daemon.start()
    result = run_program(RECOVER, daemon.address, str(journal))
    assert result.returncode == 0, result.stderr
    with Client(daemon.address) as client:
        state = client.get_state(session.id)
    assert state.document == EXPECTED
    assert state.version == 1
    recovered = json.loads(journal.read_text(encoding="utf-8"))
    assert recovered["unsent"] == []
    assert recovered["document"] == EXPECTED


AGENT_ASYNC = textwrap.dedent(
    """
    import asyncio
    import os
    import signal
    import sys

    from editstore.client import AsyncClient, AsyncStateWriter

    address, session_id, journal = sys.argv[1:4]


    async def main() -> None:
        client = AsyncClient(address)
        writer = AsyncStateWriter(client, session_id, journal_path=journal)
        for index in range(30):
            writer.update({f"key_{index:02d}": index})
        await asyncio.sleep(1)
        os.kill(os.getpid(), signal.SIGKILL)


    asyncio.run(main())
    """
)


@pytest.mark.parametrize("writer", ["sync", "async"])
def test_killed_program_leaves_updates_in_journal(
    daemon: Daemon, tmp_path: pathlib.Path, writer: str
) -> None:
    # Nothing was sent: the interval is 5 s and no update is important. The
    # journal alone keeps the updates.
    journal = tmp_path / "agent-state.json"
    with Client(daemon.address) as client:
        session = client.create_session("/photos/39769.png", "make the cats purple")
    args: tuple[str, ...]
    if writer == "sync":
        args = (AGENT, daemon.address, session.id, "kill", str(journal), "10")
    else:
        args = (AGENT_ASYNC, daemon.address, session.id, str(journal))
    result = run_program(*args)
    assert result.returncode == -9, result.stderr

    content = json.loads(journal.read_text(encoding="utf-8"))
    unsent: dict[str, object] = {}
    for item in content["unsent"]:
        unsent.update(item["merge_patch"])
    assert unsent == EXPECTED
    with Client(daemon.address) as client:
        assert client.get_state(session.id).version == 0
    result = run_program(RECOVER, daemon.address, str(journal))
    assert result.returncode == 0, result.stderr
    with Client(daemon.address) as client:
        state = client.get_state(session.id)
    assert state.document == EXPECTED
    assert state.version == 1


def test_recovery_does_not_apply_a_landed_batch_twice(
    daemon: Daemon, tmp_path: pathlib.Path
) -> None:
    journal = tmp_path / "agent-state.json"
    with Client(daemon.address) as client:
        session = client.create_session("/photos/39769.png", "make the cats purple")
    daemon.kill()
    result = run_program(AGENT, daemon.address, session.id, "return", str(journal), "1")
    assert result.returncode == 0, result.stderr
    batch = json.loads(journal.read_text(encoding="utf-8"))["unsent"][0]
    assert batch["request_id"]

    # The batch reached the daemon just before the program died: the daemon
    # applied it, and the program never saw the response.
    daemon.start()
    with Client(daemon.address) as client:
        landed = client.patch_state(
            session.id, batch["merge_patch"], request_id=batch["request_id"]
        )
        assert landed.version == 1

        writer = StateWriter.recover(client, journal)
        assert writer.close(timeout=30) is True
        state = client.get_state(session.id)
    assert state.document == EXPECTED
    assert state.version == 1


def test_writer_survives_daemon_restart(daemon: Daemon, tmp_path: pathlib.Path) -> None:
    with Client(daemon.address) as client:
        session = client.create_session("/photos/39769.png", "make the cats purple")
        with StateWriter(client, session.id, journal_path=tmp_path / "s.json") as w:
            for index in range(10):
                w.update({f"key_{index:02d}": index})
            assert w.flush(timeout=30) is True
            daemon.kill()
            for index in range(10, 30):
                w.update({f"key_{index:02d}": index})
            assert w.flush(timeout=0.5) is False
            daemon.start()
            assert w.flush(timeout=60) is True
        state = client.get_state(session.id)
    assert state.document == EXPECTED
    assert state.version == 2
