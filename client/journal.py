"""The state writer's local journal: a JSON file per session.

The journal contains the last document the daemon acknowledged and the merge
patches it has not acknowledged yet, so that a new process can send what an
earlier one could not. It is the session's local state file::

    {
      "format": "editstore-state-journal/1",
      "session_id": "5b0c...",
      "version": 7,
      "document": {"current_stage": "refinement", ...},
      "unsent": [
        {"request_id": "0f4e...", "merge_patch": {"prompts": {...}}},
        {"request_id": null, "merge_patch": {"current_stage": "editing"}}
      ]
    }

``unsent`` lists the patches in the order they must be applied. A patch with
a ``request_id`` may have reached the daemon already; it must be sent again
with that same id, which the daemon applies at most once. A patch without one
was never sent.

Every write replaces the file atomically: the new content goes to a
temporary file in the same folder, which is flushed to disk and renamed over
the journal, and then the folder itself is flushed so that the rename
survives a power cut. A reader sees the old journal or the new one, never a
mix.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

from editstore.client import jsondoc

__all__ = [
    "JOURNAL_FORMAT",
    "Journal",
    "JournalInUse",
    "JournalLock",
    "JournalPatch",
    "remove_stale",
    "write_atomic",
]

JOURNAL_FORMAT = "editstore-state-journal/1"


@dataclass(frozen=True)
class JournalPatch:
    """One merge patch the daemon has not acknowledged."""

    merge_patch: dict[str, Any]
    request_id: str | None = None
    """The id it was sent with; ``None`` when it was never sent."""


@dataclass
class Journal:
    """The content of a journal file."""

    session_id: str
    document: dict[str, Any] | None = None
    """The last document the daemon acknowledged; ``None`` when unknown."""
    version: int = 0
    """The version of ``document``."""
    unsent: list[JournalPatch] = field(default_factory=list)

    def to_json(self) -> str:
        return jsondoc.dumps(
            {
                "format": JOURNAL_FORMAT,
                "session_id": self.session_id,
                "version": self.version,
                "document": self.document,
                "unsent": [
                    {"request_id": item.request_id, "merge_patch": item.merge_patch}
                    for item in self.unsent
                ],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Journal:
        """Parse a journal.

        Raises:
            ValueError: The text is not a journal of this format.
        """
        data = jsondoc.loads_object(text)
        if data.get("format") != JOURNAL_FORMAT:
            raise ValueError(
                f"not a state journal: format is {data.get('format')!r}, "
                f"expected {JOURNAL_FORMAT!r}"
            )
        session_id = data.get("session_id")
        if not isinstance(session_id, str) or not session_id:
            raise ValueError("state journal has no session_id")
        document = data.get("document")
        if document is not None and not isinstance(document, dict):
            raise ValueError("state journal's document is not an object")
        unsent = []
        for index, item in enumerate(data.get("unsent") or []):
            patch = item.get("merge_patch") if isinstance(item, dict) else None
            request_id = item.get("request_id") if isinstance(item, dict) else None
            if not isinstance(patch, dict):
                raise ValueError(f"state journal's unsent[{index}] has no merge_patch")
            if request_id is not None and not isinstance(request_id, str):
                raise ValueError(f"state journal's unsent[{index}].request_id is bad")
            unsent.append(JournalPatch(merge_patch=patch, request_id=request_id))
        version = data.get("version", 0)
        if not isinstance(version, int):
            raise ValueError("state journal's version is not an integer")
        return cls(session_id, document, version, unsent)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Journal | None:
        """Read a journal file; ``None`` when it does not exist."""
        try:
            text = pathlib.Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        return cls.from_json(text)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the journal atomically and durably."""
        write_atomic(path, self.to_json().encode("utf-8"))


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace the file at ``path`` with ``data``, atomically and durably."""
    target = pathlib.Path(path)
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=folder
    )
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: pathlib.Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        # Some platforms (Windows) cannot open a folder; the rename is then as
        # durable as the file system makes it.
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class JournalInUse(ValueError):
    """Another state writer, in this process or another, uses the journal."""


class JournalLock:
    """An advisory lock that lets one state writer at a time use a journal.

    Two writers on one journal would each send the other's patches again
    under new request ids. The lock is ``flock`` on a file beside the
    journal, ``.NAME.lock``; the system releases it when the process dies.
    Where ``flock`` does not exist (Windows), nothing is locked.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._journal = pathlib.Path(path)
        self._path = self._journal.parent / f".{self._journal.name}.lock"
        self._descriptor: int | None = None

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            JournalInUse: another writer has it.
            OSError: the lock file cannot be created.
        """
        if sys.platform == "win32":
            return
        import fcntl

        self._path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise JournalInUse(
                f"journal {self._journal} is in use "
                "by another state writer; close that one first, or give each "
                "writer its own journal"
            ) from None
        self._descriptor = descriptor

    def release(self) -> None:
        """Release the lock; releasing twice does nothing."""
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is not None:
            os.close(descriptor)


def remove_stale(path: str | os.PathLike[str]) -> bool:
    """Remove a journal that a failed write could not replace.

    The journal on disk is then older than the writer's updates, and a
    writer built on it later would send patches the daemon has applied
    since. Returns whether no journal is left.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True
