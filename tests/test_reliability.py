"""Crashes, draining, full disks, stream limits and security of the daemon."""

from __future__ import annotations

import json
import logging
import pathlib
import re
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest

from editstore.server.logs import RateLimitedLog
from editstore.v1 import session_pb2 as pb
from editstore.v1 import session_pb2_grpc, state_pb2, state_pb2_grpc
from tests.conftest import end_connections, small_tmpfs
from tests.daemon import Daemon, free_port


def stubs(
    address: str,
) -> tuple[
    grpc.Channel, session_pb2_grpc.SessionServiceStub, state_pb2_grpc.StateServiceStub
]:
    channel = grpc.insecure_channel(address)
    return (
        channel,
        session_pb2_grpc.SessionServiceStub(channel),
        state_pb2_grpc.StateServiceStub(channel),
    )


def new_session(sessions: session_pb2_grpc.SessionServiceStub) -> str:
    request = pb.CreateSessionRequest(
        session=pb.Session(
            image_path="/photos/a.jpg", naive_prompt="make the sky dramatic"
        )
    )
    return str(sessions.CreateSession(request, timeout=10).id)


def sqlite_file(url: str) -> pathlib.Path:
    return pathlib.Path(url.removeprefix("sqlite:///"))


def integrity(url: str) -> str:
    with sqlite3.connect(sqlite_file(url)) as connection:
        return str(connection.execute("PRAGMA integrity_check").fetchone()[0])


@pytest.mark.timeout(180)
def test_sigkill_loses_no_acknowledged_write(
    database_url: str, tmp_path: pathlib.Path
) -> None:
    daemon = Daemon(database_url, free_port(), tmp_path / "daemon.log")
    daemon.start()
    channel, sessions, states = stubs(daemon.address)
    session_ids = [new_session(sessions) for _ in range(4)]
    acknowledged: dict[str, set[str]] = {
        session_id: set() for session_id in session_ids
    }
    created: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def write(worker: int) -> None:
        session_id = session_ids[worker % len(session_ids)]
        number = 0
        while not stop.is_set():
            key = f"w{worker}_{number}"
            number += 1
            try:
                if number % 5 == 0:
                    created_id = new_session(sessions)
                    with lock:
                        created.append(created_id)
                    continue
                states.PatchState(
                    state_pb2.PatchStateRequest(
                        session_id=session_id,
                        merge_patch_json=json.dumps({key: number}),
                    ),
                    timeout=5,
                )
            except grpc.RpcError:
                continue
            with lock:
                acknowledged[session_id].add(key)

    for round_number in range(3):
        stop.clear()
        workers = [threading.Thread(target=write, args=(n,)) for n in range(16)]
        for worker in workers:
            worker.start()
        time.sleep(1.0 + 0.3 * round_number)
        daemon.kill()
        stop.set()
        for worker in workers:
            worker.join(10)
        if database_url.startswith("sqlite"):
            assert integrity(database_url) == "ok"
        daemon.start()

    channel.close()
    channel, sessions, states = stubs(daemon.address)
    total = 0
    for session_id, keys in acknowledged.items():
        reply = states.GetState(
            state_pb2.GetStateRequest(session_id=session_id), timeout=10
        )
        document = json.loads(reply.document_json)
        missing = keys - document.keys()
        assert not missing, f"{len(missing)} acknowledged keys lost in {session_id}"
        total += len(keys)
    for created_id in created:
        assert (
            sessions.GetSession(pb.GetSessionRequest(id=created_id), timeout=10).id
            == created_id
        )
    assert total > 100, f"only {total} writes were acknowledged before the kills"
    channel.close()
    daemon.stop()


