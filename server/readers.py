"""A small pool of threads that run database reads off the event loop.

Each thread keeps its own connection (Peewee's connection state is per
thread); on SQLite in WAL mode readers never wait for the writer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import peewee

from editstore.server import database as database_module
from editstore.server import errors
from editstore.server.writer import translate_database_error

T = TypeVar("T")


class Readers:
    """Run read functions on reader threads, one transaction per call."""

    def __init__(self, database: peewee.Database, threads: int) -> None:
        self._database = database
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="editstore-reader"
        )

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function(*args)`` in a read transaction on a reader thread."""
        loop = asyncio.get_running_loop()
        call = functools.partial(self._call, function, *args)
        return await loop.run_in_executor(self._executor, call)

    def _call(self, function: Callable[..., T], *args: Any) -> T:
        try:
            with database_module.read_transaction(self._database):
                return function(*args)
        except errors.StoreError:
            raise
        except (peewee.DatabaseError, peewee.InterfaceError) as error:
            database_module.reset_if_broken(self._database)
            raise translate_database_error(error) from error

    def close(self) -> None:
        """Wait for the reads that are running, then stop the threads."""
        self._executor.shutdown(wait=True)
