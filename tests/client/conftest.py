"""Fixtures of the client tests: clients connected to the ``daemon`` fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from editstore.client import Client
from tests.daemon import Daemon


@pytest.fixture
def client(daemon: Daemon) -> Iterator[Client]:
    """Return a synchronous client of the test's daemon."""
    with Client(daemon.address, timeout=10) as connected:
        yield connected
