"""The Prometheus endpoint: what an operator scraping ``/metrics`` reads."""

from __future__ import annotations

import json
import pathlib
import select
import socket
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from editstore.server.metrics import SCRAPE_INTERVAL
from editstore.v1 import session_pb2 as pb
from editstore.v1 import session_pb2_grpc, state_pb2, state_pb2_grpc
from tests.daemon import Daemon, free_port

pytestmark = pytest.mark.timeout(60)

PATCH = "editstore.v1.StateService/PatchState"
STREAM = "editstore.v1.StateService/StreamStateUpdates"
WATCH = "editstore.v1.StateService/WatchState"


@pytest.fixture
def metered(tmp_path: pathlib.Path) -> Iterator[tuple[Daemon, str]]:
    metrics_address = f"127.0.0.1:{free_port()}"
    process = Daemon(
        f"sqlite:///{tmp_path / 'metrics.db'}",
        port=free_port(),
        log_path=tmp_path / "daemon.log",
        extra_args=["--metrics-listen", metrics_address],
    )
    process.start()
    try:
        yield process, f"http://{metrics_address}/metrics"
    finally:
        process.stop()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return every sample of the endpoint by name and sorted labels."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def calls(samples: dict, method: str, code: str) -> float:
    key = ("editstore_calls_total", (("code", code), ("method", method)))
    return samples.get(key, 0.0)


def test_metrics_count_calls_by_code(metered: tuple[Daemon, str]) -> None:
    daemon, url = metered
    with grpc.insecure_channel(daemon.address) as channel:
        sessions = session_pb2_grpc.SessionServiceStub(channel)
        states = state_pb2_grpc.StateServiceStub(channel)
        session_id = sessions.CreateSession(
            pb.CreateSessionRequest(
                session=pb.Session(image_path="/a.jpg", naive_prompt="brighten")
            ),
            timeout=10,
        ).id
        for step in range(3):
            states.PatchState(
                state_pb2.PatchStateRequest(
                    session_id=session_id, merge_patch_json=json.dumps({"step": step})
                ),
                timeout=10,
            )
        for session, patch in (("missing", "{}"), (session_id, "[1]")):
            with pytest.raises(grpc.RpcError):
                states.PatchState(
                    state_pb2.PatchStateRequest(
                        session_id=session, merge_patch_json=patch
                    ),
                    timeout=10,
                )
        updates = [
            state_pb2.StreamStateUpdatesRequest(
                sequence=sequence,
                session_id=session_id,
                merge_patch_json="{}" if sequence != 3 else "not json",
            )
            for sequence in range(1, 6)
        ]
        acks = list(states.StreamStateUpdates(iter(updates), timeout=10))
        watch = states.WatchState(
            state_pb2.WatchStateRequest(session_id=session_id), timeout=10
        )
        assert next(watch).type == state_pb2.WATCH_EVENT_TYPE_SNAPSHOT
        during_watch = scrape(url)
        watch.cancel()

    assert [ack.code for ack in acks] == [0, 0, 3, 0, 0]
    assert calls(during_watch, PATCH, "OK") == 3
    assert calls(during_watch, PATCH, "NOT_FOUND") == 1
    assert calls(during_watch, PATCH, "INVALID_ARGUMENT") == 1
    assert calls(during_watch, STREAM, "OK") == 1
    stream_ok = ("editstore_stream_updates_total", (("code", "OK"),))
    stream_invalid = ("editstore_stream_updates_total", (("code", "INVALID_ARGUMENT"),))
    assert during_watch[stream_ok] == 4
    assert during_watch[stream_invalid] == 1
    patch_count = ("editstore_call_duration_seconds_count", (("method", PATCH),))
    patch_under_10s = (
        "editstore_call_duration_seconds_bucket",
        (("le", "10.0"), ("method", PATCH)),
    )
    assert during_watch[patch_count] == 5
    assert during_watch[patch_under_10s] == 5
    assert during_watch[("editstore_watchers", ())] == 1
    assert during_watch[("editstore_streams_open", ())] == 1
    # CreateSession, three patches and four stream updates were written.
    assert during_watch[("editstore_writer_writes_total", ())] >= 8
    assert during_watch[("editstore_writer_transactions_total", ())] >= 1
    database_bytes = during_watch[("editstore_database_bytes", ())]
    assert database_bytes >= daemon_file_size(daemon)


