"""Queries whose SQL Peewee builds once and the write path runs many times.

Building SQL from a Peewee query costs more than SQLite takes to run it (a
profile of a state patch: about 60% of its time went to ``Query.sql()``), so
the hottest queries are built once per database, with placeholder values,
and then run with the parameters of each call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import peewee

from editstore.server.models import database_proxy


class PreparedQuery:
    """A query built once per database and run with new parameters.

    ``build`` returns the query with placeholder values, in the order in
    which ``execute`` takes its parameters.
    """

    def __init__(self, build: Callable[[], peewee.Query]) -> None:
        self._build = build
        self._database: peewee.Database | None = None
        self._sql = ""

    def _prepare(self) -> peewee.Database:
        database = database_proxy.obj
        if database is not self._database:
            self._sql, _ = self._build().sql()
            self._database = database
        return database

    def execute(self, params: Sequence[Any]) -> Any:
        """Run the query and return the cursor."""
        database = self._prepare()
        return database.execute_sql(self._sql, list(params))

    def execute_many(self, rows: Sequence[Sequence[Any]]) -> None:
        """Run the query once for each row of parameters, in one driver call."""
        database = self._prepare()
        # Peewee's execute_sql turns driver errors into peewee errors with
        # this context manager; executemany has no such wrapper of its own.
        with peewee.__exception_wrapper__:  # type: ignore[attr-defined]
            database.cursor().executemany(self._sql, rows)

    def first(self, params: Sequence[Any]) -> tuple[Any, ...] | None:
        """Run the query and return its first row."""
        return self.execute(params).fetchone()
