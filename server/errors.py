"""Errors of the storage layer, one class per outcome a client can act on.

The storage layer knows nothing of gRPC. The error interceptor maps each class
to its status code (see ``editstore.server.interceptors``); anything else that
escapes a handler is logged and becomes INTERNAL.
"""

from __future__ import annotations


class StoreError(Exception):
    """Root of the errors a request can cause."""


class InvalidArgument(StoreError):
    """A field breaks a rule. The message names the field and the value."""


class NotFound(StoreError):
    """The session or record does not exist."""


class AlreadyExists(StoreError):
    """A unique value (iteration, entity_id, request_id) is already used."""


class Conflict(StoreError):
    """An expected version or etag does not match the stored one."""


class FailedPrecondition(StoreError):
    """The request is valid but not allowed in the current state."""


class ResourceExhausted(StoreError):
    """A size limit, the database quota or the disk is exhausted."""


class DatabaseFull(ResourceExhausted):
    """The database's disk or quota is full: the write was valid, and may
    succeed once space is freed."""


class Unavailable(StoreError):
    """The daemon is stopping or the database is busy; a retry may succeed."""
