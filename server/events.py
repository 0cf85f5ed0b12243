"""Changes the write path hands to the watch hub after they commit."""

from __future__ import annotations

import dataclasses
import datetime
from typing import TypeAlias


@dataclasses.dataclass(frozen=True, slots=True)
class StateChanged:
    """A state document got a new version."""

    session_id: str
    version: int
    document: str
    merge_patch: str | None
    """The merge patch that made this version; None when it was a put."""
    updated_at: datetime.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class SessionDeleted:
    """A session and everything that belongs to it were deleted."""

    session_id: str


Event: TypeAlias = StateChanged | SessionDeleted
