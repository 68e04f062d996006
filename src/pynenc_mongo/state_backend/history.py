"""History: the ``history`` collection, written through a history writer.

``add_history``/``add_histories`` build the records the way pynenc's base class
does, and this part writes all of them in one ``insert_many`` through a history
writer (synchronous, or asynchronous with per-invocation tracking: see
:mod:`pynenc_mongo.async_writes`, which sees this part only as a
:class:`~pynenc_mongo.async_writes.HistoryTarget`). No thread is created per record.
Reads that could miss this process's own pending history writes wait for them.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache
from pymongo.collection import Collection
from pynenc.invocation.status import InvocationStatus
from pynenc.state_backend.base_state_backend import InvocationHistory

from pynenc_mongo import schema
from pynenc_mongo.async_writes import HistoryWriter, make_history_writer
from pynenc_mongo.config import ConfigStateBackendMongo
from pynenc_mongo.errors import translate_errors
from pynenc_mongo.operations import insert_if_absent, iter_resumable
from pynenc_mongo.schema import F_APP, F_INV, F_TS_US
from pynenc_mongo.state_backend.common import StorePart, check_str
from pynenc_mongo.state_backend.invocations import Invocations
from pynenc_mongo.store import MongoStore

if TYPE_CHECKING:
    from pynenc.identifiers.invocation_id import InvocationId
    from pynenc.invocation.dist_invocation import DistributedInvocation
    from pynenc.invocation.status import InvocationStatusRecord


#: Extra lifetime of a history record written before its invocation is known to be
#: final (a backstop so a late-landing record expires too; see ``_stamp_for_expiry``).
HISTORY_BACKSTOP = timedelta(days=90)
#: Invocation ids whose expiry stamp each process remembers (LRU).
STAMPED_REMEMBERED = 10_000


class History(StorePart):
    """The ``history`` collection of one app and its history writer.

    :param MongoStore store: the app's store.
    :param ConfigStateBackendMongo conf: the backend's settings
        (``mongo_history_write_mode``, ``mongo_retention_days``, ...).
    :param Invocations invocations: whose deferred inserts are written before any
        history record (an invocation is stored before its history).
    """

    def __init__(
        self, store: MongoStore, conf: ConfigStateBackendMongo, invocations: Invocations
    ) -> None:
        super().__init__(store)
        self.conf = conf
        self._invocations = invocations
        self._writer_lock = threading.Lock()
        self.current_writer: HistoryWriter | None = None
        # Invocations this process stamped for expiry: their later records get the
        # same ``expire_at`` when written (issue 16, item 6).
        self._stamped: LRUCache[str, datetime] = LRUCache(maxsize=STAMPED_REMEMBERED)
        _live_histories.add(self)

    # ------------------------------------------------------------ HistoryTarget
    def collection(self, logical: str) -> Collection[dict[str, Any]]:
        """A physical collection, indexes ensured (for the history writer)."""
        return self.store.collection(logical)

    def collection_name(self, logical: str) -> str:
        """The physical name of a logical collection (prefix applied)."""
        return self.store.collection_name(logical)

    @property
    def database_name(self) -> str:
        """The database the store uses."""
        return self.store.database_name

    @translate_errors
    def write_history_now(self, docs: list[dict[str, Any]]) -> None:
        """Insert history documents now (idempotent: client-made ``_id``)."""
        self.store.retry(insert_if_absent, self.store.collection(schema.HISTORY), docs)

    # ------------------------------------------------------------ the writer
    @property
    def writer(self) -> HistoryWriter:
        """The history writer (created on first use, and again in a forked child)."""
        writer = self.current_writer
        if writer is None or writer.is_stale():
            with self._writer_lock:
                writer = self.current_writer
                if writer is None or writer.is_stale():
                    writer = make_history_writer(self)
                    self.current_writer = writer
        return writer

    def close(self) -> None:
        """Flush pending asynchronous writes and stop the writer."""
        with self._writer_lock:
            writer, self.current_writer = self.current_writer, None
        if writer is not None:
            writer.close()

    def live_writer(self) -> HistoryWriter | None:
        """The current writer, or None before first use and in a forked child whose
        writer is the parent's (its pending records drain on the parent's loop thread,
        which the child does not have: waiting on them would hang forever)."""
        writer = self.current_writer
        if writer is None or writer.is_stale():
            return None
        return writer

    def wait(self, invocation_id: str) -> None:
        """Block until this process's writes for ``invocation_id`` issued so far are durable
        (returns at once in a forked child holding the parent's writer).

        :raises pynenc_mongo.errors.AsyncOperationError: if one of them failed for good.
        """
        writer = self.live_writer()
        if writer is not None:
            writer.wait(invocation_id)

    def wait_all(self) -> None:
        """Block until every history write of this process issued so far is durable
        (returns at once in a forked child holding the parent's writer).

        :raises pynenc_mongo.errors.AsyncOperationError: if any failed for good.
        """
        writer = self.live_writer()
        if writer is not None:
            writer.wait_all()

    def reset_after_fork(self) -> None:
        """In a forked child: a fresh lock, no writer (the parent's is re-created on
        the child's first write), and no expiry stamps remembered by the parent."""
        self._writer_lock = threading.Lock()
        self.current_writer = None
        self._stamped = LRUCache(maxsize=STAMPED_REMEMBERED)

    # ------------------------------------------------------------ writes
    def add_for(
        self,
        invocations: list[DistributedInvocation[Any, Any]],
        status_record: InvocationStatusRecord,
        runner_id: str,
    ) -> None:
        """Record the same status change for many invocations in one ``insert_many``.

        ``registered_by_inv_id`` is the parent invocation for REGISTERED records,
        as in pynenc's base class.
        """
        docs = []
        for invocation in invocations:
            registered_by = (
                invocation.parent_invocation_id
                if status_record.status == InvocationStatus.REGISTERED
                else None
            )
            history = InvocationHistory(
                invocation_id=invocation.invocation_id,
                status_record=status_record,
                runner_context_id=runner_id,
                registered_by_inv_id=registered_by,
            )
            docs.append(schema.history_doc(self.app_id, invocation.invocation_id, history))
        self.write_docs(docs)

    def add(self, invocation_ids: list[InvocationId], history: InvocationHistory) -> None:
        """Store ``history`` once for each id (one ``insert_many``)."""
        self.write_docs([schema.history_doc(self.app_id, i, history) for i in invocation_ids])

    def write_docs(self, docs: list[dict[str, Any]]) -> None:
        """Submit history documents to the writer; with retention, stamp finished
        invocations' documents for expiry (see :meth:`expire_invocation`).

        :raises TypeError: if an invocation id is not a str.
        """
        if not docs:
            return
        for doc in docs:  # ids become query values: a dict would act as an operator
            check_str("invocation_id", doc[F_INV])
        self._invocations.flush_deferred()  # the invocations are stored before their history
        retention_days = self.conf.mongo_retention_days
        if retention_days > 0:
            self._stamp_for_expiry(docs, timedelta(days=retention_days))
        writer = self.writer
        writer.submit(docs)
        if retention_days > 0:
            for doc in docs:
                if InvocationStatus(doc["status"]).is_final():
                    # Earlier records of the invocation must be stored before they
                    # can be stamped: wait for them (asynchronous mode only blocks here).
                    writer.wait(doc[F_INV])
                    self.expire_invocation(doc[F_INV], doc[schema.F_EXPIRE])

    def _stamp_for_expiry(self, docs: list[dict[str, Any]], retention: timedelta) -> None:
        """Give every record an ``expire_at`` before it is submitted (the record may be
        buffered and land after another process stamped its invocation, and a later
        ``update_many`` would then miss it):

        * a final status: ``ts`` + retention (then the invocation is stamped too);
        * an invocation this process stamped already: the same ``expire_at``;
        * any other record: a backstop, ``ts`` + retention +
          :data:`HISTORY_BACKSTOP`; the final stamp replaces it with the earlier
          time when the record is stored by then (so a record of an invocation
          running longer than the backstop may expire before the invocation).
        """
        for doc in docs:
            if InvocationStatus(doc["status"]).is_final():
                doc[schema.F_EXPIRE] = doc["ts"] + retention
            else:
                known = self._stamped.get(doc[F_INV])
                doc[schema.F_EXPIRE] = known or doc["ts"] + retention + HISTORY_BACKSTOP

    @translate_errors
    def expire_invocation(self, invocation_id: str, expire_at: datetime) -> None:
        """Set ``expire_at`` on every document owned by a finished invocation.

        Used when ``mongo_retention_days`` > 0; MongoDB's TTL monitor then deletes
        them after ``expire_at`` (MongoDB manual, "Expire Data from Collections by
        Setting TTL"). Covers the invocation, its history, result, exception,
        large-value pieces and, when it is a workflow, the workflow's documents.

        :raises TypeError: if ``invocation_id`` is not a str.
        """
        check_str("invocation_id", invocation_id)
        # History records of this invocation still queued in this process must
        # be stored first, or they would miss the update below and never expire.
        self.wait(invocation_id)
        self._stamped[invocation_id] = expire_at
        self._invocations.note_expiry(invocation_id, expire_at)
        update = {"$set": {schema.F_EXPIRE: expire_at}}
        app = self.app_id
        targets: list[tuple[str, dict[str, Any]]] = [
            (schema.INVOCATIONS, {F_APP: app, F_INV: invocation_id}),
            (schema.HISTORY, {F_APP: app, F_INV: invocation_id}),
            (schema.RESULTS, {F_APP: app, F_INV: invocation_id}),
            (schema.EXCEPTIONS, {F_APP: app, F_INV: invocation_id}),
            (schema.VALUE_PIECES, {F_APP: app, "owner": invocation_id}),
            (schema.VALUE_PIECES, {F_APP: app, "owner": f"workflow:{invocation_id}"}),
            (schema.WORKFLOW_RUNS, {F_APP: app, "workflow_id": invocation_id}),
            (schema.WORKFLOW_DATA, {F_APP: app, "workflow_id": invocation_id}),
            (schema.WORKFLOW_SUB_INVOCATIONS, {F_APP: app, "workflow_id": invocation_id}),
        ]
        for logical, filter_ in targets:
            self.store.retry(self.store.collection(logical).update_many, filter_, update)

    # ------------------------------------------------------------ reads
    def get(self, invocation_id: InvocationId) -> list[InvocationHistory]:
        """History of one invocation in time order (exact to the microsecond).

        Waits first for this process's pending writes for that invocation.

        :raises TypeError: if ``invocation_id`` is not a str.
        """
        check_str("invocation_id", invocation_id)
        self.wait(invocation_id)
        docs = self.store.find_all(
            self.store.collection(schema.HISTORY),
            {F_APP: self.app_id, F_INV: invocation_id},
            None,
            [(F_TS_US, 1), ("_id", 1)],
        )
        return [schema.history_from(doc) for doc in docs]

    def _time_filter(self, start_time: datetime, end_time: datetime) -> dict[str, Any]:
        return {
            F_APP: self.app_id,
            F_TS_US: {"$gte": schema.to_us(start_time), "$lte": schema.to_us(end_time)},
        }

    def iter_in_timerange(
        self, start_time: datetime, end_time: datetime, batch_size: int
    ) -> Iterator[list[InvocationHistory]]:
        """History entries with ``start_time <= timestamp <= end_time``, in time order,
        in lists of at most ``batch_size`` (one server cursor, no skip/limit paging;
        after a lost connection it is re-opened after the last entry read).

        The caller waits for pending writes first (every thread's deferred
        invocations included: see ``MongoStateBackend.wait_for_all_async_operations``).
        """
        cursor = iter_resumable(
            self.store.collection(schema.HISTORY),
            self._time_filter(start_time, end_time),
            None,
            (F_TS_US, "_id"),
            batch_size,
        )
        batch: list[InvocationHistory] = []
        for doc in cursor:
            batch.append(schema.history_from(doc))
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def iter_invocations_in_timerange(
        self, start_time: datetime, end_time: datetime, batch_size: int
    ) -> Iterator[list[InvocationId]]:
        """Distinct ids of invocations with history in the range, in order of their
        first entry there, in lists of at most ``batch_size`` (the caller waits
        for pending writes first)."""
        cursor = iter_resumable(
            self.store.collection(schema.HISTORY),
            self._time_filter(start_time, end_time),
            {"_id": 1, F_INV: 1, F_TS_US: 1},
            (F_TS_US, "_id"),
            max(batch_size, 1) * 4,
        )
        seen: set[str] = set()
        batch: list[InvocationId] = []
        for doc in cursor:
            inv_id = doc[F_INV]
            if inv_id in seen:
                continue
            seen.add(inv_id)
            batch.append(inv_id)
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


_live_histories: weakref.WeakSet[History] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for part in list(_live_histories):
        part.reset_after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)

__all__ = ["HISTORY_BACKSTOP", "History"]
