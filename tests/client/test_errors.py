"""One exception class per gRPC status code, under EditstoreError."""

from __future__ import annotations

import grpc
import pytest

import editstore.client as client_package
from editstore.client import EditstoreError, errors

pytestmark = pytest.mark.timeout(30)

CLASS_NAMES = {
    grpc.StatusCode.CANCELLED: "Cancelled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}


def test_every_error_code_has_its_class() -> None:
    for code, name in CLASS_NAMES.items():
        cls = getattr(client_package, name)
        assert issubclass(cls, EditstoreError)
        error = errors.error_for_code(code, "message")
        assert type(error) is cls
        assert error.code == code
        assert error.message == "message"


def test_numeric_codes_map_like_enum_codes() -> None:
    for code in CLASS_NAMES:
        by_number = errors.error_for_code(code.value[0], "m")
        assert by_number.code == code


def test_unknown_number_becomes_unknown() -> None:
    assert type(errors.error_for_code(99, "m")) is errors.Unknown


def test_error_text_names_code_and_message() -> None:
    error = errors.error_for_code(grpc.StatusCode.NOT_FOUND, "session x not found")
    assert str(error) == "NOT_FOUND: session x not found"
