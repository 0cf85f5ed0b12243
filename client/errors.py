"""Exceptions raised by the editstore client: one class per gRPC status code.

Every error the daemon returns is raised as a subclass of `EditstoreError`
chosen by its status code, with the ``grpc.RpcError`` kept as ``__cause__``::

    try:
        client.get_session(session_id)
    except NotFound:
        ...
    except EditstoreError as error:
        print(error.code, error.message)
"""

from __future__ import annotations

import grpc

__all__ = [
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "EditstoreError",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "error_for_code",
    "error_from_rpc",
]


class EditstoreError(Exception):
    """The root of every error the daemon returns to this client.

    Attributes:
        code: The gRPC status code of the failed call.
        message: The daemon's message, which names the field and the rule.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class Cancelled(EditstoreError):
    """The call was cancelled, usually by the caller."""

    code = grpc.StatusCode.CANCELLED


class Unknown(EditstoreError):
    """The daemon failed in a way it did not classify."""

    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(EditstoreError):
    """A field of the request breaks a rule; the message names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(EditstoreError):
    """The call did not finish before its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(EditstoreError):
    """The session does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(EditstoreError):
    """An iteration, entity_id or request_id is already used."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(EditstoreError):
    """The caller is not allowed to make this call."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(EditstoreError):
    """A message, document, quota or stream limit was exceeded."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(EditstoreError):
    """The change is forbidden in the current state, e.g. a status change."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(EditstoreError):
    """An expected version or etag did not match the stored one."""

    code = grpc.StatusCode.ABORTED


class OutOfRange(EditstoreError):
    """A value is past the valid range."""

    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(EditstoreError):
    """The daemon does not implement this method."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(EditstoreError):
    """The daemon broke one of its own invariants."""

    code = grpc.StatusCode.INTERNAL


class Unavailable(EditstoreError):
    """The daemon is down, stopping or busy; a retry may succeed."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(EditstoreError):
    """Data was lost or corrupted."""

    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(EditstoreError):
    """A bearer token is required and was missing or wrong."""

    code = grpc.StatusCode.UNAUTHENTICATED


_CLASS_BY_CODE: dict[grpc.StatusCode, type[EditstoreError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}

# grpc.StatusCode values are (number, name) pairs; streamed acknowledgements
# carry only the number.
_CODE_BY_NUMBER: dict[int, grpc.StatusCode] = {
    code.value[0]: code for code in grpc.StatusCode
}


def error_for_code(code: grpc.StatusCode | int, message: str) -> EditstoreError:
    """Build the exception for a status code given as an enum or a number."""
    if isinstance(code, int):
        code = _CODE_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    cls = _CLASS_BY_CODE.get(code, EditstoreError)
    return cls(message, code)


def error_from_rpc(error: grpc.RpcError) -> EditstoreError:
    """Build the exception for a failed call; raise it ``from error``."""
    code_method = getattr(error, "code", None)
    details_method = getattr(error, "details", None)
    code = code_method() if callable(code_method) else None
    details = details_method() if callable(details_method) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    return error_for_code(code, details or str(error))
