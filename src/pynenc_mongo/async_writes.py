"""History writers: synchronous, or asynchronous with per-invocation tracking.

pynenc 0.2.3's base class records history asynchronously with one new thread per
record, kept forever in a dict. :class:`AsyncHistoryWriter` does it with
asynchronous MongoDB operations on one event loop thread per process
(:mod:`pynenc_mongo.aio`):

* ``submit`` appends the records to a buffer and returns without waiting for
  MongoDB; one drain task on the loop writes whatever is buffered in one
  ``insert_many`` (at most :data:`MAX_BATCH` documents), then the next batch.
  Batches are written one after another, so an invocation's records become
  durable in the order they were submitted.
* Before each batch the drain lingers up to :data:`LINGER_SECONDS` so that the
  records of concurrent tasks share one ``insert_many`` (a task's REGISTERED,
  PENDING, RUNNING and SUCCESS records arrive milliseconds apart); a full
  batch, a ``wait``/``wait_all`` on pending records or ``close`` cuts the
  linger short, so a reader in this process never waits for it.
* Every record gets a sequence number and each invocation remembers its last
  one. ``wait(id)`` blocks until every record of ``id`` submitted before the call
  is written; ``wait_all()`` likewise for all. Tracking entries are dropped as
  batches complete: memory is bounded by what is in flight.
* Backpressure: at most ``mongo_max_pending_writes`` records in flight; past
  that, ``submit`` blocks until the backlog drains.
* Transient errors and an unreachable server (see
  :func:`pynenc_mongo.errors.is_outage`) are retried with exponential backoff for
  up to ``mongo_outage_tolerance_seconds`` (default 30 s); meanwhile the batch and
  every record submitted after it stay buffered (backpressure as above), none is
  dropped. The insert is idempotent (client-made ``_id``, duplicates skipped), so
  a batch whose reply was lost is simply inserted again. A failure for good (a
  permanent error, or the server still unreachable past the tolerance) is logged
  with the invocation ids and raised from the next wait for each affected
  invocation (and from ``wait_all``) as
  :class:`~pynenc_mongo.errors.AsyncOperationError`; past the tolerance as its
  subclass :class:`~pynenc_mongo.errors.AsyncUnavailableError` (also a
  ``MongoUnavailableError``), naming the host and how long it waited.

:func:`make_history_writer` picks the writer from ``mongo_history_write_mode``:
``auto`` follows the installed pynenc's contract (asynchronous on 0.2.x, whose
base records history asynchronously; synchronous on 0.4.x, whose base persists
the record before ``add_history`` returns).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from pynenc.state_backend.base_state_backend import BaseStateBackend

from pynenc_mongo import aio, at_exit, schema
from pynenc_mongo.errors import (
    AsyncOperationError,
    AsyncUnavailableError,
    MongoUnavailableError,
    translate,
    with_retry_async,
)
from pynenc_mongo.operations import DUPLICATE_KEY, only_duplicates

if TYPE_CHECKING:
    from pymongo.collection import Collection

    from pynenc_mongo.config import ConfigStateBackendMongo

logger = logging.getLogger("pynenc_mongo")

#: Most documents in one ``insert_many`` of history records.
MAX_BATCH = 5_000
#: Longest time a batch waits for more records before it is written (seconds),
#: unless someone waits on pending records; see the module docstring.
LINGER_SECONDS = 0.05
#: How often a lingering drain checks whether it should stop lingering (seconds).
LINGER_POLL_SECONDS = 0.001
#: Most permanent failures remembered for invocations nobody has waited on yet.
MAX_REMEMBERED_FAILURES = 10_000

#: A coroutine function inserting a batch: ``await insert(docs)``.
InsertBatch = Callable[[list[dict[str, Any]]], Awaitable[None]]


class HistoryTarget(Protocol):
    """What a history writer needs from its owner (the state backend's history part,
    :class:`pynenc_mongo.state_backend.history.History`; this module never imports it)."""

    @property
    def conf(self) -> ConfigStateBackendMongo:
        """The settings: write mode, pending-write cap, async driver, URL, timeouts."""

    @property
    def database_name(self) -> str:
        """The database the history collection is in."""

    def collection(self, logical: str) -> Collection[dict[str, Any]]:
        """A physical collection, its indexes ensured."""

    def collection_name(self, logical: str) -> str:
        """The physical name of a logical collection."""

    def write_history_now(self, docs: list[dict[str, Any]]) -> None:
        """Insert history documents now (idempotent)."""

    def describe_target(self) -> str:
        """Where the history goes: redacted URL and database (for error messages)."""


class HistoryWriter(Protocol):
    """What the backend needs from a history writer."""

    def submit(self, docs: list[dict[str, Any]]) -> None:
        """Write (or schedule) history documents."""

    def wait(self, invocation_id: str) -> None:
        """Block until this invocation's writes issued so far are durable."""

    def wait_all(self) -> None:
        """Block until every write issued so far is durable."""

    def pending(self, invocation_id: str) -> bool:
        """True while some of this invocation's writes are in flight."""

    def close(self, timeout_seconds: float | None = None, log_unwritten: bool = True) -> bool:
        """Flush and stop; False if records were still being written after
        ``timeout_seconds`` (None: no limit)."""

    def is_stale(self) -> bool:
        """True in a forked child: the writer must be re-created there."""


