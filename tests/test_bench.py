"""The benchmarks still run: every one for about a second, at small sizes.

Only that each figure is a finite positive number is checked. Timing targets
are the benchmark's business, not a test's, because the machines that run
the tests are shared and noisy.
"""

from __future__ import annotations

import contextlib
import json
import math
import pathlib
import subprocess
import sys

import pytest

from tests.conftest import fresh_postgres_database

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def has_state_writer() -> bool:
    try:
        from editstore.client import StateWriter  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.timeout(600)
def test_every_benchmark_produces_figures(tmp_path: pathlib.Path) -> None:
    output = tmp_path / "figures.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--watchers",
            "20",
            "--small-sessions",
            "200",
            "--big-sessions",
            "2000",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(output),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=580,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    figures = json.loads(output.read_text())
    names = [figure["name"] for figure in figures]

    assert any(name.startswith("PatchState") for name in names), names
    assert any(name.startswith("StreamStateUpdates") for name in names), names
    assert any(name.startswith("sqlite3") for name in names), names
    assert any(name.startswith("WatchState") for name in names), names
    assert any(name.startswith("ListSessions") for name in names), names
    assert any(name.startswith("GetSession") for name in names), names
    assert any(name.startswith("ResumeSession") for name in names), names
    if has_state_writer():
        assert any(name.startswith("StateWriter.update") for name in names), names
    for figure in figures:
        assert math.isfinite(figure["value"]), figure
        assert figure["value"] > 0, figure
        if figure["baseline"] is not None:
            assert math.isfinite(figure["baseline"]), figure
            assert figure["baseline"] > 0, figure


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_write_floor_prints_each_batch_size(kind: str) -> None:
    command = [sys.executable, "-m", "bench.floor", "--updates", "256"]
    with contextlib.ExitStack() as stack:
        if kind == "postgres":
            # The floor creates its scratch database through this one.
            command += ["--postgres", stack.enter_context(fresh_postgres_database())]
        completed = subprocess.run(
            command,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=280,
            check=False,
        )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "batches of 8",
        "batches of 256",
    ]
    for line in lines:
        steps = line.split("update: ")[1].split(", ")
        assert [step.split()[0] for step in steps] == ["prepare", "apply", "commit"]
        assert all(int(step.split()[1]) > 0 for step in steps)
