"""Changes made by other daemons on a shared PostgreSQL database.

Every state change and session deletion sends ``NOTIFY editstore_state``
inside its transaction, so the notification goes out only if it commits. Each
daemon LISTENs on a connection of its own in a thread, and hands every
notification to the watch hub, which reads the committed versions it has not
yet sent from ``state_versions``. SQLite has one daemon per file and needs
none of this.
"""

from __future__ import annotations

import json
import logging
import select
import threading
import uuid
from collections.abc import Callable
from typing import Any

import peewee

from editstore.server.models import Session

logger = logging.getLogger(__name__)

CHANNEL = "editstore_state"
POLL_SECONDS = 1.0
# Marks the notifications of this process. Its own changes reach its watchers
# from the write path already; read back through LISTEN they would make each
# watcher read the database for versions it is about to get anyway, and fall
# behind the kept history when writes come fast.
# NOTE: the mark is per process, so two daemons run in one process would not
# see each other's changes; the command line starts one daemon per process.
ORIGIN = uuid.uuid4().hex


def notify(payload: dict[str, Any]) -> None:
    """Send a notification in the current transaction; a no-op on SQLite."""
    notify_all([payload])


def notify_all(payloads: list[dict[str, Any]]) -> None:
    """Send one notification per payload in the current transaction, in one
    statement; a no-op on SQLite."""
    database = Session._meta.database.obj
    if payloads and isinstance(database, peewee.PostgresqlDatabase):
        texts = [json.dumps({**payload, "origin": ORIGIN}) for payload in payloads]
        database.execute_sql(
            "SELECT pg_notify(%s, text) FROM unnest(%s::text[]) AS text",
            (CHANNEL, texts),
        )


class Listener:
    """Receive notifications on a thread and pass each payload to a callback.

    Notifications sent while no LISTEN connection is open are lost. So
    ``on_listening`` is called each time LISTEN is in place again, and the
    watchers then read what they may have missed.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        on_payload: Callable[[dict[str, Any]], None],
        on_listening: Callable[[], None] = lambda: None,
    ) -> None:
        self._connect = connect
        self._on_payload = on_payload
        self._on_listening = on_listening
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, name="editstore-listen", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(POLL_SECONDS * 3)

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                self._listen()
            except Exception as error:
                logger.warning("LISTEN connection failed (%s); reconnecting", error)
                self._stopping.wait(POLL_SECONDS)

    def _listen(self) -> None:
        connection = self._connect()
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f"LISTEN {CHANNEL}")
            logger.info("listening for changes of other daemons")
            self._on_listening()
            while not self._stopping.is_set():
                readable, _, _ = select.select([connection], [], [], POLL_SECONDS)
                if not readable:
                    continue
                connection.poll()
                while connection.notifies:
                    message = connection.notifies.pop(0)
                    try:
                        payload = json.loads(message.payload)
                        if payload.get("origin") == ORIGIN:
                            continue
                        self._on_payload(payload)
                    except Exception:
                        logger.exception("notification %r failed", message.payload)
        finally:
            connection.close()