def pynenc_writes_history_async() -> bool:
    """True on pynenc 0.2.x, whose base class records history asynchronously
    (it defines ``wait_for_all_async_operations``; 0.4 removed it)."""
    return hasattr(BaseStateBackend, "wait_for_all_async_operations")


class SyncHistoryWriter:
    """Writes each batch before returning (pynenc 0.4's contract)."""

    def __init__(self, backend: HistoryTarget) -> None:
        self._backend = backend
        self._pid = os.getpid()

    def submit(self, docs: list[dict[str, Any]]) -> None:
        """Insert ``docs`` now, in one ``insert_many``."""
        self._backend.write_history_now(docs)

    def wait(self, invocation_id: str) -> None:
        """Nothing is ever pending: returns at once."""

    def wait_all(self) -> None:
        """Nothing is ever pending: returns at once."""

    def pending(self, invocation_id: str) -> bool:
        """Always False."""
        return False

    def close(self, timeout_seconds: float | None = None, log_unwritten: bool = True) -> bool:
        """Nothing to flush: True."""
        return True

    def is_stale(self) -> bool:
        """True after a fork (harmless for this writer, but keeps one rule)."""
        return self._pid != os.getpid()


class AsyncHistoryWriter:
    """Asynchronous, batched, tracked history writes (see the module docstring).

    :param HistoryTarget backend: the owner (settings, collection names).
    :param InsertBatch | None insert: replaces the MongoDB insert (tests inject
        failing fakes here); by default an idempotent unordered ``insert_many`` on
        the loop's asynchronous client.

    Attributes: ``tolerance`` (the owner's ``mongo_outage_tolerance_seconds``),
    ``longest_retry`` (:func:`pynenc_mongo.at_exit.longest_retry`) and
    ``where`` (the server it writes to, password redacted), for errors and the exit log.
    """

    def __init__(self, backend: HistoryTarget, insert: InsertBatch | None = None) -> None:
        conf = backend.conf
        self._pid = os.getpid()
        self._cap = conf.mongo_max_pending_writes
        self._cond = threading.Condition()
        self._buffer: list[tuple[int, dict[str, Any]]] = []
        self._submitted_seq = 0
        self._completed_seq = 0
        self._in_flight = 0
        self._last_seq: dict[str, int] = {}
        self._failures: OrderedDict[str, BaseException] = OrderedDict()
        self._draining = False
        self._closed = False
        self._waiters = 0
        self.tolerance = conf.mongo_outage_tolerance_seconds
        self.longest_retry = at_exit.longest_retry(conf)
        self.where = backend.describe_target()
        if insert is None:
            backend.collection(schema.HISTORY)  # ensures the indexes (sync client)
            insert = _mongo_insert(
                conf.mongo_url,
                backend.database_name,
                conf.mongo_async_driver,
                conf.mongo_server_selection_timeout_seconds,
                backend.collection_name(schema.HISTORY),
            )
        self._insert = insert
        _live_writers.add(self)
        at_exit.write_all_at_worker_exit()

    # -- caller side ---------------------------------------------------------
    def submit(self, docs: list[dict[str, Any]]) -> None:
        """Schedule ``docs`` (history documents) and return without waiting for MongoDB.

        Blocks only while ``mongo_max_pending_writes`` records are in flight.

        :raises RuntimeError: if the writer was closed.
        """
        if not docs:
            return
        start = False
        with self._cond:
            if self._closed:
                raise RuntimeError("history writer is closed")
            self._block_until(
                lambda: not self._in_flight or self._in_flight + len(docs) <= self._cap
            )
            for doc in docs:
                self._submitted_seq += 1
                self._buffer.append((self._submitted_seq, doc))
                self._last_seq[doc[schema.F_INV]] = self._submitted_seq
            self._in_flight += len(docs)
            if not self._draining:
                self._draining = start = True
        if start:
            aio.run(self._drain())

    def _block_until(self, done: Callable[[], bool], timeout_seconds: float | None = None) -> bool:
        """With ``self._cond`` held: wait until ``done()`` (at most ``timeout_seconds``;
        None: no limit), counted as a waiter, which cuts the drain's linger short (see
        the module docstring). Returns ``done()``."""
        if done():
            return True
        self._waiters += 1
        try:
            return self._cond.wait_for(done, timeout=timeout_seconds)
        finally:
            self._waiters -= 1

    def pending(self, invocation_id: str) -> bool:
        """True while records of ``invocation_id`` are buffered or being written."""
        with self._cond:
            return invocation_id in self._last_seq

    def wait(self, invocation_id: str) -> None:
        """Block until the records of ``invocation_id`` submitted so far are written.

        Returns at once when none are in flight.

        :raises AsyncOperationError: naming the invocation and the cause, if one
            of its writes failed for good (raised once).
        """
        with self._cond:
            target = self._last_seq.get(invocation_id)
            if target is not None:
                self._block_until(lambda: self._completed_seq >= target)
            failure = self._failures.pop(invocation_id, None)
        if failure is not None:
            raise _async_error(invocation_id, failure)

    def wait_all(self) -> None:
        """Block until every record submitted so far is written.

        :raises AsyncOperationError: for the first invocation whose write failed
            for good (all remembered failures are cleared).
        """
        with self._cond:
            target = self._submitted_seq
            self._block_until(lambda: self._completed_seq >= target)
            failures = list(self._failures.items())
            self._failures.clear()
        if failures:
            invocation_id, cause = failures[0]
            if len(failures) > 1:
                logger.error("%d invocations had failed history writes", len(failures))
            raise _async_error(invocation_id, cause)

    def tracked_invocations(self) -> int:
        """How many invocations have records in flight (bounded by in-flight work)."""
        with self._cond:
            return len(self._last_seq)

    def close(self, timeout_seconds: float | None = None, log_unwritten: bool = True) -> bool:
        """Flush what is pending, then refuse new records. Failures are logged, not raised.

        :param float | None timeout_seconds: the longest wait for the pending records
            (None: until they are written or failed for good, which the retry policy
            bounds unless an insert never returns); past it the writer is closed anyway.
        :param bool log_unwritten: log the records not written in time (the exit's
            step logs them itself, :mod:`pynenc_mongo.at_exit`).
        :return: False if records were still being written when the time was up.
        """
        with self._cond:
            if self._closed:
                return True
            target = self._submitted_seq
            written = self._block_until(lambda: self._completed_seq >= target, timeout_seconds)
            failures = list(self._failures.items())
            self._failures.clear()
            unwritten = len(self._last_seq)
            self._closed = True
        _live_writers.discard(self)
        if failures:
            invocation_id, cause = failures[0]
            logger.error(
                "pynenc-mongo: at close, history writes of %d invocation(s) failed: %s",
                len(failures),
                _async_error(invocation_id, cause),
            )
        if not written and log_unwritten:
            logger.error(
                "pynenc-mongo: at close, history records of %d invocation(s) not written "
                "within %.1f s (%s)",
                unwritten,
                timeout_seconds or 0.0,
                self.where,
            )
        return written

    def is_stale(self) -> bool:
        """True in a forked child (its buffer and loop belong to the parent)."""
        return self._pid != os.getpid()

    # -- loop side -------------------------------------------------------------
    def _linger_over(self) -> bool:
        """True when the next batch should be written now: full, or someone waits
        for it (``wait``, ``wait_all``, ``close``, a caller held by backpressure)."""
        with self._cond:
            return len(self._buffer) >= MAX_BATCH or self._waiters > 0 or self._closed

    async def _linger(self) -> None:
        """Wait up to :data:`LINGER_SECONDS` for more records (see the module docstring)."""
        if LINGER_SECONDS <= 0:
            return
        deadline = time.monotonic() + LINGER_SECONDS
        while not self._linger_over() and time.monotonic() < deadline:
            await asyncio.sleep(LINGER_POLL_SECONDS)

    async def _drain(self) -> None:
        while True:
            await self._linger()
            with self._cond:
                if not self._buffer:
                    self._draining = False
                    return
                batch = self._buffer[:MAX_BATCH]
                del self._buffer[:MAX_BATCH]
            docs = [doc for _, doc in batch]
            error: BaseException | None = None
            try:
                await self._insert_with_retry(docs)
            except Exception as exc:  # noqa: BLE001 - reported through wait()
                error = translate(exc, self.where)
                ids = sorted({doc[schema.F_INV] for doc in docs})
                logger.error(
                    "pynenc-mongo: history write failed for good for invocation(s) %s: %s: %s",
                    ", ".join(ids[:20]) + (" ..." if len(ids) > 20 else ""),
                    type(error).__name__,
                    error,
                )
            self._complete(batch, error)

    async def _insert_with_retry(self, docs: list[dict[str, Any]]) -> None:
        """Insert one batch under the retry policy with this writer's outage tolerance
        (see :func:`pynenc_mongo.errors.with_retry_async`); the insert is idempotent."""

        async def insert() -> None:
            await self._insert(docs)

        await with_retry_async(insert, self.tolerance)

    def _complete(
        self, batch: list[tuple[int, dict[str, Any]]], error: BaseException | None
    ) -> None:
        last = batch[-1][0]
        with self._cond:
            self._completed_seq = last
            self._in_flight -= len(batch)
            for _, doc in batch:
                inv_id = doc[schema.F_INV]
                if error is not None:
                    self._failures[inv_id] = error
                    self._failures.move_to_end(inv_id)
                if self._last_seq.get(inv_id, 0) <= last:
                    self._last_seq.pop(inv_id, None)
            while len(self._failures) > MAX_REMEMBERED_FAILURES:
                self._failures.popitem(last=False)
            self._cond.notify_all()


