"""Queries whose SQL Peewee builds once and the write path runs many times.

Building SQL from a Peewee query costs more than SQLite takes to run it (a
profile of a state patch: about 60% of its time went to ``Query.sql()``), so
the hottest queries are built once per database, with placeholder values,
and then run with the parameters of each call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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

    def first(self, params: Sequence[Any]) -> tuple[Any, ...] | None:
        """Run the query and return its first row."""
        return self.execute(params).fetchone()


class RowsQuery:
    """A query over many rows at once, built once per row count and database.

    ``build(count)`` returns the query, or its SQL with the database's
    placeholders, with ``count`` rows (or keys) of placeholder values. Rows
    are sent in as few chunks as the sizes in ``CHUNK_SIZES`` allow (one for
    up to 16 rows), so that each query has at most 19 forms for the driver
    to prepare and keep. One statement for many rows costs less than one
    statement per row, and on SQLite the writer thread gives up the
    interpreter lock once per statement instead of once per row.
    """

    CHUNK_SIZES = (128, 64, 32, *range(16, 0, -1))

    def __init__(self, build: Callable[[int], peewee.Query | str]) -> None:
        self._build = build
        self._database: peewee.Database | None = None
        self._sql: dict[int, str] = {}

    def _statement(self, count: int) -> str:
        database = database_proxy.obj
        if database is not self._database:
            self._sql = {}
            self._database = database
        sql = self._sql.get(count)
        if sql is None:
            built = self._build(count)
            sql = built if isinstance(built, str) else built.sql()[0]
            self._sql[count] = sql
        return sql

    def _chunks(
        self, rows: Sequence[Any], padding: Any = None
    ) -> Iterator[tuple[str, list[Any]]]:
        """Yield the SQL and the rows of each chunk, largest chunks first.

        With ``padding``, the last chunk is filled up with it to the next
        size, so that a query over keys runs once for up to 128 keys.
        """
        start = 0
        while start < len(rows):
            left = len(rows) - start
            count = next(size for size in self.CHUNK_SIZES if size <= left)
            chunk = list(rows[start : start + count])
            if padding is not None and count < left < self.CHUNK_SIZES[0]:
                count = min(size for size in self.CHUNK_SIZES if size >= left)
                chunk = list(rows[start:]) + [padding] * (count - left)
            yield self._statement(count), chunk
            start += count

    def execute(self, rows: Sequence[Sequence[Any]]) -> None:
        """Run the query over ``rows``, each a sequence of its values."""
        for sql, chunk in self._chunks(rows):
            database_proxy.obj.execute_sql(
                sql, [value for row in chunk for value in row]
            )

    def select(self, keys: Sequence[Any], padding: Any) -> list[tuple[Any, ...]]:
        """Run the query with ``keys`` as its placeholder values; return all rows.

        ``padding`` fills the last chunk up to a prepared size, so it must be
        a key that no row has.
        """
        found: list[tuple[Any, ...]] = []
        for sql, chunk in self._chunks(keys, padding):
            found.extend(database_proxy.obj.execute_sql(sql, chunk).fetchall())
        return found
