"""Request ids: a create that arrives twice is applied once.

A write that carries a request id stores its result, or what rebuilds it,
next to the id in the same transaction. When the same id arrives again, the
stored result is returned and nothing is written, so the client gets the
same response both times. The id is remembered for
``--request-id-retention-hours``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Callable
from typing import Any, TypeVar

import peewee

from editstore.server.errors import AlreadyExists, Unavailable
from editstore.server.models import RequestRecord, utc_now
from editstore.server.prepared import PreparedQuery

T = TypeVar("T")

_DATETIME_KEY = "$datetime"
_FIND = PreparedQuery(
    lambda: RequestRecord.select(
        RequestRecord.method, RequestRecord.fingerprint, RequestRecord.response
    ).where(RequestRecord.request_id == "")
)
_SET_RESPONSE = PreparedQuery(
    lambda: RequestRecord.update(response="").where(RequestRecord.request_id == "")
)
_INSERT = PreparedQuery(
    lambda: RequestRecord.insert(
        request_id="",
        method="",
        fingerprint="",
        response="",
        created_at=datetime.datetime(1970, 1, 1),
    )
)


def _encode(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return {_DATETIME_KEY: value.isoformat()}
    raise TypeError(f"cannot store {type(value).__name__} in a request record")


def _decode(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and _DATETIME_KEY in obj:
        return datetime.datetime.fromisoformat(obj[_DATETIME_KEY])
    return obj


def fingerprint(method: str, payload: Any) -> str:
    """Return a digest of a request's content, without its request id."""
    text = json.dumps([method, payload], sort_keys=True, default=_encode)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def once(
    method: str,
    request_id: str,
    payload: Any,
    operation: Callable[[list[Any]], T],
    shrink: Callable[[T], Any] | None = None,
    expand: Callable[[Any], T] | None = None,
) -> Callable[[list[Any]], T]:
    """Wrap a write operation so that its request id applies it only once.

    ``shrink`` turns the result into what is stored with the id, and
    ``expand`` turns that back into the result a repeat returns. Both run in
    the writer's transaction. Without them the whole result is stored.

    Raises (from the returned operation):
        AlreadyExists: the request id was used by a different request.
    """
    if not request_id:
        return operation
    digest = fingerprint(method, payload)

    def stored_result(record: tuple[Any, ...]) -> T:
        stored_method, stored_digest, response = record
        if stored_method != method or stored_digest != digest:
            raise AlreadyExists(
                f"request_id {request_id} was already used by a different "
                f"{stored_method} request; use a new UUID for a new request"
            )
        stored = json.loads(response, object_hook=_decode)
        if expand is not None:
            return expand(stored)
        result: T = stored
        return result

    def run_once(events: list[Any]) -> T:
        record = _FIND.first([request_id])
        if record is not None:
            return stored_result(record)
        # The id is claimed before the write: a daemon sharing the database
        # that runs the same request at once waits on this row, then finds it
        # taken and returns the response stored here.
        try:
            with RequestRecord._meta.database.savepoint():
                _INSERT.execute([request_id, method, digest, "", utc_now()])
        except peewee.IntegrityError:
            record = _FIND.first([request_id])
            if record is None:
                raise Unavailable(
                    f"request_id {request_id} is being applied by another daemon; retry"
                ) from None
            return stored_result(record)
        result = operation(events)
        stored = result if shrink is None else shrink(result)
        _SET_RESPONSE.execute([json.dumps(stored, default=_encode), request_id])
        return result

    return run_once


def prune(retention_hours: float) -> Callable[[list[Any]], int]:
    """Return a write operation that deletes request ids older than retention."""

    def run(events: list[Any]) -> int:
        cutoff = utc_now() - datetime.timedelta(hours=retention_hours)
        query = RequestRecord.delete().where(RequestRecord.created_at < cutoff)
        return int(query.execute())

    return run