@pytest.mark.timeout(60)
def test_sigterm_drains_and_ends_watches_unavailable(daemon: Daemon) -> None:
    channel, sessions, states = stubs(daemon.address)
    session_id = new_session(sessions)
    watch = states.WatchState(
        state_pb2.WatchStateRequest(session_id=session_id), timeout=30
    )
    first = next(watch)
    assert first.type == state_pb2.WATCH_EVENT_TYPE_SNAPSHOT
    states.PatchState(
        state_pb2.PatchStateRequest(session_id=session_id, merge_patch_json='{"a": 1}'),
        timeout=5,
    )
    assert next(watch).type == state_pb2.WATCH_EVENT_TYPE_CHANGE

    started = time.monotonic()
    exit_code = daemon.terminate(timeout=30)
    elapsed = time.monotonic() - started

    assert exit_code == 0
    assert elapsed < 12, f"drain took {elapsed:.1f} s, over the 10 s grace period"
    with pytest.raises(grpc.RpcError) as ended:
        for _ in watch:
            pass
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "stopped" in daemon.log()
    channel.close()


@pytest.mark.timeout(120)
def fill_until_full(
    states: state_pb2_grpc.StateServiceStub, session_id: str
) -> tuple[list[str], grpc.RpcError]:
    """Patch 2 KB members into a session until a patch fails.

    Returns the members added and the error of the patch that failed.
    """
    kept: list[str] = []
    for number in range(2000):
        request = state_pb2.PatchStateRequest(
            session_id=session_id,
            merge_patch_json=json.dumps({f"k{number}": "x" * 2000}),
        )
        try:
            states.PatchState(request, timeout=10)
        except grpc.RpcError as error:
            return kept, error
        kept.append(f"k{number}")
    pytest.fail("no patch failed: the database never filled")


