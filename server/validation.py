"""Checks of the values a client sends, before the database sees them.

Each check raises ``InvalidArgument`` with a message that names the field, the
rule and the value, e.g. "rating must be between 1 and 5, got 7". The
database holds the specification's CHECK constraints too; these checks reject
the same values first, and more that the specification leaves open.
"""

from __future__ import annotations

import math
import re
import uuid

from editstore.server.errors import InvalidArgument

COLOR_HEX = re.compile(r"#[0-9A-Fa-f]{6}")
# Small enough that a session, its state document and a page of records always
# fit in one gRPC message (the document limit plus 64 KiB).
MAX_TEXT_BYTES = 16 * 1024
MAX_ID_CHARS = 256
INT32_MAX = 2**31 - 1


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def text(field: str, value: str, *, required: bool = False) -> str:
    """Check a text value: valid Unicode, not too long, present if required."""
    if required and not value.strip():
        raise InvalidArgument(f"{field} is required and must not be empty")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_TEXT_BYTES:
        raise InvalidArgument(
            f"{field} must be at most {MAX_TEXT_BYTES} bytes in UTF-8, got {size}"
        )
    if "\x00" in value:
        raise InvalidArgument(f"{field} must not contain NUL characters")
    return value


def identifier(field: str, value: str) -> str:
    """Check an id: present, short, printable."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    if len(value) > MAX_ID_CHARS or not value.isprintable():
        raise InvalidArgument(
            f"{field} must be at most {MAX_ID_CHARS} printable characters, "
            f"got {_show(value)}"
        )
    return value


def request_id(value: str) -> str:
    """Check a request id and return it in canonical form; empty means none.

    One UUID has several spellings (upper case, braces, a urn: prefix); they
    all name the same request.
    """
    if not value:
        return value
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgument(
            f"request_id must be a UUID such as {uuid.uuid4()}, got {_show(value)}"
        ) from None


def finite(field: str, value: float | None) -> float | None:
    """Check that a number is finite when set."""
    if value is not None and not math.isfinite(value):
        raise InvalidArgument(f"{field} must be a finite number, got {value}")
    return value


def between(field: str, value: float | None, low: float, high: float) -> float | None:
    """Check that a number, when set, is finite and within [low, high]."""
    finite(field, value)
    if value is not None and not low <= value <= high:
        raise InvalidArgument(
            f"{field} must be between {low:g} and {high:g}, got {value}"
        )
    return value


def count(field: str, value: int) -> int:
    """Check that a count or index is not negative."""
    if value < 0:
        raise InvalidArgument(f"{field} must not be negative, got {value}")
    if value > INT32_MAX:
        raise InvalidArgument(f"{field} must be at most {INT32_MAX}, got {value}")
    return value


def color_hex(field: str, value: str) -> str:
    """Check a colour: empty (unknown) or #RRGGBB."""
    if value and not COLOR_HEX.fullmatch(value):
        raise InvalidArgument(
            f"{field} must be a colour as #RRGGBB, got {_show(value)}"
        )
    return value


def bounding_box(
    field: str, box: tuple[float, float, float, float] | None
) -> tuple[float, float, float, float] | None:
    """Check a box [x, y, width, height]: finite, with no negative size."""
    if box is None:
        return None
    for name, value in zip(("x", "y", "width", "height"), box, strict=True):
        finite(f"{field}.{name}", value)
    if box[2] < 0 or box[3] < 0:
        raise InvalidArgument(
            f"{field} must not have a negative size, got width {box[2]} "
            f"and height {box[3]}"
        )
    return box


def choice(field: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    """Check that a value is one of the allowed ones."""
    if value is not None and value not in allowed:
        raise InvalidArgument(
            f"{field} must be one of {', '.join(allowed)}, got {_show(value)}"
        )
    return value
