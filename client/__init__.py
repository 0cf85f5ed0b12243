"""The Python client library of editstore.

`Client` and `AsyncClient` call every method of the daemon's
``SessionService`` and ``StateService`` and return pydantic models.
`StateWriter` buffers state updates of one session and sends them in the
background; `AsyncStateWriter` does the same from a task of an asyncio event
loop, through an `AsyncClient`. Errors are raised as subclasses of
`EditstoreError`, one per gRPC status code.

Example::

    from editstore.client import Client, StateWriter

    with Client("127.0.0.1:50051") as client:
        session = client.create_session("/photos/1.jpg", "make the sky dramatic")
        with StateWriter(client, session.id) as writer:
            writer.update({"current_stage": "analysis"})
            writer.update({"scene_analysis": {"spatial_layout": "sky on top"}})

The library logs to loggers under ``editstore.client`` and adds only a
``logging.NullHandler``; configuring logging is the application's choice.
"""

from __future__ import annotations

import logging

from editstore.client._calls import UNSET
from editstore.client.aio import AsyncClient
from editstore.client.aio_writer import AsyncStateWriter
from editstore.client.client import Client
from editstore.client.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    EditstoreError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)
from editstore.client.journal import JournalInUse
from editstore.client.models import (
    BoundingBox,
    Entity,
    FeedbackType,
    Prompt,
    ResumedSession,
    Session,
    SessionPage,
    SessionStatus,
    StateDocument,
    StateUpdateResult,
    StateVersions,
    UserFeedback,
    Validation,
    WatchEvent,
    WatchEventType,
)
from editstore.client.settings import ClientSettings, RetryPolicy
from editstore.client.streams import AsyncStateUpdateStream, StateUpdateStream
from editstore.client.writer import StateWriter

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "UNSET",
    "Aborted",
    "AlreadyExists",
    "AsyncClient",
    "AsyncStateUpdateStream",
    "AsyncStateWriter",
    "BoundingBox",
    "Cancelled",
    "Client",
    "ClientSettings",
    "DataLoss",
    "DeadlineExceeded",
    "EditstoreError",
    "Entity",
    "FailedPrecondition",
    "FeedbackType",
    "Internal",
    "InvalidArgument",
    "JournalInUse",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "Prompt",
    "ResourceExhausted",
    "ResumedSession",
    "RetryPolicy",
    "Session",
    "SessionPage",
    "SessionStatus",
    "StateDocument",
    "StateUpdateResult",
    "StateUpdateStream",
    "StateVersions",
    "StateWriter",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "UserFeedback",
    "Validation",
    "WatchEvent",
    "WatchEventType",
]
