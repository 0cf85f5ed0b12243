"""Bearer tokens and TLS from the client's side, against a real daemon."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from editstore.client import Client, Unauthenticated, Unavailable
from tests.daemon import Daemon, free_port

pytestmark = pytest.mark.timeout(120)

TOKEN = "s3cret-token-for-tests"


def test_token_is_sent_as_bearer(database_url: str, tmp_path: pathlib.Path) -> None:
    daemon = Daemon(
        database_url,
        port=free_port(),
        log_path=tmp_path / "daemon.log",
        extra_args=["--auth-tokens", TOKEN],
    )
    daemon.start()
    try:
        with Client(daemon.address) as anonymous:
            with pytest.raises(Unauthenticated):
                anonymous.list_sessions()
        with Client(daemon.address, token="wrong") as wrong:
            with pytest.raises(Unauthenticated):
                wrong.create_session("/p.png", "brighten")
        with Client(daemon.address, token=TOKEN) as client:
            session = client.create_session("/p.png", "brighten")
            assert client.get_session(session.id) == session
    finally:
        daemon.stop()
    assert TOKEN not in daemon.log()


def make_certificates(folder: pathlib.Path) -> None:
    """Make a CA, a server certificate for 127.0.0.1 and a client certificate."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=editstore test CA", "-keyout", "ca.key", "-out", "ca.pem",
    )  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr",
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey",
            "ca.key", "-CAcreateserial", "-days", "2", "-extfile", "san.cnf",
            "-out", f"{name}.pem",
        )  # fmt: skip


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_mutual_tls(tmp_path: pathlib.Path) -> None:
    make_certificates(tmp_path)
    port = free_port()
    log = (tmp_path / "daemon.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "editstore.server",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--database",
            f"sqlite:///{tmp_path / 'tls.db'}",
            "--migrate",
            "--tls-cert",
            str(tmp_path / "server.pem"),
            "--tls-key",
            str(tmp_path / "server.key"),
            "--tls-client-ca",
            str(tmp_path / "ca.pem"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    ca = (tmp_path / "ca.pem").read_bytes()
    try:
        with Client(
            f"127.0.0.1:{port}",
            root_certificates=ca,
            certificate_chain=(tmp_path / "client.pem").read_bytes(),
            private_key=(tmp_path / "client.key").read_bytes(),
        ) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    session = client.create_session("/p.png", "brighten")
                    break
                except Unavailable:
                    assert process.poll() is None, (tmp_path / "daemon.log").read_text()
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
            assert client.get_session(session.id).naive_prompt == "brighten"
        with Client(f"127.0.0.1:{port}", root_certificates=ca) as no_certificate:
            with pytest.raises(Unavailable):
                no_certificate.list_sessions(timeout=5)
    finally:
        process.terminate()
        process.wait(30)
