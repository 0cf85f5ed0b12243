"""The daemon: the database, the writer, the watch hub and the gRPC server.

``Daemon.start`` opens the database, checks its schema, starts the writer and
serves; ``Daemon.stop`` drains: health turns NOT_SERVING, watches end with
UNAVAILABLE, calls in flight get ``grace_seconds`` to finish, then the writer
commits what it has and the database closes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import signal
from typing import Any

import grpc
import peewee
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from editstore.server import database as database_module
from editstore.server import migrate, pgnotify, requests, states
from editstore.server.config import Settings
from editstore.server.events import SessionDeleted
from editstore.server.handlers import generic_handler
from editstore.server.interceptors import BearerTokenInterceptor
from editstore.server.metrics import CallStats, Collector, MetricsServer, sqlite_bytes
from editstore.server.readers import Readers
from editstore.server.session_servicer import SessionServicer
from editstore.server.state_servicer import StateServicer, StreamSlots
from editstore.server.watch import StateHint, WatchHub
from editstore.server.writer import LoopWriter, Writer
from editstore.v1 import session_pb2, state_pb2

logger = logging.getLogger(__name__)

WRITER_STOP_SECONDS = 1.0
PRUNE_INTERVAL_SECONDS = 3600.0
SERVICE_NAMES = (
    session_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name,
    state_pb2.DESCRIPTOR.services_by_name["StateService"].full_name,
)


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    """Return the channel options of the server; clients should match them."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Two daemons must not share a port unnoticed.
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if not settings.tls_cert:
        return None
    key = pathlib.Path(settings.tls_key).read_bytes()
    chain = pathlib.Path(settings.tls_cert).read_bytes()
    client_ca = (
        pathlib.Path(settings.tls_client_ca).read_bytes()
        if settings.tls_client_ca
        else None
    )
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


