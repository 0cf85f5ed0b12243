"""The records the client returns, as pydantic models.

Each model mirrors a message of ``editstore.v1``. Times are timezone-aware
datetimes in UTC, enums are string enums (``SessionStatus.COMPLETED ==
"completed"``), and state documents are plain ``dict`` objects whose
integers stay ``int``. Fields the daemon assigns (ids, times) are ``None`` on
a model built by the caller.

The models check types only. Rules such as "rating between 1 and 5" are the
daemon's to enforce, so a bad value comes back as `InvalidArgument` naming
the field, the same for every client language.
"""

from __future__ import annotations

import datetime
import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BoundingBox",
    "Entity",
    "FeedbackType",
    "Prompt",
    "ResumedSession",
    "Session",
    "SessionPage",
    "SessionStatus",
    "StateDocument",
    "StateUpdateResult",
    "StateVersions",
    "UserFeedback",
    "Validation",
    "WatchEvent",
    "WatchEventType",
]


class SessionStatus(enum.StrEnum):
    """The stage of a session's life. A session never leaves an end status."""

    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


class FeedbackType(enum.StrEnum):
    """The person's verdict on an edit."""

    ACCEPT = "accept"
    REJECT = "reject"
    PARTIAL = "partial"


class WatchEventType(enum.StrEnum):
    """The kind of a `WatchEvent`."""

    SNAPSHOT = "snapshot"
    """The whole document at a version; changes after it follow."""
    CHANGE = "change"
    """One committed change; ``state`` is the document after it."""
    HISTORY_LOST = "history_lost"
    """The versions asked for are no longer kept; a snapshot follows."""
    HEARTBEAT = "heartbeat"
    """Nothing changed for the daemon's heartbeat interval."""
    SESSION_DELETED = "session_deleted"
    """The session was deleted; the watch ends after this event."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Session(_Model):
    """One run of the agent on one photo and one instruction."""

    id: str | None = None
    """The UUID the daemon assigned."""
    create_time: datetime.datetime | None = None
    """When the session was created, in UTC."""
    image_path: str
    """The path of the photo, as the agent names it."""
    naive_prompt: str
    """The instruction as the person wrote it."""
    status: SessionStatus | None = None
    """The status; ``None`` for a row stored without one."""
    final_alignment_score: float | None = None
    """The alignment score of the final edit, when set."""
    etag: str | None = None
    """A checksum to pass to ``update_session`` for optimistic locking."""


class SessionPage(_Model):
    """One page of ``list_sessions``."""

    sessions: list[Session]
    """The sessions, newest first."""
    next_page_token: str
    """The token of the next page; empty on the last page."""


class BoundingBox(_Model):
    """A rectangle in pixels, origin at the top left."""

    x: float
    y: float
    width: float
    height: float

    @classmethod
    def from_xywh(cls, xywh: list[float] | tuple[float, ...]) -> BoundingBox:
        """Build a box from a COCO-style ``[x, y, width, height]`` list."""
        x, y, width, height = xywh
        return cls(x=x, y=y, width=width, height=height)


class Prompt(_Model):
    """One refinement of the prompts sent to the image model."""

    id: int | None = None
    session_id: str
    iteration: int
    """The refinement step, from 0; unique within a session."""
    positive_prompt: str = ""
    negative_prompt: str = ""
    quality_score: float | None = None
    create_time: datetime.datetime | None = None


class Entity(_Model):
    """An object found in the photo."""

    id: int | None = None
    session_id: str | None = None
    entity_id: str
    """The agent's name for the entity, e.g. ``"sky_0"``."""
    label: str = ""
    confidence: float | None = None
    """The detector's confidence, from 0 to 1."""
    bbox: BoundingBox | None = None
    mask_path: str = ""
    color_hex: str = ""
    """The main colour as ``"#RRGGBB"``; empty when unknown."""
    area_percent: float | None = None
    """The share of the photo the entity covers, from 0 to 100."""


class Validation(_Model):
    """The check of one edit attempt."""

    id: int | None = None
    session_id: str
    attempt_number: int
    alignment_score: float | None = None
    preserved_count: int = 0
    modified_count: int = 0
    unintended_count: int = 0
    user_feedback: str = ""
    create_time: datetime.datetime | None = None


class UserFeedback(_Model):
    """The person's verdict on a session."""

    id: int | None = None
    session_id: str
    feedback_type: FeedbackType | None
    """The verdict; ``None`` only for a row stored without one."""
    comments: str = ""
    rating: int | None = None
    """The rating from 1 to 5, when given."""
    create_time: datetime.datetime | None = None


class StateDocument(_Model):
    """A session's state document at one version."""

    session_id: str
    version: int
    """1 for the first write, one more per change; 0 when none was written."""
    document: dict[str, Any] = Field(default_factory=dict)
    """The document; ``{}`` at version 0."""
    update_time: datetime.datetime | None = None
    """When this version was stored, in UTC; ``None`` at version 0."""


class StateVersions(_Model):
    """The result of ``list_state_versions``."""

    versions: list[StateDocument]
    """The kept versions asked for, oldest first."""
    oldest_kept_version: int
    """The oldest version still kept; 0 when there is no document."""


class StateUpdateResult(_Model):
    """The acknowledgement of one update sent on a state update stream."""

    sequence: int
    """The sequence number the update was sent with."""
    version: int
    """The document version the update produced."""


class WatchEvent(_Model):
    """One event of ``watch_state``."""

    type: WatchEventType
    state: StateDocument | None = None
    """The document after a CHANGE, or the whole document of a SNAPSHOT."""
    merge_patch: dict[str, Any] | None = None
    """For a CHANGE made by a patch, the merge patch the daemon applied."""


class ResumedSession(_Model):
    """Everything stored about one session, read in one transaction."""

    session: Session
    prompts: list[Prompt]
    """In order of iteration."""
    entities: list[Entity]
    """In the order they were added."""
    validations: list[Validation]
    """In the order they were added."""
    user_feedback: list[UserFeedback]
    """In the order it was given."""
    state: StateDocument
    """The state document; version 0 when none was written."""
