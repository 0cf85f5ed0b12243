"""The write path: one writer thread that commits waiting writes together.

SQLite allows one writer at a time and each commit costs a disk flush, so
every write of the process goes through ``Writer``. Its thread takes all
requests that are waiting and runs them in one transaction, each inside its
own savepoint so that one bad request fails alone (except the operations run
together, below). It commits once, and only
then returns each caller's result: group commit. A caller never sees its
result before its write is durable.

An operation is a function ``operation(events) -> result`` run on the writer
thread inside the transaction. It may append events to ``events``; they reach
``on_commit`` after the commit, and are dropped if the operation fails.

An operation with a ``run_together`` attribute is run with the operations
next to it in the batch that have the same one, by a single call
``run_together(operations, events)`` that returns a ``(succeeded, result or
error)`` pair for each. It runs without savepoints, so it must leave no trace
of an operation that fails; a database error it raises fails the batch, which
is then retried one write at a time.

Callers on an asyncio loop ``await writer.run(operation)``. The writer wakes
all callers of one loop with a single ``call_soon_threadsafe`` per batch,
because each hand-off between threads costs CPU time. Callers on other
threads use ``writer.submit(operation).result()``.

``Writer`` serves PostgreSQL, where each statement is a round trip. A SQLite
file is served by ``LoopWriter``, which runs the statements on the event
loop and only the commit on a thread; its docstring explains why.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import peewee

from editstore.server import errors
from editstore.server.database import (
    SQLITE_BUSY_TIMEOUT_MS,
    is_busy,
    is_connection_lost,
    is_disk_full,
    reset_if_broken,
    root_cause,
)
from editstore.server.logs import RateLimitedLog

logger = logging.getLogger(__name__)

T = TypeVar("T")
Operation = Callable[[list[Any]], T]
RunTogether = Callable[[list[Any], list[Any]], list[tuple[bool, Any]]]
MAX_BATCH = 512
# A LoopWriter batch of stream updates alone takes up to LOOP_MAX_BATCH
# writes. While any other write waits, a batch takes up to
# LOOP_SHARED_BATCH. Larger batches spread a commit's flush over more writes,
# and each stream response then acknowledges more updates. With py-spy
# attached, 64 streams made 13,021 updates a second with batches of 512 and
# 10,080 with 128. But large batches keep the event loop busy without a
# pause, and the gRPC server then accepts new calls slowly. 200 unary
# callers beside those streams made 63 to 98 calls a second with batches of
# 256 or 512, waiting 2.2 to 3.0 s each, against 776 with 128.
LOOP_MAX_BATCH = 512
LOOP_SHARED_BATCH = 128
# The maximum time a LoopWriter batch waits for more writes (see LoopWriter).
# Of fixed waits of 0, 1, 2, 4 and 8 ms tried under 64 unary callers, 8 ms
# gave the largest batches (23 to 25 writes, against 3 to 5 without a wait)
# and the least CPU per call.
GATHER_SECONDS = 0.008
# Only a commit of at least this many writes makes the next batch wait: with
# one or two callers, waiting for their next writes took a fifth of the calls
# a second (2 callers, 1,010 against 1,253).
GATHER_AFTER = 4


# A retry that resends an update failed with UNAVAILABLE, or because the
# database was full, must not apply it after later updates of the same stream.
ORDER_BROKEN = (
    "not applied: an earlier update on this stream failed with UNAVAILABLE "
    "or because the database was full; resend the unacknowledged updates in "
    "order"
)


class _Request:
    __slots__ = ("operation", "loop", "future", "source", "queued_at")

    def __init__(
        self,
        operation: Operation[Any],
        loop: asyncio.AbstractEventLoop | None,
        future: asyncio.Future[Any] | concurrent.futures.Future[Any],
        source: object = None,
    ) -> None:
        self.operation = operation
        self.loop = loop
        self.future = future
        self.source = source
        """The stream the request came from, whose requests apply in order."""
        self.queued_at = time.monotonic()


_failures = RateLimitedLog(logger, 5.0, "write failures")


def translate_database_error(
    error: peewee.DatabaseError | peewee.InterfaceError,
) -> errors.StoreError:
    """Map a database error to the store error a client can act on."""
    if isinstance(error, peewee.IntegrityError):
        text = str(error).lower()
        if "foreign key" in text:
            return errors.NotFound("the session does not exist")
        if "unique" in text or "duplicate" in text:
            return errors.AlreadyExists(f"a unique value is already used: {error}")
        return errors.InvalidArgument(f"a value breaks a constraint: {error}")
    if isinstance(error, peewee.InterfaceError) or is_connection_lost(error):
        return errors.Unavailable(f"the database connection was lost, retry: {error}")
    if is_disk_full(error):
        return errors.DatabaseFull(
            "the database is full: its disk or its quota (--max-database-bytes) "
            "has no room left; free space or raise the quota"
        )
    if is_busy(error):
        return errors.Unavailable(f"the database is busy, retry: {error}")
    return errors.Unavailable(f"the database failed, retry: {error}")


def _run_together_of(operation: Operation[Any]) -> RunTogether | None:
    together: RunTogether | None = getattr(operation, "run_together", None)
    return together


def _resolve(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in items:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class _WriteQueue:
    """The writes waiting for a batch: the updates of streams, in the order
    they came, and beside them the other writes (unary calls, other threads).

    A batch takes the other writes first, since each is a caller waiting for
    one write, while a stream may have a thousand updates queued. Taken in
    arrival order, a unary call waited behind all of them: on PostgreSQL,
    200 unary callers beside 64 streams with 1,000 updates in flight each
    waited 7.9 s (p50), and 175 ms once taken first. They get at most
    half of a batch that stream updates are waiting for, so that a crowd of
    unary callers cannot stall the streams either.
    """

    def __init__(self) -> None:
        self._streams: list[_Request] = []
        self._others: list[_Request] = []

    def __len__(self) -> int:
        return len(self._streams) + len(self._others)

    @property
    def has_others(self) -> bool:
        """Whether a write that is not a stream update is waiting."""
        return bool(self._others)

    def append(self, request: _Request) -> None:
        if request.source is None:
            self._others.append(request)
        else:
            self._streams.append(request)

    def extend(self, requests: list[_Request]) -> None:
        for request in requests:
            self.append(request)

    def take(self, limit: int) -> list[_Request]:
        """Remove and return up to ``limit`` writes, the other writes first."""
        others = min(len(self._others), limit)
        if self._streams:
            others = min(others, max(limit // 2, limit - len(self._streams)))
        batch = self._others[:others]
        del self._others[:others]
        rest = limit - len(batch)
        batch += self._streams[:rest]
        del self._streams[:rest]
        return batch

    def put_back(self, batch: list[_Request]) -> None:
        """Return the writes of a batch that did not run to the front."""
        self._others[:0] = [request for request in batch if request.source is None]
        self._streams[:0] = [request for request in batch if request.source is not None]

    def drain(self) -> list[_Request]:
        """Remove and return every write."""
        drained = self._others + self._streams
        self._others = []
        self._streams = []
        return drained


class Writer:
    """Run every write of the process in group-committed transactions."""

    def __init__(
        self,
        database: peewee.Database,
        on_commit: Callable[[list[Any]], None] | None = None,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._database = database
        self._on_commit = on_commit
        self._max_batch = max_batch
        self._queue = _WriteQueue()
        # Requests of the event loop's current pass, not yet handed over.
        self._handover: list[_Request] = []
        self._condition = threading.Condition()
        self._stopping = False
        self._deadline: float | None = None
        self._thread = threading.Thread(
            target=self._serve, name="editstore-writer", daemon=True
        )
        self.batches = 0
        self.writes = 0
        self._broken: weakref.WeakSet[object] = weakref.WeakSet()
        """Sources with a write that failed with UNAVAILABLE or on a full
        database: their later writes fail too, so that a client resending
        the failed one applies the stream in order. Entries go when the
        stream's object does."""

    @property
    def queued(self) -> int:
        """The number of writes waiting for a batch."""
        return len(self._queue)

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Commit what is queued, then stop the thread and close its connection.

        Writes still queued after ``timeout`` seconds fail with Unavailable
        instead of being committed.
        """
        with self._condition:
            self._stopping = True
            if timeout is not None:
                self._deadline = time.monotonic() + timeout
            self._condition.notify()
        if self._thread.is_alive():
            self._thread.join()

    async def run(self, operation: Operation[T]) -> T:
        """Queue an operation and return its result once it is committed."""
        return await self.enqueue(operation)

    def enqueue(
        self, operation: Operation[T], source: object = None
    ) -> asyncio.Future[T]:
        """Queue an operation from the event loop without waiting for it.

        Requests made during one pass of the event loop are handed to the
        writer together when the pass ends, so that they share a batch and a
        commit. Handing each over at once would wake the writer for the first
        and leave the rest for later, smaller batches. ``source`` names the
        stream of an update (any object that lives as long as the stream).
        Once one of its writes fails with UNAVAILABLE, its later writes fail
        with UNAVAILABLE without being applied.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._stopping:
            raise errors.Unavailable("the daemon is stopping; retry on another")
        if not self._handover:
            loop.call_soon(self._hand_over)
        self._handover.append(_Request(operation, loop, future, source))
        return future

    def cancel_all(self, futures: list[asyncio.Future[Any]]) -> None:
        """Cancel the futures of one caller's queued writes as one step.

        The writer thread drops cancelled writes only when it takes a batch,
        under the same lock. So it never applies a later update of a stream
        while dropping an earlier one, and a client that sends its
        unacknowledged updates again applies them in their order.
        """
        with self._condition:
            for future in futures:
                future.cancel()

    def _hand_over(self) -> None:
        requests, self._handover = self._handover, []
        with self._condition:
            if self._stopping:
                error = errors.Unavailable("the daemon is stopping; retry on another")
                self._fail(requests, error)
                return
            was_empty = not self._queue
            self._queue.extend(requests)
            if was_empty:
                self._condition.notify()

    def submit(self, operation: Operation[T]) -> concurrent.futures.Future[T]:
        """Queue an operation from any thread; the future resolves after commit."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._enqueue(_Request(operation, None, future))
        return future

    def _enqueue(self, request: _Request) -> None:
        with self._condition:
            if self._stopping:
                raise errors.Unavailable("the daemon is stopping; retry on another")
            self._queue.append(request)
            if len(self._queue) == 1:
                self._condition.notify()

    def _serve(self) -> None:
        try:
            while True:
                with self._condition:
                    while not self._queue and not self._stopping:
                        self._condition.wait()
                    if not self._queue:
                        return
                    batch = self._queue.take(self._max_batch)
                    late = self._past_deadline()
                    # A caller that went away (a cancelled call or stream) is
                    # not waiting for its write, so it is dropped rather than
                    # applied. This is decided under the lock that
                    # ``cancel_all`` takes, so a stream's queued updates are
                    # dropped all together or not at all.
                    waiting = [
                        request for request in batch if not request.future.cancelled()
                    ]
                if late and waiting:
                    logger.warning("dropped %d queued writes at shutdown", len(waiting))
                    self._fail(waiting, errors.Unavailable("the daemon stopped first"))
                elif waiting:
                    self._run_guarded(waiting)
        finally:
            if not self._database.is_closed():
                self._database.close()

    def _run_guarded(self, batch: list[_Request]) -> None:
        """Run a batch; an unexpected error fails it but never ends the thread."""
        try:
            self._run_batch(batch)
        except Exception:
            logger.exception("batch of %d writes failed unexpectedly", len(batch))
            reset_if_broken(self._database)
            self._fail(batch, errors.Unavailable("the write failed; retry"))

    def _run_batch(self, batch: list[_Request]) -> None:
        try:
            outcomes, events = self._commit(batch)
        except (peewee.DatabaseError, peewee.InterfaceError) as error:
            reset_if_broken(self._database)
            if len(batch) > 1:
                # The transaction failed as a whole (a full disk, a lost
                # connection): retry each write alone so that only the
                # writes that cannot commit fail.
                _failures.warning(
                    "batch of %d writes failed (%s); retrying each alone",
                    len(batch),
                    root_cause(error),
                )
                for request in batch:
                    self._run_batch([request])
                return
            _failures.warning("write failed: %s", root_cause(error))
            outcomes, events = [(False, translate_database_error(error))], []
        self._answer(batch, outcomes, events)

    def _answer(
        self,
        batch: list[_Request],
        outcomes: list[tuple[bool, Any]],
        events: list[Any],
    ) -> None:
        """Count a finished batch, resolve its callers' futures, publish its events."""
        self.batches += 1
        self.writes += len(batch)
        self._deliver(batch, outcomes)
        if events and self._on_commit is not None:
            try:
                self._on_commit(events)
            except Exception:
                logger.exception("handing %d committed events on failed", len(events))

    def _commit(
        self, batch: list[_Request]
    ) -> tuple[list[tuple[bool, Any]], list[Any]]:
        events: list[Any] = []
        with self._database.atomic():
            outcomes = self._apply_all(batch, events)
        return outcomes, events

    def _apply_all(
        self, batch: list[_Request], events: list[Any]
    ) -> list[tuple[bool, Any]]:
        """Run a batch's operations inside the open transaction, in order."""
        outcomes: list[tuple[bool, Any]] = []
        index = 0
        while index < len(batch):
            request = batch[index]
            if self._past_deadline():
                outcomes.append((False, errors.Unavailable("the daemon stopped first")))
                index += 1
                continue
            if self._is_broken(request):
                outcomes.append((False, errors.Unavailable(ORDER_BROKEN)))
                index += 1
                continue
            together = _run_together_of(request.operation)
            if together is None:
                outcome = self._run_one(request.operation, events)
                self._note_outcome(request, outcome)
                outcomes.append(outcome)
                index += 1
                continue
            end = index + 1
            while (
                end < len(batch)
                and _run_together_of(batch[end].operation) is together
                and not self._is_broken(batch[end])
            ):
                end += 1
            operations = [request.operation for request in batch[index:end]]
            outcomes.extend(together(operations, events))
            index = end
        return outcomes

    def _run_one(
        self, operation: Operation[Any], events: list[Any]
    ) -> tuple[bool, Any]:
        mark = len(events)
        try:
            with self._database.savepoint():
                result = operation(events)
            return True, result
        except errors.StoreError as error:
            del events[mark:]
            return False, error
        except peewee.IntegrityError as error:
            del events[mark:]
            return False, translate_database_error(error)
        except (peewee.DatabaseError, peewee.InterfaceError):
            # The transaction itself failed, such as on a lost connection:
            # the batch is retried one write at a time.
            raise
        except Exception as error:
            logger.exception("write operation failed")
            del events[mark:]
            return False, error

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() > self._deadline

    def _is_broken(self, request: _Request) -> bool:
        return request.source is not None and request.source in self._broken

    def _note_outcome(self, request: _Request, outcome: tuple[bool, Any]) -> None:
        """Mark the request's stream broken when the request failed with
        UNAVAILABLE or on a full database, errors after which a client
        resends."""
        ok, value = outcome
        if not ok and request.source is not None:
            if isinstance(value, (errors.Unavailable, errors.DatabaseFull)):
                self._broken.add(request.source)

    def _fail(self, batch: list[_Request], error: errors.StoreError) -> None:
        if batch:
            self._deliver(batch, [(False, error)] * len(batch))

    def _deliver(self, batch: list[_Request], outcomes: list[tuple[bool, Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for request, outcome in zip(batch, outcomes, strict=True):
            self._note_outcome(request, outcome)
            ok, value = outcome
            if request.loop is None:
                future = request.future
                assert isinstance(future, concurrent.futures.Future)
                try:
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
                except concurrent.futures.InvalidStateError:
                    pass  # cancelled by its caller meanwhile
            else:
                by_loop.setdefault(request.loop, []).append((request.future, ok, value))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:
                logger.warning(
                    "event loop closed; %d callers got no response", len(items)
                )


class LoopWriter(Writer):
    """The writer of a SQLite file: statements on the event loop, commits beside it.

    ``Writer`` runs a batch on a thread of its own. With SQLite that thread
    releases the interpreter lock at every step of every statement and then
    waits for the event loop to release it again. A batch of 1 ms of work so
    took 4 to 7 ms, and its callers waited. Here the event loop runs a batch's
    statements itself, which takes no hand-off. Only the ``COMMIT``, where
    SQLite writes and flushes the log, runs on a thread. The loop goes on
    serving calls meanwhile, and the next batch starts once the commit is
    done. The guarantee is the same as ``Writer``'s: a caller's future
    resolves after its write's commit, and a failed batch is retried one
    write at a time (these retries commit on the event loop).

    Each batch costs the loop a fixed share (the statements' setup, the
    hand-off to the commit thread) on top of each write's own. So when a
    commit of at least ``GATHER_AFTER`` writes ends with writes queued, the
    next batch waits until one more write has come for each write
    committed, at most ``GATHER_SECONDS``. The callers whose writes just
    committed are likely to send their next writes meanwhile. A burst, or
    callers that went away, cost one wait. A caller writing alone never
    waits: its queue is empty when each commit ends.
    """

    def __init__(
        self,
        database: peewee.Database,
        on_commit: Callable[[list[Any]], None] | None = None,
        max_batch: int = LOOP_MAX_BATCH,
    ) -> None:
        super().__init__(database, on_commit, max_batch)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._committer = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="editstore-commit"
        )
        self._busy = False
        """A batch is running: its statements, or its commit on the thread."""
        self._scheduled = False
        self._idle = threading.Event()
        self._idle.set()
        self._tuned: object = None
        """The connection last set to fail at once when the file is locked."""
        self._gathering = False
        """The next batch waits for more writes (see the class docstring)."""
        self._gather_size = 0
        self._gather_timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Bind the writer to the running event loop."""
        self._loop = asyncio.get_running_loop()

    def stop(self, timeout: float | None = None) -> None:
        """Commit what is queued, failing what is left after ``timeout`` seconds.

        Called from a thread other than the event loop's, which runs the
        batches meanwhile.
        """
        loop = self._loop
        self._stopping = True
        if timeout is not None:
            self._deadline = time.monotonic() + timeout
        if loop is None or loop.is_closed():
            self._committer.shutdown(wait=True)
            return
        try:
            loop.call_soon_threadsafe(self._schedule)
        except RuntimeError:
            pass  # the loop has closed
        else:
            self._idle.wait(None if timeout is None else timeout + 1)
            if not self._idle.is_set():
                # The loop did not drain in time, so what is queued fails.
                loop.call_soon_threadsafe(self._fail_queued)
                self._idle.wait(1.0)
        self._committer.shutdown(wait=True)

    def enqueue(
        self, operation: Operation[T], source: object = None
    ) -> asyncio.Future[T]:
        """Queue an operation from the event loop; see ``Writer.enqueue``."""
        if self._stopping:
            raise errors.Unavailable("the daemon is stopping; retry on another")
        loop = self._loop
        assert loop is not None, "LoopWriter.start was not called"
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append(_Request(operation, loop, future, source))
        if self._idle.is_set():
            self._idle.clear()
        if self._gathering and len(self._queue) >= self._gather_size:
            loop.call_soon(self._end_gathering)
        self._schedule()
        return future

    def cancel_all(self, futures: list[asyncio.Future[Any]]) -> None:
        """Cancel one caller's queued writes; see ``Writer.cancel_all``.

        Batches are taken on the event loop, the thread that cancels, so a
        stream's queued updates are dropped all together or not at all.
        """
        for future in futures:
            future.cancel()

    def submit(self, operation: Operation[T]) -> concurrent.futures.Future[T]:
        """Queue an operation from another thread."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        if self._stopping or self._loop is None:
            raise errors.Unavailable("the daemon is stopping; retry on another")
        self._loop.call_soon_threadsafe(self._add, _Request(operation, None, future))
        return future

    def _add(self, request: _Request) -> None:
        self._queue.append(request)
        self._idle.clear()
        self._schedule()

    def _schedule(self) -> None:
        """Start a batch at the next pass of the loop, once none is running.

        Waiting for the next pass lets the requests of this pass join it.
        """
        if self._busy or self._scheduled:
            return
        self._scheduled = True
        assert self._loop is not None
        self._loop.call_soon(self._start_batch)

    def _fail_queued(self) -> None:
        queued = self._queue.drain()
        self._fail(queued, errors.Unavailable("the daemon stopped first"))
        if not self._busy:
            self._idle.set()

    def _batch_limit(self) -> int:
        """Return the number of writes the next batch may take, which is
        LOOP_SHARED_BATCH when a write that is not a stream update waits."""
        if self._max_batch > LOOP_SHARED_BATCH and self._queue.has_others:
            return LOOP_SHARED_BATCH
        return self._max_batch

    def _start_batch(self) -> None:
        self._scheduled = False
        if self._busy:
            return
        size = self._batch_limit()
        batch = [
            request
            for request in self._queue.take(size)
            if not request.future.cancelled()
        ]
        if not batch:
            if self._queue:
                self._schedule()
            else:
                self._idle.set()
            return
        if self._past_deadline():
            logger.warning("dropped %d queued writes at shutdown", len(batch))
            self._fail(batch, errors.Unavailable("the daemon stopped first"))
            self._schedule()
            return

        database = self._database
        transaction = database.atomic()
        if not self._begin(transaction, batch):
            return
        events: list[Any] = []
        try:
            outcomes = self._apply_all(batch, events)
        except BaseException as error:
            try:
                transaction.__exit__(type(error), error, error.__traceback__)
            except Exception as rollback_error:  # noqa: BLE001 - see below
                # SQLite rolls back by itself on errors such as SQLITE_FULL, so
                # this ROLLBACK finds no transaction. The batch's own error
                # matters, and its writes are retried below.
                logger.debug("rollback after a failed batch: %s", rollback_error)
            if not isinstance(error, Exception):
                raise
            self._retry(batch)
            return

        # Peewee's record of the open transaction is dropped here, on the
        # loop's thread, since the thread below ends it with its own COMMIT.
        database.pop_transaction()
        self._busy = True
        connection = database.connection()
        committed = self._loop.run_in_executor(  # type: ignore[union-attr]
            self._committer, connection.commit
        )
        committed.add_done_callback(
            lambda done: self._finish(batch, outcomes, events, done)
        )

    def _begin(self, transaction: Any, batch: list[_Request]) -> bool:
        """Start the batch's transaction without making the event loop wait.

        Only another process can hold the file's write lock (a backup, a
        tool). While it does, the batch goes back to the queue and BEGIN is
        tried again 5 ms later. A write fails with UNAVAILABLE once it has
        waited as long as ``Writer`` would wait, counted from when it was
        queued. The loop goes on serving calls meanwhile.
        """
        database = self._database
        connection = database.connection()
        if connection is not self._tuned:
            # Inside the transaction nothing else can take the lock, so no
            # statement of this connection waits for one.
            connection.execute("PRAGMA busy_timeout = 0")
            self._tuned = connection
        try:
            transaction.__enter__()
        except (peewee.DatabaseError, peewee.InterfaceError) as error:
            now = time.monotonic()
            if not is_busy(error):
                self._retry(batch)
                return False
            # Each write waits for the lock up to the timeout from the time it
            # was queued, so a write queued late still gets its full wait.
            oldest = now - SQLITE_BUSY_TIMEOUT_MS / 1000
            expired = [request for request in batch if request.queued_at < oldest]
            if expired:
                _failures.warning(
                    "writes failed after waiting %d ms for a lock held by "
                    "another process (%d writes): %s",
                    SQLITE_BUSY_TIMEOUT_MS,
                    len(expired),
                    error,
                )
                self._fail(expired, translate_database_error(error))
                batch = [request for request in batch if request.queued_at >= oldest]
            self._queue.put_back(batch)
            self._scheduled = True
            assert self._loop is not None
            self._loop.call_later(0.005, self._start_batch)
            return False
        return True

    def _finish(
        self,
        batch: list[_Request],
        outcomes: list[tuple[bool, Any]],
        events: list[Any],
        done: asyncio.Future[None],
    ) -> None:
        self._busy = False
        error = done.exception()
        if error is not None:
            try:
                self._database.rollback()
            except Exception:  # noqa: BLE001 - SQLite may have rolled back already
                pass
            _failures.warning(
                "commit of %d writes failed (%s)", len(batch), root_cause(error)
            )
            self._retry(batch)
            return
        self._answer(batch, outcomes, events)
        if self._queue:
            self._schedule_gathering(len(batch))
        else:
            self._idle.set()

    def _schedule_gathering(self, committed: int) -> None:
        """Start the next batch once ``committed`` more writes are queued, or
        after ``GATHER_SECONDS``, whichever comes first."""
        loop = self._loop
        size = min(self._batch_limit(), len(self._queue) + committed)
        if (
            loop is None
            or committed < GATHER_AFTER
            or self._stopping
            or self._busy
            or self._scheduled
            or len(self._queue) >= size
        ):
            self._schedule()
            return
        self._scheduled = True
        self._gathering = True
        self._gather_size = size
        self._gather_timer = loop.call_later(GATHER_SECONDS, self._end_gathering)

    def _end_gathering(self) -> None:
        # Called by the timer or by the write that completes the batch,
        # whichever comes first; the other finds nothing to do.
        if not self._gathering:
            return
        self._gathering = False
        if self._gather_timer is not None:
            self._gather_timer.cancel()
            self._gather_timer = None
        self._start_batch()

    def _retry(self, batch: list[_Request]) -> None:
        """Run each write of a failed batch alone, committing on the loop."""
        reset_if_broken(self._database)
        for request in batch:
            self._run_guarded([request])
        self._schedule()

    def _deliver(self, batch: list[_Request], outcomes: list[tuple[bool, Any]]) -> None:
        loop = self._loop
        if any(request.loop is not loop for request in batch):
            super()._deliver(batch, outcomes)
            return
        for request, outcome in zip(batch, outcomes, strict=True):
            self._note_outcome(request, outcome)
            ok, value = outcome
            future = request.future
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
