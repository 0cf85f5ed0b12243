"""The StateService contract checked by a Node.js client built from the protos.

``tests/node/state_contract.js`` loads only the ``.proto`` files of
``protos/`` with ``@grpc/proto-loader`` and talks to a real daemon with
``@grpc/grpc-js``. Its packages are installed once with ``npm ci`` from
``tests/node/package-lock.json`` when ``tests/node/node_modules`` is missing.

Without ``node`` or ``npm``, or when the install fails (no registry), the test
is skipped, unless ``EDITSTORE_REQUIRE_NODE=1`` is set, as CI does, and then
it fails.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

from tests.daemon import Daemon

pytestmark = pytest.mark.timeout(400)

NODE_DIR = pathlib.Path(__file__).resolve().parent / "node"
SCRIPT = NODE_DIR / "state_contract.js"
REQUIRE_NODE_ENV = "EDITSTORE_REQUIRE_NODE"
NPM_TIMEOUT_SECONDS = 300
SCRIPT_TIMEOUT_SECONDS = 90
CHECKS = (
    "ok PutState with expected_version 0 stores the document exactly, version 1",
    "ok PatchState applies the merge patch: replaced, removed and added members",
    "ok WatchState from version 1 sends the CHANGE with its document and patch",
    "ok StreamStateUpdates acknowledges each update in order, a bad one with its code",
    "ok DeleteSession ends the watch with SESSION_DELETED",
)


def _unavailable(reason: str) -> None:
    """Fail when Node.js is required, else skip."""
    if os.environ.get(REQUIRE_NODE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_NODE_ENV}=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def node() -> str:
    """Return the node executable with the script's packages installed."""
    node_path = shutil.which("node")
    if node_path is None:
        _unavailable("node is not installed; install Node.js 20 or later")
    assert node_path is not None
    if (NODE_DIR / "node_modules").is_dir():
        return node_path
    npm_path = shutil.which("npm")
    if npm_path is None:
        _unavailable("npm is not installed; it comes with Node.js")
    assert npm_path is not None
    try:
        install = subprocess.run(
            [npm_path, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        _unavailable(f"npm ci in {NODE_DIR} timed out after {NPM_TIMEOUT_SECONDS} s")
    if install.returncode != 0:
        # A half-made node_modules would make the next run skip the install.
        shutil.rmtree(NODE_DIR / "node_modules", ignore_errors=True)
        _unavailable(
            f"npm ci in {NODE_DIR} failed with exit code {install.returncode}:\n"
            + install.stderr[-2000:]
        )
    return node_path


def test_node_client_follows_state_contract(node: str, daemon: Daemon) -> None:
    result = subprocess.run(
        [node, str(SCRIPT), daemon.address],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_SECONDS,
    )

    print(result.stdout)
    assert result.returncode == 0, result.stderr
    for check in CHECKS:
        assert check in result.stdout.splitlines()
    assert result.stdout.splitlines()[-1] == "all checks passed"
    assert result.stderr == ""