def _mongo_insert(
    url: str, database: str, driver: str, timeout_seconds: float, collection: str
) -> InsertBatch:
    """An idempotent unordered ``insert_many`` on the loop's asynchronous client.

    The client is created here, on the caller's thread, never on the loop thread
    (issue 16, item 3; see :meth:`pynenc_mongo.aio.LoopThread.client`).
    """
    from pymongo.errors import BulkWriteError, DuplicateKeyError

    client = aio.loop_thread().client(url, database, driver, timeout_seconds)

    async def insert(docs: list[dict[str, Any]]) -> None:
        try:
            await client[database][collection].insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            if not only_duplicates(exc):
                raise
        except DuplicateKeyError as exc:
            if exc.code != DUPLICATE_KEY:
                raise

    return insert


def _async_error(invocation_id: str, cause: BaseException) -> AsyncOperationError:
    """The error a wait raises for a failed write: :class:`AsyncUnavailableError`
    when MongoDB stayed unreachable past the tolerance, else :class:`AsyncOperationError`."""
    if isinstance(cause, MongoUnavailableError):
        return AsyncUnavailableError(invocation_id, cause)
    return AsyncOperationError(invocation_id, cause)


_live_writers: weakref.WeakSet[AsyncHistoryWriter] = weakref.WeakSet()


def _exit_steps() -> list[tuple[at_exit.Step, float]]:
    """At exit (:func:`pynenc_mongo.at_exit.write_all`): one step per live writer of
    this process, closing it within the seconds left, and its longest retry."""
    steps: list[tuple[at_exit.Step, float]] = []
    for writer in [w for w in list(_live_writers) if not w.is_stale()]:
        name = f"history records of {writer.tracked_invocations()} invocation(s) ({writer.where})"

        def write(seconds_left: float, writer: AsyncHistoryWriter = writer) -> None:
            if not writer.close(timeout_seconds=seconds_left, log_unwritten=False):
                raise TimeoutError("still being written at the exit deadline (may still land)")

        steps.append(((name, write), writer.longest_retry))
    return steps


def make_history_writer(backend: HistoryTarget) -> HistoryWriter:
    """Build the writer that ``mongo_history_write_mode`` selects (see module docstring)."""
    mode = backend.conf.mongo_history_write_mode
    if mode == "async" or (mode == "auto" and pynenc_writes_history_async()):
        return AsyncHistoryWriter(backend)
    return SyncHistoryWriter(backend)


at_exit.add_source(_exit_steps)
