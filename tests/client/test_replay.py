"""``editstore replay`` over the real data, with daemon crashes."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(600)


def replay(*args: str, timeout: float = 540) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "editstore.client.replay", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def data_args(real_data: pathlib.Path) -> list[str]:
    return [
        "--instructpix2pix",
        str(real_data / "instructpix2pix-human-edits.jsonl"),
        "--gier",
        str(real_data / "gier-test-requests.json"),
        "--coco",
        str(real_data / "coco-39769"),
    ]


def test_replay_with_restarts_loses_and_doubles_nothing(
    real_data: pathlib.Path, database_url: str, tmp_path: pathlib.Path
) -> None:
    result = replay(
        "--start-daemon",
        "--database",
        database_url,
        "--daemon-log",
        str(tmp_path / "daemon.log"),
        *data_args(real_data),
        "--limit",
        "20",
        "--restart-daemon-every",
        "7",
        "--json",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    counts = report["counts"]
    assert counts["sessions"] == {"sent": 20, "stored": 20, "equal": 20}
    for kind in ("prompts", "entities", "validations", "feedback", "states"):
        assert counts[kind]["sent"] > 0, kind
        assert counts[kind]["stored"] == counts[kind]["sent"], kind
        assert counts[kind]["equal"] == counts[kind]["sent"], kind
    # 6 entities in the COCO photo, one validation and feedback per session.
    assert counts["entities"]["sent"] == 120
    assert counts["validations"]["sent"] == 20
    assert counts["feedback"]["sent"] == 20
    # After sessions 7 and 14, and once more before reading back.
    assert report["daemon_restarts"] == 3
    assert report["ok"] is True


def test_replay_prints_table(real_data: pathlib.Path, tmp_path: pathlib.Path) -> None:
    result = replay(
        "--start-daemon",
        "--database",
        f"sqlite:///{tmp_path / 'replay.db'}",
        *data_args(real_data),
        "--limit",
        "4",
        "--journal-dir",
        str(tmp_path / "journals"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["kind", "sent", "stored", "equal"]
    rows = {line[:16].strip(): line[16:].split() for line in lines[1:7]}
    assert rows["sessions"] == ["4", "4", "4"]
    assert rows["state documents"] == ["4", "4", "4"]
    assert rows["entities"] == ["24", "24", "24"]
    # Beside each journal is its writer's lock file, .NAME.lock.
    journals = sorted((tmp_path / "journals").glob("*.json"))
    assert len(journals) == 4
    for journal in journals:
        content = json.loads(journal.read_text(encoding="utf-8"))
        assert content["unsent"] == []
        assert content["document"]["current_stage"] == "completed"


def test_replay_restart_needs_started_daemon(real_data: pathlib.Path) -> None:
    result = replay(
        "--address", "127.0.0.1:1", *data_args(real_data), "--restart-daemon-every", "2"
    )
    assert result.returncode == 2
    assert "--restart-daemon-every needs --start-daemon" in result.stderr