def test_database_quota_answers_resource_exhausted(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'quota.db'}"
    daemon = Daemon(
        url,
        free_port(),
        tmp_path / "daemon.log",
        extra_args=["--max-database-bytes", str(400 * 1024)],
    )
    daemon.start()
    # A failed assert must not leave the daemon running.
    try:
        channel, sessions, states = stubs(daemon.address)
        session_id = new_session(sessions)
        kept, error = fill_until_full(states, session_id)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "quota" in error.details()

        # Writes that fail together in batches: each caller gets the quota's
        # error, and the log names the cause in a few lines, without tracebacks.
        codes: list[grpc.StatusCode] = []

        def write_many(worker: int) -> None:
            for number in range(25):
                request = state_pb2.PatchStateRequest(
                    session_id=session_id,
                    merge_patch_json=json.dumps({f"w{worker}-{number}": "y" * 4000}),
                )
                try:
                    states.PatchState(request, timeout=30)
                except grpc.RpcError as error:
                    codes.append(error.code())

        workers = [threading.Thread(target=write_many, args=(n,)) for n in range(8)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 200
        log = daemon.log_path.read_text()
        assert "Traceback" not in log
        assert log.count("write failed") < 20
        assert "database or disk is full" in log
        document = json.loads(
            states.GetState(
                state_pb2.GetStateRequest(session_id=session_id), timeout=10
            ).document_json
        )
        assert set(kept) <= set(document)
        channel.close()
        daemon.stop()
        assert integrity(url) == "ok"
        daemon.start()
        channel, sessions, states = stubs(daemon.address)
        reply = states.GetState(
            state_pb2.GetStateRequest(session_id=session_id), timeout=10
        )
        assert set(kept) <= set(json.loads(reply.document_json))
        channel.close()
        daemon.stop()
    finally:
        daemon.stop()


def test_write_lock_held_elsewhere_delays_writes_not_reads(
    tmp_path: pathlib.Path,
) -> None:
    """Another process holding the SQLite write lock stalls writes only.

    The daemon's statements run on its event loop; while a tool holds the
    file's write lock, reads and the health check must still be served,
    and the waiting write must commit once the lock is released.
    """
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    daemon = Daemon(url, free_port(), tmp_path / "daemon.log")
    daemon.start()
    channel, sessions, states = stubs(daemon.address)
    try:
        session_id = new_session(sessions)
        states.PatchState(
            state_pb2.PatchStateRequest(
                session_id=session_id, merge_patch_json='{"step": 1}'
            ),
            timeout=10,
        )
        other = sqlite3.connect(sqlite_file(url), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            pending = states.PatchState.future(
                state_pb2.PatchStateRequest(
                    session_id=session_id, merge_patch_json='{"step": 2}'
                ),
                timeout=20,
            )
            reads = 0
            for _ in range(20):
                reply = states.GetState(
                    state_pb2.GetStateRequest(session_id=session_id), timeout=10
                )
                assert json.loads(reply.document_json)["step"] == 1
                sessions.GetSession(pb.GetSessionRequest(id=session_id), timeout=10)
                reads += 1
            assert not pending.done()
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert reads == 20
        assert pending.result().version == 2
        reply = states.GetState(
            state_pb2.GetStateRequest(session_id=session_id), timeout=10
        )
        assert json.loads(reply.document_json)["step"] == 2
    finally:
        channel.close()
        daemon.stop()
    assert integrity(url) == "ok"


@pytest.mark.timeout(120)
def test_lock_wait_counted_per_write(tmp_path: pathlib.Path) -> None:
    """A write fails after waiting 5 s for the lock from when it came.

    Another process holds the write lock for 6.5 s. The write sent first
    fails with UNAVAILABLE at 5 s. The write sent 3 s later has waited only
    3.5 s when the lock is released, so it commits.
    """
    url = f"sqlite:///{tmp_path / 'wait.db'}"
    daemon = Daemon(url, free_port(), tmp_path / "daemon.log")
    daemon.start()
    channel, sessions, states = stubs(daemon.address)
    try:
        first_session = new_session(sessions)
        second_session = new_session(sessions)
        other = sqlite3.connect(sqlite_file(url), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        locked_at = time.monotonic()
        try:
            first = states.PatchState.future(
                state_pb2.PatchStateRequest(
                    session_id=first_session, merge_patch_json='{"step": 1}'
                ),
                timeout=20,
            )
            time.sleep(3)
            second = states.PatchState.future(
                state_pb2.PatchStateRequest(
                    session_id=second_session, merge_patch_json='{"step": 1}'
                ),
                timeout=20,
            )
            with pytest.raises(grpc.RpcError) as failed:
                first.result()
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "busy" in failed.value.details()
            time.sleep(max(0.0, locked_at + 6.5 - time.monotonic()))
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert second.result().version == 1
        log = daemon.log_path.read_text()
        assert "writes failed after waiting 5000 ms for a lock" in log
        assert "(1 writes)" in log
    finally:
        channel.close()
        daemon.stop()


def test_rate_limited_log_reports_dropped(caplog: pytest.LogCaptureFixture) -> None:
    """Warnings dropped at the end of a burst are still counted in the log."""
    log = RateLimitedLog(logging.getLogger("editstore.server.writer"), 0.2, "failures")
    with caplog.at_level(logging.WARNING, logger="editstore.server.writer"):
        for number in range(5):
            log.warning("write failed: %d", number)
        deadline = time.monotonic() + 10
        while len(caplog.records) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    messages = [record.getMessage() for record in caplog.records]

    assert messages[0] == "write failed: 0"
    assert len(messages) == 2
    assert "4 similar lines of failures" in messages[1]


def test_stream_after_unavailable_applies_nothing_later(
    tmp_path: pathlib.Path,
) -> None:
    """Once an update fails with UNAVAILABLE, the stream's later ones fail too.

    Another process holds the write lock past the daemon's 5 s wait, so the
    updates queued meanwhile fail with UNAVAILABLE. Updates sent after the
    lock is released must not apply either: a client resending the failed
    ones would apply them after later ones.
    """
    url = f"sqlite:///{tmp_path / 'order.db'}"
    daemon = Daemon(url, free_port(), tmp_path / "daemon.log")
    daemon.start()
    channel, sessions, states = stubs(daemon.address)
    try:
        session_id = new_session(sessions)
        other = sqlite3.connect(
            sqlite_file(url), isolation_level=None, check_same_thread=False
        )
        other.execute("BEGIN IMMEDIATE")
        locked = True

        def updates() -> Iterator[state_pb2.StreamStateUpdatesRequest]:
            nonlocal locked
            started = time.monotonic()
            for sequence in range(1, 41):
                if locked and time.monotonic() - started > 6.5:
                    other.execute("ROLLBACK")
                    locked = False
                yield state_pb2.StreamStateUpdatesRequest(
                    sequence=sequence,
                    session_id=session_id,
                    merge_patch_json=json.dumps({"step": sequence}),
                )
                time.sleep(0.25)

        try:
            acks = list(states.StreamStateUpdates(updates(), timeout=60))
        finally:
            if locked:
                other.execute("ROLLBACK")
            other.close()
        codes = [ack.code for ack in acks]
        assert [ack.sequence for ack in acks] == list(range(1, 41))
        assert grpc.StatusCode.UNAVAILABLE.value[0] in codes
        first_failed = codes.index(grpc.StatusCode.UNAVAILABLE.value[0])
        assert all(
            code == grpc.StatusCode.UNAVAILABLE.value[0]
            for code in codes[first_failed:]
        )
        assert "resend the unacknowledged updates in order" in acks[-1].message
        reply = states.GetState(
            state_pb2.GetStateRequest(session_id=session_id), timeout=10
        )
        applied = json.loads(reply.document_json).get("step", 0) if reply.version else 0
        assert applied == first_failed
        # The stream's failure stays with the stream: a new one applies.
        resent = list(
            states.StreamStateUpdates(
                iter(
                    [
                        state_pb2.StreamStateUpdatesRequest(
                            sequence=1,
                            session_id=session_id,
                            merge_patch_json='{"step": 99}',
                        )
                    ]
                ),
                timeout=30,
            )
        )
        assert resent[0].code == 0
    finally:
        channel.close()
        daemon.stop()
    assert integrity(url) == "ok"


def test_stream_after_database_full_applies_nothing_later(
    tmp_path: pathlib.Path,
) -> None:
    """Once an update fails on a full database, the stream's later ones fail.

    The client resends the failed update once space is freed, so an update
    sent after it on the same stream must not apply first, even when there
    is room for it by then.
    """
    url = f"sqlite:///{tmp_path / 'full-order.db'}"
    daemon = Daemon(
        url,
        free_port(),
        tmp_path / "daemon.log",
        extra_args=["--max-database-bytes", str(400 * 1024)],
    )
    daemon.start()
    channel, sessions, states = stubs(daemon.address)
    try:
        filler = new_session(sessions)
        target = new_session(sessions)
        _, error = fill_until_full(states, filler)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        space_freed = threading.Event()

        def updates() -> Iterator[state_pb2.StreamStateUpdatesRequest]:
            yield state_pb2.StreamStateUpdatesRequest(
                sequence=1,
                session_id=target,
                merge_patch_json=json.dumps({"photo": "z" * 20_000}),
            )
            assert space_freed.wait(30)
            for sequence in range(2, 6):
                yield state_pb2.StreamStateUpdatesRequest(
                    sequence=sequence,
                    session_id=target,
                    merge_patch_json=json.dumps({"step": sequence}),
                )

        acks = []
        for ack in states.StreamStateUpdates(updates(), timeout=60):
            acks.append(ack)
            if ack.sequence == 1:
                # Deleting the filler session frees its pages for reuse.
                sessions.DeleteSession(pb.DeleteSessionRequest(id=filler), timeout=10)
                space_freed.set()

        assert [ack.sequence for ack in acks] == [1, 2, 3, 4, 5]
        assert acks[0].code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert "quota" in acks[0].message
        for ack in acks[1:]:
            assert ack.code == grpc.StatusCode.UNAVAILABLE.value[0]
            assert "resend the unacknowledged updates in order" in ack.message
        reply = states.GetState(
            state_pb2.GetStateRequest(session_id=target), timeout=10
        )
        assert reply.version == 0
        # Resent in order on a new stream, now that there is room, all apply.
        resent = list(
            states.StreamStateUpdates(
                iter(
                    [
                        state_pb2.StreamStateUpdatesRequest(
                            sequence=sequence,
                            session_id=target,
                            merge_patch_json=json.dumps(
                                {"photo": "z" * 20_000}
                                if sequence == 1
                                else {"step": sequence}
                            ),
                        )
                        for sequence in range(1, 6)
                    ]
                ),
                timeout=30,
            )
        )
        assert [ack.code for ack in resent] == [0] * 5
        assert [ack.version for ack in resent] == [1, 2, 3, 4, 5]
        reply = states.GetState(
            state_pb2.GetStateRequest(session_id=target), timeout=10
        )
        assert json.loads(reply.document_json)["step"] == 5
    finally:
        channel.close()
        daemon.stop()
    assert integrity(url) == "ok"


@pytest.fixture
def small_disk(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    with small_tmpfs(tmp_path / "small-disk", "3m") as folder:
        yield folder


@pytest.mark.timeout(120)
def test_full_disk_answers_resource_exhausted(
    small_disk: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    url = f"sqlite:///{small_disk / 'full.db'}"
    daemon = Daemon(url, free_port(), tmp_path / "daemon.log")
    daemon.start()
    channel, sessions, states = stubs(daemon.address)
    session_ids = [new_session(sessions) for _ in range(3)]
    kept: dict[str, list[str]] = {session_id: [] for session_id in session_ids}
    codes = set()
    failures = 0
    for number in range(3000):
        session_id = session_ids[number % 3]
        request = state_pb2.PatchStateRequest(
            session_id=session_id,
            merge_patch_json=json.dumps({f"k{number}": "y" * 3000}),
        )
        try:
            states.PatchState(request, timeout=10)
        except grpc.RpcError as error:
            codes.add(error.code())
            failures += 1
            if failures >= 6:
                break
            continue
        kept[session_id].append(f"k{number}")

    assert codes == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    health = subprocess.run(
        [
            sys.executable,
            "-m",
            "editstore.server",
            "health",
            "--address",
            daemon.address,
        ],
        capture_output=True,
    )
    assert health.returncode == 0
    for session_id, keys in kept.items():
        reply = states.GetState(
            state_pb2.GetStateRequest(session_id=session_id), timeout=10
        )
        assert set(keys) <= set(json.loads(reply.document_json))
    channel.close()
    daemon.kill()
    assert integrity(url) == "ok"


@pytest.mark.timeout(60)
def test_streams_over_limit_refused_and_unary_served(tmp_path: pathlib.Path) -> None:
    daemon = Daemon(
        f"sqlite:///{tmp_path / 'limit.db'}",
        free_port(),
        tmp_path / "daemon.log",
        extra_args=["--max-streams", "3"],
    )
    daemon.start()
    channel, sessions, states = stubs(daemon.address)
    session_id = new_session(sessions)
    watches = [
        states.WatchState(
            state_pb2.WatchStateRequest(session_id=session_id), timeout=30
        )
        for _ in range(3)
    ]
    for watch in watches:
        assert next(watch).type == state_pb2.WATCH_EVENT_TYPE_SNAPSHOT

    extra = states.WatchState(
        state_pb2.WatchStateRequest(session_id=session_id), timeout=30
    )
    with pytest.raises(grpc.RpcError) as refused:
        next(extra)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-streams" in refused.value.details()
    for _ in range(20):
        assert new_session(sessions)
    for watch in watches:
        watch.cancel()
    time.sleep(0.3)
    reopened = states.WatchState(
        state_pb2.WatchStateRequest(session_id=session_id), timeout=30
    )
    assert next(reopened).type == state_pb2.WATCH_EVENT_TYPE_SNAPSHOT
    reopened.cancel()
    channel.close()
    daemon.stop()


def rejections_logged(log: str) -> tuple[int, int]:
    """Return the rejected calls a daemon's log shows on lines of their own,
    and the rejected calls it counts in all."""
    lines = len(re.findall(r"rejected \S+: missing or unknown bearer token", log))
    counted = sum(int(n) for n in re.findall(r"\((\d+) similar lines in", log))
    counted += sum(
        int(n) for n in re.findall(r"(\d+) similar lines of rejected calls", log)
    )
    return lines, lines + counted


@pytest.mark.timeout(60)
def test_rejected_calls_log_rate_limited(tmp_path: pathlib.Path) -> None:
    daemon = Daemon(
        f"sqlite:///{tmp_path / 'auth.db'}",
        free_port(),
        tmp_path / "daemon.log",
        env={"EDITSTORE_AUTH_TOKENS": "the-token"},
    )
    daemon.start()
    channel, sessions, _ = stubs(daemon.address)
    for _ in range(300):
        with pytest.raises(grpc.RpcError):
            sessions.GetSession(
                pb.GetSessionRequest(id="x"),
                timeout=5,
                metadata=[("authorization", "Bearer wrong")],
            )
    deadline = time.monotonic() + 10
    while rejections_logged(daemon.log_path.read_text())[1] < 300:
        assert time.monotonic() < deadline, daemon.log_path.read_text()[-2000:]
        time.sleep(0.1)
    channel.close()
    daemon.stop()
    lines, counted = rejections_logged(daemon.log_path.read_text())

    assert counted == 300
    assert lines < 300


@pytest.mark.timeout(60)
def test_bearer_token_required_and_never_logged(tmp_path: pathlib.Path) -> None:
    token = f"secret-{uuid.uuid4().hex}"
    daemon = Daemon(
        f"sqlite:///{tmp_path / 'auth.db'}",
        free_port(),
        tmp_path / "daemon.log",
        extra_args=["--log-level", "debug"],
        env={"EDITSTORE_AUTH_TOKENS": f"other-token,{token}"},
    )
    daemon.start()
    channel, sessions, states = stubs(daemon.address)
    request = pb.CreateSessionRequest(
        session=pb.Session(image_path="/a.jpg", naive_prompt="x")
    )

    with pytest.raises(grpc.RpcError) as missing:
        sessions.CreateSession(request, timeout=5)
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as wrong:
        sessions.CreateSession(
            request, timeout=5, metadata=[("authorization", "Bearer not-the-token")]
        )
    assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
    created = sessions.CreateSession(
        request, timeout=5, metadata=[("authorization", f"Bearer {token}")]
    )
    assert created.id
    health = subprocess.run(
        [
            sys.executable,
            "-m",
            "editstore.server",
            "health",
            "--address",
            daemon.address,
        ],
        capture_output=True,
    )
    assert health.returncode == 0
    channel.close()
    daemon.stop()
    assert token not in daemon.log()
    assert "not-the-token" not in daemon.log()


def make_certificates(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    """Make a CA, a server certificate for 127.0.0.1 and a client certificate."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=editstore test CA",
    )
    for name in ("server", "client"):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
        )
        (folder / f"{name}.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
        )
    return {path.stem + path.suffix: path for path in folder.iterdir()}


class TlsDaemon(Daemon):
    def wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while "editstore serving" not in self.log():
            assert self.process is not None and self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, "daemon did not start"
            time.sleep(0.05)


def start_mutual_tls_daemon(
    tmp_path: pathlib.Path,
) -> tuple[TlsDaemon, dict[str, pathlib.Path]]:
    """Start a daemon that requires TLS client certificates from a test CA."""
    folder = tmp_path / "certs"
    folder.mkdir()
    files = make_certificates(folder)
    daemon = TlsDaemon(
        f"sqlite:///{tmp_path / 'tls.db'}",
        free_port(),
        tmp_path / "daemon.log",
        extra_args=[
            "--tls-cert",
            str(files["server.pem"]),
            "--tls-key",
            str(files["server.key"]),
            "--tls-client-ca",
            str(files["ca.pem"]),
        ],
    )
    daemon.start()
    return daemon, files


@pytest.mark.timeout(60)
def test_mutual_tls_requires_client_certificate(tmp_path: pathlib.Path) -> None:
    daemon, files = start_mutual_tls_daemon(tmp_path)
    ca = files["ca.pem"].read_bytes()
    request = pb.CreateSessionRequest(
        session=pb.Session(image_path="/a.jpg", naive_prompt="x")
    )

    with_client_cert = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=files["client.key"].read_bytes(),
        certificate_chain=files["client.pem"].read_bytes(),
    )
    with grpc.secure_channel(daemon.address, with_client_cert) as channel:
        created = session_pb2_grpc.SessionServiceStub(channel).CreateSession(
            request, timeout=10
        )
        assert created.id

    without_client_cert = grpc.ssl_channel_credentials(root_certificates=ca)
    with grpc.secure_channel(daemon.address, without_client_cert) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            session_pb2_grpc.SessionServiceStub(channel).CreateSession(
                request, timeout=5
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    with grpc.insecure_channel(daemon.address) as channel:
        with pytest.raises(grpc.RpcError):
            session_pb2_grpc.SessionServiceStub(channel).CreateSession(
                request, timeout=5
            )
    daemon.stop()
    assert "(TLS, client certificates required)" in daemon.log_path.read_text()


def health(address: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """Run ``editstore health`` against ``address`` with extra flags."""
    return subprocess.run(
        [sys.executable, "-m", "editstore.server", "health", "--address", address]
        + ["--timeout", "3", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.timeout(120)
def test_health_command_over_mutual_tls(tmp_path: pathlib.Path) -> None:
    daemon, files = start_mutual_tls_daemon(tmp_path)
    ca = ["--tls-ca", str(files["ca.pem"])]
    client = [
        "--tls-cert",
        str(files["client.pem"]),
        "--tls-key",
        str(files["client.key"]),
    ]
    try:
        serving = health(daemon.address, *ca, *client)
        assert serving.returncode == 0, serving.stderr
        assert "SERVING" in serving.stdout

        named = health(daemon.address, *ca, *client, "--tls-server-name", "localhost")
        assert named.returncode == 0, named.stderr

        wrong_name = health(
            daemon.address, *ca, *client, "--tls-server-name", "other.example"
        )
        assert wrong_name.returncode == 1
        assert "UNAVAILABLE" in wrong_name.stderr

        without_client_cert = health(daemon.address, *ca)
        assert without_client_cert.returncode == 1

        plaintext = health(daemon.address)
        assert plaintext.returncode == 1

        missing = health(daemon.address, "--tls-ca", str(tmp_path / "missing.pem"))
        assert missing.returncode == 2
        assert "--tls-ca" in missing.stderr
        assert "No such file" in missing.stderr

        half = health(daemon.address, *ca, "--tls-cert", str(files["client.pem"]))
        assert half.returncode == 2
        assert "--tls-key" in half.stderr
    finally:
        daemon.stop()


@pytest.mark.timeout(60)
def test_second_daemon_on_same_sqlite_file_refused(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first = Daemon(url, free_port(), tmp_path / "first.log")
    first.start()
    second = Daemon(url, free_port(), tmp_path / "second.log")
    with pytest.raises(RuntimeError) as refused:
        second.start()
    assert "another editstore daemon serves" in str(refused.value)
    first.stop()
    second.start()
    second.stop()


@pytest.mark.timeout(120)
def test_request_id_across_two_daemons_applies_once(
    postgres_url: str, tmp_path: pathlib.Path
) -> None:
    daemons = [
        Daemon(postgres_url, free_port(), tmp_path / f"daemon{n}.log") for n in range(2)
    ]
    for daemon in daemons:
        daemon.start()
    channels = [grpc.insecure_channel(daemon.address) for daemon in daemons]
    session_stubs = [session_pb2_grpc.SessionServiceStub(c) for c in channels]
    for _ in range(5):
        request_id = str(uuid.uuid4())
        request = pb.CreateSessionRequest(
            session=pb.Session(image_path="/a.jpg", naive_prompt="x"),
            request_id=request_id,
        )
        replies: list[pb.Session] = []
        failures: list[grpc.RpcError] = []

        def send(
            number: int,
            request: pb.CreateSessionRequest = request,
            replies: list[pb.Session] = replies,
            failures: list[grpc.RpcError] = failures,
        ) -> None:
            try:
                stub = session_stubs[number % 2]
                replies.append(stub.CreateSession(request, timeout=20))
            except grpc.RpcError as error:
                failures.append(error)

        threads = [threading.Thread(target=send, args=(n,)) for n in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures, [f.details() for f in failures]
        assert len({reply.id for reply in replies}) == 1
        assert len({reply.SerializeToString() for reply in replies}) == 1
    for channel in channels:
        channel.close()
    for daemon in daemons:
        daemon.stop()


@pytest.mark.timeout(60)
def test_request_id_spellings_name_one_request(daemon: Daemon) -> None:
    channel, sessions, _ = stubs(daemon.address)
    value = uuid.uuid4()
    spellings = [str(value), str(value).upper(), "{" + str(value) + "}", value.hex]
    ids = set()
    for spelling in spellings:
        request = pb.CreateSessionRequest(
            session=pb.Session(image_path="/a.jpg", naive_prompt="x"),
            request_id=spelling,
        )
        ids.add(sessions.CreateSession(request, timeout=10).id)
    assert len(ids) == 1
    channel.close()


@pytest.mark.timeout(60)
def test_negative_zero_score_keeps_etag_valid(daemon: Daemon) -> None:
    channel, sessions, _ = stubs(daemon.address)
    created = sessions.CreateSession(
        pb.CreateSessionRequest(
            session=pb.Session(
                image_path="/a.jpg", naive_prompt="x", final_alignment_score=-0.0
            )
        ),
        timeout=10,
    )
    fetched = sessions.GetSession(pb.GetSessionRequest(id=created.id), timeout=10)
    assert created.etag == fetched.etag
    update = pb.UpdateSessionRequest(
        session=pb.Session(id=created.id, naive_prompt="y", etag=created.etag),
        update_mask={"paths": ["naive_prompt"]},
    )
    assert sessions.UpdateSession(update, timeout=10).naive_prompt == "y"
    channel.close()


@pytest.mark.timeout(90)
def test_sigterm_with_busy_update_streams_stops_in_grace(
    daemon: Daemon,
) -> None:
    channel, sessions, states = stubs(daemon.address)
    session_ids = [new_session(sessions) for _ in range(4)]
    document = json.dumps({"payload": "z" * 200_000})

    def updates(session_id: str):
        for number in range(100_000):
            yield state_pb2.StreamStateUpdatesRequest(
                sequence=number, session_id=session_id, document_json=document
            )

    acked: dict[str, int] = {}

    def stream(session_id: str) -> None:
        try:
            for ack in states.StreamStateUpdates(updates(session_id), timeout=60):
                if ack.code == 0:
                    acked[session_id] = ack.version
        except grpc.RpcError:
            pass

    threads = [threading.Thread(target=stream, args=(s,)) for s in session_ids]
    for thread in threads:
        thread.start()
    time.sleep(2)
    started = time.monotonic()
    exit_code = daemon.terminate(timeout=60)
    elapsed = time.monotonic() - started
    for thread in threads:
        thread.join(30)

    assert exit_code == 0
    assert elapsed < 13, f"stopping took {elapsed:.1f} s with a 10 s grace period"
    daemon.start()
    channel.close()
    channel, sessions, states = stubs(daemon.address)
    for session_id, version in acked.items():
        reply = states.GetState(
            state_pb2.GetStateRequest(session_id=session_id), timeout=10
        )
        assert reply.version >= version
    channel.close()


@pytest.mark.timeout(120)
def test_lost_postgres_connections_reconnect(
    postgres_url: str, tmp_path: pathlib.Path
) -> None:
    daemon = Daemon(postgres_url, free_port(), tmp_path / "daemon.log")
    daemon.start()
    channel, sessions, states = stubs(daemon.address)
    session_id = new_session(sessions)
    states.PatchState(
        state_pb2.PatchStateRequest(session_id=session_id, merge_patch_json='{"a": 1}'),
        timeout=10,
    )

    assert end_connections(postgres_url) >= 1
    codes = []
    messages = []
    for number in range(10):
        request = state_pb2.PatchStateRequest(
            session_id=session_id, merge_patch_json=json.dumps({f"k{number}": number})
        )
        try:
            states.PatchState(request, timeout=10)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as error:
            codes.append(error.code())
            messages.append(error.details())
        try:
            sessions.GetSession(pb.GetSessionRequest(id=session_id), timeout=10)
        except grpc.RpcError as error:
            codes.append(error.code())
            messages.append(error.details())

    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
    assert codes[-5:] == [grpc.StatusCode.OK] * 5, codes
    # A lost connection is reported as such, and is not a bug of the daemon.
    assert all("connection was lost" in message for message in messages), messages
    reply = states.GetState(
        state_pb2.GetStateRequest(session_id=session_id), timeout=10
    )
    assert reply.version >= 2
    assert new_session(sessions)
    channel.close()
    daemon.stop()
    assert "Traceback" not in daemon.log_path.read_text()