def daemon_file_size(daemon: Daemon) -> int:
    path = pathlib.Path(daemon.database_url.removeprefix("sqlite:///"))
    with sqlite3.connect(path) as connection:
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
    return int(pages * page_size)


def test_metrics_watch_end_counted(metered: tuple[Daemon, str]) -> None:
    daemon, url = metered
    with grpc.insecure_channel(daemon.address) as channel:
        states = state_pb2_grpc.StateServiceStub(channel)
        with pytest.raises(grpc.RpcError) as missing:
            next(
                states.WatchState(
                    state_pb2.WatchStateRequest(session_id="nobody"), timeout=10
                )
            )
    samples = scrape(url)

    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert calls(samples, WATCH, "NOT_FOUND") == 1
    assert samples[("editstore_watchers", ())] == 0


def test_metrics_scrapes_take_turns(metered: tuple[Daemon, str]) -> None:
    # Scrapers without pause are served one at a time, so they cannot take
    # the daemon's time from its calls. Each still gets its page.
    _, url = metered
    pages: list[dict] = []
    failures: list[BaseException] = []

    def scrape_three(query: str) -> None:
        try:
            for _ in range(3):
                pages.append(scrape(url + query))
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)

    queries = ["", "", "", "?name[]=editstore_watchers"]
    scrapers = [threading.Thread(target=scrape_three, args=(q,)) for q in queries]
    started = time.monotonic()
    for scraper in scrapers:
        scraper.start()
    for scraper in scrapers:
        scraper.join(timeout=30)
    elapsed = time.monotonic() - started

    assert failures == []
    assert len(pages) == 12
    assert elapsed >= 11 * SCRAPE_INTERVAL
    full = [page for page in pages if len(page) > 1]
    assert len(full) == 9
    assert all(("editstore_streams_open", ()) in page for page in full)
    assert [page for page in pages if len(page) == 1] == [
        {("editstore_watchers", ()): 0.0}
    ] * 3


def test_metrics_idle_connections_bounded(metered: tuple[Daemon, str]) -> None:
    # Connections that never send a request take at most 16 threads; the
    # others are closed at once, and scrapes work again once they go.
    daemon, url = metered
    assert daemon.process is not None
    status = pathlib.Path(f"/proc/{daemon.process.pid}/status")

    def threads() -> int:
        for line in status.read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
        raise AssertionError("no thread count")

    before = threads()
    host, port = url.removeprefix("http://").split("/")[0].rsplit(":", 1)
    idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(40)]
    ended: set[socket.socket] = set()
    deadline = time.monotonic() + 5
    while len(ended) < 40 - 16 and time.monotonic() < deadline:
        readable, _, _ = select.select([c for c in idle if c not in ended], [], [], 0.2)
        ended.update(c for c in readable if c.recv(1) == b"")
    time.sleep(0.5)
    readable, _, _ = select.select([c for c in idle if c not in ended], [], [], 0)
    closed = len(ended) + len(readable)
    during = threads()
    for connection in idle:
        connection.close()
    deadline = time.monotonic() + 10
    page: dict = {}
    while not page:
        try:
            page = scrape(url)
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.2)

    assert closed == 40 - 16
    assert during <= before + 16
    assert ("editstore_streams_open", ()) in page


def test_metrics_listen_invalid_rejected(tmp_path: pathlib.Path) -> None:
    process = Daemon(
        f"sqlite:///{tmp_path / 'bad.db'}",
        port=free_port(),
        log_path=tmp_path / "daemon.log",
        extra_args=["--metrics-listen", "9464"],
    )
    with pytest.raises(RuntimeError):
        process.start(timeout=10)
    log = process.log_path.read_text()
    assert "--metrics-listen must be HOST:PORT" in log
    assert "'9464'" in log