class Daemon:
    """One running editstore daemon."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = 0
        self._database: peewee.Database | None = None
        self._server: grpc.aio.Server | None = None
        self._writer: Writer | None = None
        self._readers: Readers | None = None
        self._listener: pgnotify.Listener | None = None
        # Documents queued for one watcher: two of the largest, which lets a
        # watcher that keeps up hold a change while the next one arrives.
        self._hub = WatchHub(settings.watch_buffer, 2 * settings.max_document_bytes)
        self._health = HealthServicer()
        self._stopped = asyncio.Event()
        self._lock_fd: int | None = None
        self._prune_task: asyncio.Task[None] | None = None
        self._stats = CallStats()
        self._metrics: MetricsServer | None = None
        self.metrics_port = 0

    async def start(self) -> None:
        """Open the database, check its schema and start serving.

        Raises:
            migrate.SchemaError: the schema is behind (without ``migrate``) or
                ahead of the code.
            RuntimeError: the address can not be bound.
        """
        settings = self.settings
        loop = asyncio.get_running_loop()
        path = database_module.sqlite_path(settings.database)
        if path and path != ":memory:" and not settings.migrate:
            if not os.path.exists(path):
                raise migrate.SchemaError(
                    f"no database at {path}: start with --migrate to create "
                    "it, or check --database"
                )
        self._lock_fd = database_module.lock_sqlite_file(settings.database)
        database = database_module.open_database(
            settings.database, settings.max_database_bytes
        )
        self._database = database
        schema = await loop.run_in_executor(
            None, self._prepare_schema, database, settings.migrate
        )

        if isinstance(database, peewee.SqliteDatabase):
            # Commits end on the event loop's thread (``LoopWriter``).
            def on_commit(events: list[Any]) -> None:
                loop.call_soon(self._hub.publish, events)

            self._writer = LoopWriter(database, on_commit)
        else:

            def on_commit(events: list[Any]) -> None:
                loop.call_soon_threadsafe(self._hub.publish, events)

            self._writer = Writer(database, on_commit)
        self._writer.start()
        self._prune_task = asyncio.create_task(self._prune_request_ids())
        self._readers = Readers(database, settings.reader_threads)
        if isinstance(database, peewee.PostgresqlDatabase):
            self._start_listener(database, loop)

        interceptors = []
        if settings.auth_tokens:
            interceptors.append(BearerTokenInterceptor(settings.auth_tokens))
        server = grpc.aio.server(
            options=server_options(settings), interceptors=interceptors
        )
        slots = StreamSlots(settings.max_streams)
        limits = states.StateLimits(settings.max_document_bytes, settings.state_history)
        session_service = SessionServicer(
            self._writer, self._readers, settings.max_message_bytes
        )
        state_service = StateServicer(
            self._writer,
            self._readers,
            self._hub,
            limits,
            slots,
            settings.heartbeat_seconds,
            self._stats,
        )
        server.add_generic_rpc_handlers(
            (
                generic_handler(
                    session_service,
                    session_pb2.DESCRIPTOR.services_by_name["SessionService"],
                    self._stats,
                ),
                generic_handler(
                    state_service,
                    state_pb2.DESCRIPTOR.services_by_name["StateService"],
                    self._stats,
                ),
            )
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (
                *SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        credentials = _credentials(settings)
        if credentials is None:
            self.port = server.add_insecure_port(settings.listen)
        else:
            self.port = server.add_secure_port(settings.listen, credentials)
        if self.port == 0:
            raise RuntimeError(
                f"can not listen on {settings.listen}: address in use or invalid"
            )
        if settings.metrics_listen:
            self._start_metrics(settings.metrics_listen, slots, database)
        await server.start()
        self._server = server
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        host = settings.listen.rpartition(":")[0]
        logger.info(
            "editstore serving on %s:%d (%s), database %s, schema version %d",
            host,
            self.port,
            ("TLS" if credentials else "plaintext")
            + (", client certificates required" if settings.tls_client_ca else "")
            + (", bearer tokens required" if settings.auth_tokens else ""),
            database_module.describe(settings.database),
            schema.version,
        )

    def _start_metrics(
        self, listen: str, slots: StreamSlots, database: peewee.Database
    ) -> None:
        writer = self._writer
        assert writer is not None
        gauges = [
            (
                "editstore_writer_queued",
                "writes waiting for the writer's next transaction",
                lambda: float(writer.queued),
            ),
            (
                "editstore_streams_open",
                "open WatchState and StreamStateUpdates streams",
                lambda: float(slots.open),
            ),
            (
                "editstore_watchers",
                "open watches of state documents",
                lambda: float(self._hub.watcher_count),
            ),
        ]
        if isinstance(database, peewee.SqliteDatabase):
            gauges.append(
                (
                    "editstore_database_bytes",
                    "size of the SQLite file and its write-ahead log",
                    sqlite_bytes(database.database),
                )
            )
        counters = [
            (
                "editstore_writer_transactions",
                "transactions the writer committed",
                lambda: float(writer.batches),
            ),
            (
                "editstore_writer_writes",
                "writes the writer ran, failed ones included",
                lambda: float(writer.writes),
            ),
        ]
        self._metrics = MetricsServer(Collector(self._stats, gauges, counters))
        try:
            self._metrics.start(listen)
        except OSError as error:
            raise RuntimeError(f"can not serve metrics on {listen}: {error}") from None
        self.metrics_port = self._metrics.port
        logger.info(
            "metrics at http://%s:%d/metrics",
            listen.rpartition(":")[0],
            self.metrics_port,
        )

    @staticmethod
    def _prepare_schema(
        database: peewee.Database, allow_migrate: bool
    ) -> migrate.SchemaStatus:
        try:
            return migrate.ensure_current(database, allow_migrate)
        finally:
            database.close()

    def _start_listener(
        self, database: peewee.PostgresqlDatabase, loop: asyncio.AbstractEventLoop
    ) -> None:
        def on_payload(payload: dict[str, Any]) -> None:
            session_id = str(payload.get("session_id", ""))
            event: Any
            if payload.get("deleted"):
                event = SessionDeleted(session_id)
            else:
                event = StateHint(session_id, int(payload.get("version", 0)))
            loop.call_soon_threadsafe(self._hub.publish, [event])

        def connect() -> Any:
            return database._connect()  # type: ignore[attr-defined]

        def on_listening() -> None:
            loop.call_soon_threadsafe(self._hub.recheck_all)

        self._listener = pgnotify.Listener(connect, on_payload, on_listening)
        self._listener.start()

    async def _prune_request_ids(self) -> None:
        """Forget expired request ids at start and then every hour."""
        assert self._writer is not None
        retention = self.settings.request_id_retention_hours
        while True:
            try:
                removed = await self._writer.run(requests.prune(retention))
                if removed:
                    logger.info("forgot %d expired request ids", removed)
            except Exception as error:
                logger.warning("pruning request ids failed: %s", error)
            await asyncio.sleep(PRUNE_INTERVAL_SECONDS)

    async def wait(self) -> None:
        """Wait until the daemon has stopped."""
        await self._stopped.wait()

    async def stop(self) -> None:
        """Drain and stop: see the module docstring."""
        if self._stopped.is_set():
            return
        logger.info("stopping: %d watches open", self._hub.watcher_count)
        await self._health.enter_graceful_shutdown()
        if self._prune_task is not None:
            self._prune_task.cancel()
        self._hub.close()
        if self._server is not None:
            await self._server.stop(self.settings.grace_seconds)
        if self._listener is not None:
            self._listener.stop()
        if self._metrics is not None:
            self._metrics.stop()
        if self._writer is not None:
            logger.info(
                "writer committed %d writes in %d transactions",
                self._writer.writes,
                self._writer.batches,
            )
            # The grace period is spent; what is still queued has no caller
            # that will wait for it, so it gets little time.
            await asyncio.get_running_loop().run_in_executor(
                None, self._writer.stop, WRITER_STOP_SECONDS
            )
        if self._readers is not None:
            self._readers.close()
        if self._database is not None and not self._database.is_closed():
            self._database.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        logger.info("stopped")
        self._stopped.set()


async def serve(settings: Settings) -> None:
    """Run a daemon until SIGTERM or SIGINT, then drain and stop it."""
    daemon = Daemon(settings)
    await daemon.start()
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop_requested.set)
    await stop_requested.wait()
    await daemon.stop()
