"""State documents: versioned puts and merge patches, and their kept history.

Every change gives the document the next version. The whole document is
stored as the current one in ``session_states``, and the change as a row of
``state_versions``, of which the last ``state_history`` of each session are
kept. A row of ``state_versions`` contains its whole document after a put,
at the first version and every ``SNAPSHOT_EVERY`` versions. The rows between
contain only their merge patch and an empty document, and a reader rebuilds
their documents from the nearest whole one before them. A small patch so
writes far fewer database pages than a copy of its whole document would
(bench/README.md has the figures). On PostgreSQL the change is also
announced with NOTIFY (see ``pgnotify``).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import threading
from collections.abc import Callable
from typing import Any

import peewee

from editstore.server import documents, requests, validation
from editstore.server.errors import Conflict, InvalidArgument, NotFound, StoreError
from editstore.server.events import StateChanged
from editstore.server.models import (
    Session,
    SessionState,
    StateVersion,
    database_proxy,
    utc_now,
)
from editstore.server.pgnotify import notify_all
from editstore.server.prepared import PreparedQuery, RowsQuery

Operation = Callable[[list[Any]], Any]
DEFAULT_VERSIONS_PAGE = 100
MAX_VERSIONS_PAGE = 1000
# Bytes a StateDocument adds to its document in a response: the session id,
# the version, the timestamp and the field tags, rounded up.
VERSION_OVERHEAD_BYTES = 128
SNAPSHOT_EVERY = 16


@dataclasses.dataclass(frozen=True)
class StateLimits:
    """The settings that bound state documents."""

    max_document_bytes: int
    state_history: int


def get_state(session_id: str) -> StateChanged | None:
    """Return the current document of a session, None if none was written."""
    validation.identifier("session_id", session_id)
    state = SessionState.get_or_none(SessionState.session == session_id)
    if state is None:
        if Session.get_or_none(Session.id == session_id) is None:
            raise NotFound(f"session {session_id!r} not found")
        return None
    return StateChanged(
        session_id, state.version, state.document, None, state.updated_at
    )


def list_versions(
    session_id: str,
    after_version: int,
    page_size: int,
    max_bytes: int = 0,
    state_history: int = 0,
) -> tuple[list[StateChanged], int]:
    """Return kept versions after ``after_version``, oldest first, and the
    oldest kept version (0 when there is none).

    With ``max_bytes`` the page ends before the documents pass that many
    bytes, so that it fits in one gRPC message; it holds at least one version.
    With ``state_history`` only the last that many versions count as kept,
    although the table may still hold a few older ones (see ``_store``).
    """
    validation.identifier("session_id", session_id)
    if after_version < 0:
        raise InvalidArgument(
            f"after_version must not be negative, got {after_version}"
        )
    if page_size < 0 or page_size > MAX_VERSIONS_PAGE:
        raise InvalidArgument(
            f"page_size must be between 0 and {MAX_VERSIONS_PAGE}, got {page_size}"
        )
    if Session.get_or_none(Session.id == session_id) is None:
        raise NotFound(f"session {session_id!r} not found")
    first_kept = 1
    if state_history:
        state = SessionState.get_or_none(SessionState.session == session_id)
        if state is not None:
            first_kept = max(1, state.version - state_history + 1)
    low = max(after_version, first_kept - 1)
    limit = page_size or DEFAULT_VERSIONS_PAGE
    # A row that contains only its patch is rebuilt from the newest row at
    # or before it that contains a whole document.
    base = _BASE_VERSION.first([session_id, low + 1, ""])
    start = low + 1 if base is None or base[0] is None else int(base[0])
    query = (
        StateVersion.select()
        .where((StateVersion.session == session_id) & (StateVersion.version >= start))
        .order_by(StateVersion.version)
        .limit(limit + (low + 1 - start))
    )
    versions: list[StateChanged] = []
    size = 0
    previous: tuple[int, str, dict[str, Any] | None] | None = None
    fragments: documents.Fragments | None = None
    for row in query:
        if row.document:
            text, document = row.document, None
            fragments = None
        elif previous is not None and previous[0] == row.version - 1:
            parsed = previous[2] if previous[2] is not None else json.loads(previous[1])
            document = documents.merge_patch(parsed, json.loads(row.merge_patch))
            text, fragments = documents.dump_reusing(document, fragments)
        else:
            # The row it is rebuilt from is gone: history before the next
            # whole document is lost, which the caller sees as a gap.
            previous = None
            continue
        previous = (row.version, text, document)
        if row.version <= low:
            continue
        size += len(text.encode("utf-8")) + VERSION_OVERHEAD_BYTES
        if max_bytes and versions and size > max_bytes:
            break
        versions.append(
            StateChanged(session_id, row.version, text, row.merge_patch, row.created_at)
        )
        if len(versions) >= limit:
            break
    oldest = (
        StateVersion.select(peewee.fn.MIN(StateVersion.version))
        .where(StateVersion.session == session_id)
        .scalar()
    )
    return versions, 0 if oldest is None else max(int(oldest), first_kept)


def _check_expected(field: str, expected_version: int | None) -> None:
    if expected_version is not None and expected_version < 0:
        raise InvalidArgument(f"{field} must not be negative, got {expected_version}")


def put_state(
    session_id: str,
    document_json: str,
    expected_version: int | None,
    request_id: str,
    limits: StateLimits,
) -> Operation:
    """Return the operation that replaces a session's document."""
    validation.identifier("session_id", session_id)
    request_id = validation.request_id(request_id)
    _check_expected("expected_version", expected_version)
    document = documents.parse_object(document_json, "document_json")
    documents.check_state_fields(document, session_id)
    text = documents.dump(document)
    documents.check_size(text, limits.max_document_bytes)
    change = StateChange(
        session_id, expected_version, limits, document=document, text=text
    )
    if not request_id:
        return change
    payload = {"session_id": session_id, "document": text, "expected": expected_version}
    return requests.once(
        "PutState",
        request_id,
        payload,
        change,
        _without_document,
        _document_read_back(session_id),
    )


def patch_state(
    session_id: str,
    merge_patch_json: str,
    expected_version: int | None,
    request_id: str,
    limits: StateLimits,
) -> Operation:
    """Return the operation that applies a JSON merge patch to a document."""
    validation.identifier("session_id", session_id)
    request_id = validation.request_id(request_id)
    _check_expected("expected_version", expected_version)
    patch = documents.parse_object(merge_patch_json, "merge_patch_json")
    patch_text = documents.dump(patch, "merge_patch_json")
    change = StateChange(
        session_id, expected_version, limits, patch=patch, patch_text=patch_text
    )
    if not request_id:
        return change
    payload = {
        "session_id": session_id,
        "patch": patch_text,
        "expected": expected_version,
    }
    return requests.once(
        "PatchState",
        request_id,
        payload,
        change,
        _without_document,
        _document_read_back(session_id),
    )


def _without_document(result: dict[str, Any]) -> dict[str, Any]:
    """Return the part of a put's or patch's result kept with its request id.

    The document is left out: a retry reads it back from the history, so a
    request id costs a few bytes instead of a copy of the document.
    """
    return {"version": result["version"], "updated_at": result["updated_at"]}


def _document_read_back(
    session_id: str,
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Return the function that rebuilds a stored result of ``session_id``."""

    def read_back(stored: dict[str, Any]) -> dict[str, Any]:
        if "document" in stored:
            return stored  # stored whole by an earlier release
        version = int(stored["version"])
        state = SessionState.get_or_none(SessionState.session == session_id)
        if state is None:
            raise NotFound(f"session {session_id!r} not found")
        if state.version == version:
            return {**stored, "document": state.document}
        versions, _ = list_versions(session_id, version - 1, 1)
        if versions and versions[0].version == version:
            return {**stored, "document": versions[0].document}
        # NOTE: the version was pruned (see _store), so the repeat gets the
        # current document, a newer version than the first response had.
        return {
            "version": state.version,
            "document": state.document,
            "updated_at": state.updated_at,
        }

    return read_back


class StateChange:
    """One put or merge patch of a session's document, as a write operation.

    The writer runs the changes of one batch together (``run_together``).
    The stored documents of the batch's sessions are read in one statement,
    and every change is applied to its document in memory in order. The new
    documents are then written in one statement and the version rows in
    another (each split into chunks of at most 128 rows, ``RowsQuery``).
    A change that fails (a conflict,
    a document over the limit) is skipped before anything is written, so it
    leaves no trace and needs no savepoint.
    """

    __slots__ = (
        "session_id",
        "expected_version",
        "limits",
        "document",
        "patch",
        "text",
        "patch_text",
    )

    def __init__(
        self,
        session_id: str,
        expected_version: int | None,
        limits: StateLimits,
        *,
        document: dict[str, Any] | None = None,
        text: str = "",
        patch: dict[str, Any] | None = None,
        patch_text: str | None = None,
    ) -> None:
        self.session_id = session_id
        self.expected_version = expected_version
        self.limits = limits
        self.document = document
        """The new document of a put, and its JSON text; None for a patch."""
        self.text = text
        self.patch = patch
        self.patch_text = patch_text

    def __call__(self, events: list[Any]) -> dict[str, Any]:
        ((ok, value),) = run_together([self], events)
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    @staticmethod
    def run_together(
        changes: list[StateChange], events: list[Any]
    ) -> list[tuple[bool, Any]]:
        """Apply changes in order; see ``run_together`` of this module."""
        return run_together(changes, events)


class _Session:
    """A session's document as the changes of one batch leave it."""

    __slots__ = (
        "version",
        "first_version",
        "text",
        "document",
        "fragments",
        "updated_at",
    )

    def __init__(self, version: int, text: str) -> None:
        self.version = version
        self.first_version = version
        """The version before this batch."""
        self.text = text
        self.updated_at = _EPOCH
        self.document: dict[str, Any] | None = None
        self.fragments: documents.Fragments | None = None


def _load(session_ids: list[str]) -> dict[str, _Session | None]:
    """Read the current document of each session; None for a missing session."""
    if isinstance(Session._meta.database.obj, peewee.PostgresqlDatabase):
        # The locks come first, so that each document is read after the
        # transaction holding its lock, if any, has committed. Locking in the
        # order of the ids keeps two daemons from waiting on each other.
        ordered = sorted(session_ids)
        found = {row[0] for row in _LOCK_SESSIONS.select(ordered, _NO_SESSION)}
        rows = _CURRENT_STATES.select(ordered, _NO_SESSION)
        rows += [(key, None, None) for key in found - {row[0] for row in rows}]
    else:
        rows = _SESSIONS_AND_STATES.select(session_ids, _NO_SESSION)
    sessions: dict[str, _Session | None] = dict.fromkeys(session_ids)
    for session_id, version, text in rows:
        if version is None:
            sessions[session_id] = _Session(0, "{}")
        else:
            sessions[session_id] = _Session(int(version), text)
    return sessions


def _apply(change: StateChange, session: _Session) -> tuple[str, dict[str, Any]]:
    """Return the text and the document that ``change`` makes of ``session``."""
    if change.patch is None:
        assert change.document is not None
        session.fragments = None
        return change.text, change.document
    if session.document is None:
        session.document, session.fragments = _PARSED.parse(
            change.session_id, session.text
        )
    document = documents.merge_patch(session.document, change.patch)
    documents.check_state_fields(document, change.session_id)
    text, session.fragments = documents.dump_reusing(document, session.fragments)
    documents.check_size(text, change.limits.max_document_bytes)
    return text, document


def run_together(
    changes: list[StateChange], events: list[Any]
) -> list[tuple[bool, Any]]:
    """Apply state changes in order inside the writer's transaction.

    Returns one (succeeded, result or error) pair per change. A failed
    change writes nothing; a database error is raised and fails them all.
    """
    sessions = _load(list(dict.fromkeys(change.session_id for change in changes)))
    # The changes commit together, so they share one time.
    now = utc_now()
    outcomes: list[tuple[bool, Any]] = []
    rows: list[tuple[Any, ...]] = []
    for change in changes:
        session_id = change.session_id
        session = sessions[session_id]
        if session is None:
            outcomes.append((False, NotFound(f"session {session_id!r} not found")))
            continue
        expected = change.expected_version
        if expected is not None and expected != session.version:
            outcomes.append(
                (
                    False,
                    Conflict(
                        f"state of session {session_id!r} is at version "
                        f"{session.version}, but expected_version is "
                        f"{expected}; read the state and retry"
                    ),
                )
            )
            continue
        try:
            text, document = _apply(change, session)
        except StoreError as error:
            outcomes.append((False, error))
            continue
        session.version += 1
        session.text = text
        session.document = document
        session.updated_at = now
        whole = (
            change.patch_text is None
            or session.version % SNAPSHOT_EVERY == 0
            or session.version == 1
            or len(change.patch_text) >= len(text)
        )
        stored = text if whole else ""
        rows.append((session_id, session.version, stored, change.patch_text, now))
        events.append(
            StateChanged(session_id, session.version, text, change.patch_text, now)
        )
        outcomes.append(
            (True, {"version": session.version, "document": text, "updated_at": now})
        )
    if rows:
        changed = {
            session_id: session
            for session_id, session in sessions.items()
            if session is not None and session.version > session.first_version
        }
        _store(changed, rows, changes[0].limits.state_history)
    return outcomes


def _store(
    sessions: dict[str, _Session], rows: list[tuple[Any, ...]], state_history: int
) -> None:
    """Write the changed sessions' documents and the new version rows."""
    _UPSERT_STATES.execute(
        [
            (session_id, session.version, session.text, session.updated_at)
            for session_id, session in sessions.items()
        ]
    )
    for session_id, session in sessions.items():
        if session.document is not None:
            _PARSED.remember(
                session_id, session.text, session.document, session.fragments
            )
    _INSERT_VERSIONS.execute(rows)

    # Versions are pruned each time a session passes a multiple of
    # SNAPSHOT_EVERY, down to the newest whole document that the oldest kept
    # version is rebuilt from. The table so keeps up to about 2 *
    # SNAPSHOT_EVERY versions more than state_history, and readers skip them.
    pruned = []
    for session_id, session in sessions.items():
        first_kept = session.version - state_history + 1
        passed_multiple = (
            session.version // SNAPSHOT_EVERY != session.first_version // SNAPSHOT_EVERY
        )
        if first_kept > 1 and passed_multiple:
            pruned.append((session_id, first_kept))
    _PRUNE_VERSIONS.execute(pruned)

    # Daemons that hear of a version read every version they missed, so the
    # newest version of each session is enough.
    notify_all(
        [
            {"session_id": session_id, "version": session.version}
            for session_id, session in sessions.items()
        ]
    )


class ParsedDocuments:
    """The parsed form of each session's latest document, kept by the writer.

    A patch needs the stored document as a dict. Parsing it again for every
    patch was a fifth of the cost of a patch, so the writer keeps the dict
    it made, and the JSON text of each of its top-level members
    (``documents.dump_reusing``). An entry is used only when its text equals
    the stored text, so a write that was rolled back, or made by another
    daemon, is never mistaken for the current document. Merge patches build
    new dicts and never change the ones kept here.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries: collections.OrderedDict[
            str, tuple[str, dict[str, Any], documents.Fragments | None]
        ] = collections.OrderedDict()
        self._lock = threading.Lock()

    def parse(
        self, session_id: str, text: str
    ) -> tuple[dict[str, Any], documents.Fragments | None]:
        """Return the document of ``text``, parsed now or earlier, and the
        text of its members when known."""
        with self._lock:
            entry = self._entries.get(session_id)
        if entry is not None and entry[0] == text:
            return entry[1], entry[2]
        with documents.collection_paused(len(text)):
            document: dict[str, Any] = json.loads(text)
        return document, None

    def remember(
        self,
        session_id: str,
        text: str,
        document: dict[str, Any],
        fragments: documents.Fragments | None,
    ) -> None:
        """Keep ``document`` as the parsed form of ``text``."""
        with self._lock:
            old = self._entries.pop(session_id, None)
            if old is not None:
                self._bytes -= len(old[0])
            self._entries[session_id] = (text, document, fragments)
            self._bytes += len(text)
            while self._bytes > self._max_bytes and self._entries:
                _, (dropped, _, _) = self._entries.popitem(last=False)
                self._bytes -= len(dropped)


# 16 MiB of document text; the parsed dicts take several times that (an
# estimate: Python objects cost more than the JSON text that holds them).
_PARSED = ParsedDocuments(16 * 1024 * 1024)


def _lock_query(count: int) -> peewee.Query:
    # Serializes the writes of one session across daemons sharing a
    # PostgreSQL database; SQLite's BEGIN IMMEDIATE serializes all writes.
    return (
        Session.select(Session.id)
        .where(Session.id.in_([""] * count))
        .order_by(Session.id)
        .for_update()
    )


def _sessions_and_states_query(count: int) -> peewee.Query:
    """Select sessions and their current documents, if any, in one query."""
    return (
        Session.select(Session.id, SessionState.version, SessionState.document)
        .join(
            SessionState,
            peewee.JOIN.LEFT_OUTER,
            on=(SessionState.session == Session.id),
        )
        .where(Session.id.in_([""] * count))
    )


_EPOCH = datetime.datetime(1970, 1, 1)
# No session has an empty id (``validation.identifier`` rejects it), so it
# pads a list of session ids without matching a row.
_NO_SESSION = ""
_LOCK_SESSIONS = RowsQuery(_lock_query)
_SESSIONS_AND_STATES = RowsQuery(_sessions_and_states_query)
_CURRENT_STATES = RowsQuery(
    lambda count: SessionState.select(
        SessionState.session, SessionState.version, SessionState.document
    ).where(SessionState.session.in_([""] * count))
)
_UPSERT_STATES = RowsQuery(
    lambda count: (
        SessionState.insert_many(
            [("", 0, "", _EPOCH)] * count,
            fields=[
                SessionState.session,
                SessionState.version,
                SessionState.document,
                SessionState.updated_at,
            ],
        )
        .on_conflict(
            conflict_target=[SessionState.session],
            update={
                SessionState.version: peewee.EXCLUDED.version,
                SessionState.document: peewee.EXCLUDED.document,
                SessionState.updated_at: peewee.EXCLUDED.updated_at,
            },
        )
        .returning()
    )
)
_INSERT_VERSIONS = RowsQuery(
    lambda count: StateVersion.insert_many(
        [("", 0, "", "", _EPOCH)] * count,
        fields=[
            StateVersion.session,
            StateVersion.version,
            StateVersion.document,
            StateVersion.merge_patch,
            StateVersion.created_at,
        ],
    ).returning()
)


def _base_version_query() -> peewee.Query:
    """Select the newest version at or before a given one with a whole document."""
    return StateVersion.select(peewee.fn.MAX(StateVersion.version)).where(
        (StateVersion.session == "")
        & (StateVersion.version <= 0)
        & (StateVersion.document != "")
    )


_BASE_VERSION = PreparedQuery(_base_version_query)


def _prune_versions_sql(count: int) -> str:
    """Return the SQL that deletes, for each of ``count`` (session id, first
    kept version) pairs, the session's versions older than the newest whole
    document at or before its first kept version."""
    param = database_proxy.obj.param
    pairs = ", ".join([f"({param}, {param})"] * count)
    return (
        f"WITH pruned (session_id, first_kept) AS (VALUES {pairs}) "
        'DELETE FROM "state_versions" WHERE "id" IN ('
        'SELECT "v"."id" FROM "state_versions" AS "v" '
        'JOIN pruned ON "v"."session_id" = pruned.session_id '
        'WHERE "v"."version" < ('
        'SELECT MAX("b"."version") FROM "state_versions" AS "b" '
        'WHERE "b"."session_id" = pruned.session_id '
        'AND "b"."version" <= pruned.first_kept AND "b"."document" != \'\'))'
    )


_PRUNE_VERSIONS = RowsQuery(_prune_versions_sql)
