"""``MongoOrchestrator``: pynenc's orchestrator on MongoDB (pynenc 0.4.x and 0.2.3).

Select it with ``orchestrator_cls="MongoOrchestrator"`` (config values, or
``PYNENC__ORCHESTRATOR_CLS``); it reads the ``mongo_*`` connection settings of
:class:`~pynenc_mongo.config.ConfigMongo` and reaches MongoDB through one
:class:`~pynenc_mongo.store.MongoStore`. The collections, document shapes and
indexes are in :mod:`pynenc_mongo.schema.orchestrator`; every query names the index
that serves it.

Where the work is done:

* :mod:`.transitions` -- status transitions, one ``find_one_and_update`` whose filter
  is derived from pynenc's ``get_status_definition()``;
* :mod:`.blocking` -- :class:`MongoBlockingControl` (waiter -> waited edges);
* :mod:`.runners` -- heartbeats, active runners, recovery queries (and the clock);
* :mod:`.atomic_service` -- the atomic-service gate, finalize and the lease.

Round trips per successful invocation (ThreadRunner, no concurrency control):
registration (one ``insert_many``), the status read at pick-up, and three
transitions: 5. The final transition stamps ``purge_at`` itself (so
``set_up_invocation_auto_purge`` costs nothing for it), skips ``release_waiters``
when nobody waits on the invocation (the ``waited`` flag it read), and keeps the
final record in a per-process cache (final records never change), which serves
the trigger's status read and the callers polling for results.

pynenc 0.2.3 has the same base class with fewer methods (no atomic-service gate,
``record_atomic_service_execution`` per runner instead) and the RESUMED status; both
are served by this class: the extra methods are harmless there and every
status-dependent filter comes from ``get_status_definition()``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache
from pynenc.identifiers.invocation_id import InvocationId
from pynenc.invocation.status import InvocationStatus, InvocationStatusRecord
from pynenc.orchestrator.base_orchestrator import BaseBlockingControl, BaseOrchestrator

from pynenc_mongo.errors import translate_errors
from pynenc_mongo.operations import insert_if_absent
from pynenc_mongo.orchestrator.blocking import MongoBlockingControl
from pynenc_mongo.orchestrator.config import ConfigOrchestratorMongo
from pynenc_mongo.orchestrator.recovery import reroute_unqueued, route_of
from pynenc_mongo.orchestrator.registration import (
    ARG_HASH_CHARS,
    IdSet,
    argument_hashes,
    uses_concurrency_control,
)
from pynenc_mongo.orchestrator.runners import RunnerRegistry, now_us
from pynenc_mongo.orchestrator.service_methods import AtomicServiceMethods
from pynenc_mongo.orchestrator.transitions import gate_for, record_of, transition
from pynenc_mongo.schema import orchestrator as s
from pynenc_mongo.schema.layout import F_APP, to_us
from pynenc_mongo.store import MongoStore

if TYPE_CHECKING:
    from pynenc.app import Pynenc
    from pynenc.identifiers.call_id import CallId
    from pynenc.identifiers.task_id import TaskId
    from pynenc.invocation.dist_invocation import DistributedInvocation
    from pynenc.orchestrator.atomic_service import ActiveRunnerInfo
    from pynenc.task import Task

    from pynenc_mongo.orchestrator.atomic_service import AtomicServiceLedger

#: pynenc >= 0.3 has the atomic-service storage gate (``record_..._start``).
HAS_ATOMIC_GATE = hasattr(BaseOrchestrator, "record_atomic_service_execution_start")


class MongoOrchestrator(AtomicServiceMethods, BaseOrchestrator):
    """pynenc's orchestrator on MongoDB.

    :param Pynenc app: the app; its config values carry the ``mongo_*`` settings.

    Creating it does no I/O. All errors from MongoDB are mapped by
    :func:`~pynenc_mongo.errors.translate_errors` (unreachable server, refused
    credentials) with messages naming the server (password redacted).
    """

    def __init__(self, app: Pynenc) -> None:
        super().__init__(app)
        conf = self.conf
        self.store = MongoStore(conf, app.app_id)
        self._blocking_control = MongoBlockingControl(self.store)
        self._runners = RunnerRegistry(self.store)
        self._ledger: AtomicServiceLedger | None = None
        if HAS_ATOMIC_GATE:
            from pynenc_mongo.orchestrator.atomic_service import AtomicServiceLedger

            self._ledger = AtomicServiceLedger(
                app, self.store, self._runners, conf.mongo_atomic_service_lease_seconds
            )
        self._final_cache: LRUCache[str, InvocationStatusRecord] | None = (
            LRUCache(maxsize=conf.mongo_final_status_cache_size)
            if conf.mongo_final_status_cache_size > 0
            else None
        )
        self._cache_lock = threading.Lock()
        self._stamped = IdSet()  # final transitions that stamped purge_at
        self._no_waiters = IdSet()  # final transitions that saw no waiters
        self._args_indexed = IdSet()  # registered with their argument hashes

    @cached_property
    def conf(self) -> ConfigOrchestratorMongo:
        """The orchestrator settings (pynenc's plus :class:`ConfigOrchestratorMongo`)."""
        return ConfigOrchestratorMongo(
            config_values=self.app.config_values, config_filepath=self.app.config_filepath
        )

    def describe_target(self) -> str:
        """Where the orchestrator's documents are (redacted URL and database)."""
        return self.store.describe_target()

    def __repr__(self) -> str:
        return f"<MongoOrchestrator app_id={self.app.app_id!r} {self.describe_target()}>"

    @property
    def blocking_control(self) -> BaseBlockingControl:
        """The :class:`MongoBlockingControl` of this orchestrator."""
        return self._blocking_control

    # ------------------------------------------------------------------ caches
    def _cache_get(self, invocation_id: str) -> InvocationStatusRecord | None:
        if self._final_cache is None:
            return None
        with self._cache_lock:
            return self._final_cache.get(invocation_id)

    def _cache_put(self, invocation_id: str, record: InvocationStatusRecord) -> None:
        if self._final_cache is not None and record.status.is_final():
            with self._cache_lock:
                self._final_cache[invocation_id] = record

    def _cache_drop(self, invocation_ids: Sequence[str] | None = None) -> None:
        if self._final_cache is None:
            return
        with self._cache_lock:
            if invocation_ids is None:
                self._final_cache.clear()
            else:
                for inv in invocation_ids:
                    self._final_cache.pop(inv, None)

    def _key(self, invocation_id: str) -> str:
        return s.invocation_key(self.app.app_id, invocation_id)

    @property
    def _invocations(self) -> Any:
        return self.store.collection(s.INVOCATIONS)

    # ------------------------------------------------------------------ registration
    @translate_errors
    def _register_new_invocations(
        self,
        invocations: list[DistributedInvocation[Any, Any]],
        runner_id: str | None = None,
    ) -> InvocationStatusRecord:
        """Insert each invocation as REGISTERED unless it exists: one unordered
        ``insert_many`` (duplicates skipped, so registering twice is a no-op).

        Concurrency-controlled tasks get their argument hashes (``args_h``) in the
        same insert, so they are indexed before the invocation is routed.

        :return: the REGISTERED record (one for the whole batch).
        """
        now = datetime.now(UTC)
        record = InvocationStatusRecord(InvocationStatus.REGISTERED, runner_id, now)
        if not invocations:
            return record
        now_value = to_us(now)
        gate = gate_for(InvocationStatus.REGISTERED, runner_id)
        docs: list[dict[str, Any]] = []
        seen: set[str] = set()
        for invocation in invocations:
            inv_id = invocation.invocation_id
            if inv_id in seen:
                continue
            seen.add(inv_id)
            doc: dict[str, Any] = {
                "_id": self._key(inv_id),
                F_APP: self.app.app_id,
                s.F_INV: inv_id,
                s.F_TASK: invocation.task.task_id.key,
                s.F_CALL: invocation.call.call_id.key,
                s.F_STATUS: InvocationStatus.REGISTERED.value,
                s.F_OWNER: runner_id,
                s.F_VERSION: 0,
                s.F_TS: now_value,
                s.F_REG: now_value,
                s.F_RETRIES: 0,
            }
            doc.update(route_of(invocation))
            if gate is not None:
                doc[s.F_GATE] = gate
            if uses_concurrency_control(invocation):
                doc[s.F_ARGS] = argument_hashes(invocation.call.serialized_arguments)
            docs.append(doc)
        self.store.retry(insert_if_absent, self._invocations, docs)
        for doc in docs:
            if s.F_ARGS in doc:
                self._args_indexed.add(doc[s.F_INV])
        return record

    @translate_errors
    def index_arguments_for_concurrency_control(
        self, invocation: DistributedInvocation[Any, Any]
    ) -> None:
        """Store the argument hashes of ``invocation`` (a no-op when its registration
        by this process already did; otherwise one idempotent ``$set``)."""
        if self._args_indexed.take(invocation.invocation_id):
            return
        self.store.retry(
            self._invocations.update_one,
            {"_id": self._key(invocation.invocation_id)},
            {"$set": {s.F_ARGS: argument_hashes(invocation.call.serialized_arguments)}},
        )

    # ------------------------------------------------------------------ lookups
    def _ids(
        self, query: dict[str, Any], sort: list[tuple[str, int]] | None = None, **cursor: int
    ) -> list[InvocationId]:
        collection = self._invocations

        def read() -> list[dict[str, Any]]:
            found = collection.find(query, {s.F_INV: 1})
            if sort:
                found = found.sort(sort)
            if cursor.get("skip"):
                found = found.skip(cursor["skip"])
            if cursor.get("limit"):
                found = found.limit(cursor["limit"])
            return list(found)

        return [InvocationId(doc[s.F_INV]) for doc in self.store.retry(read)]

    def _filter(
        self, task_key: str | None, statuses: Sequence[InvocationStatus] | None
    ) -> dict[str, Any]:
        query = self.store.app_filter()
        if task_key is not None:
            query[s.F_TASK] = task_key
        if statuses:
            query[s.F_STATUS] = {"$in": sorted({InvocationStatus(st).value for st in statuses})}
        return query

    @translate_errors
    def get_existing_invocations(
        self,
        task: Task[Any, Any],
        key_serialized_arguments: dict[str, str] | None = None,
        statuses: list[InvocationStatus] | None = None,
    ) -> Iterator[InvocationId]:
        """Ids of ``task``'s invocations having at least these arguments and one of
        these statuses: one query (``orch_inv_task_args_status`` with arguments,
        ``orch_inv_task_status_reg`` without)."""
        query = self._filter(task.task_id.key, statuses)
        hashes = argument_hashes(key_serialized_arguments or {})
        if len(hashes) == 1:
            query[s.F_ARGS] = hashes[0]
        elif hashes:
            query["$and"] = [{s.F_ARGS: h} for h in hashes]
        return iter(self._ids(query))

    @translate_errors
    def get_task_invocation_ids(self, task_id: TaskId) -> Iterator[InvocationId]:
        """Ids of ``task_id``'s invocations (``orch_inv_task_status_reg``)."""
        return iter(self._ids(self._filter(task_id.key, None)))

    @translate_errors
    def get_call_invocation_ids(self, call_id: CallId) -> Iterator[InvocationId]:
        """Ids of ``call_id``'s invocations (``orch_inv_call``)."""
        return iter(self._ids(self.store.app_filter(**{s.F_CALL: call_id.key})))

    @translate_errors
    def get_invocation_ids_paginated(
        self,
        task_id: TaskId | None = None,
        statuses: list[InvocationStatus] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[InvocationId]:
        """A page of ids, newest registration first (ties by id, descending).

        Served by ``orch_inv_task_status_reg``, ``orch_inv_task_reg``,
        ``orch_inv_status_reg`` or ``orch_inv_reg`` depending on the filters.
        """
        if limit <= 0:
            return []
        query = self._filter(task_id.key if task_id else None, statuses)
        return self._ids(query, [(s.F_REG, -1), (s.F_INV, -1)], skip=max(offset, 0), limit=limit)

    @translate_errors
    def count_invocations(
        self, task_id: TaskId | None = None, statuses: list[InvocationStatus] | None = None
    ) -> int:
        """How many invocations match (same filters and indexes as the pages)."""
        query = self._filter(task_id.key if task_id else None, statuses)
        return int(self.store.retry(self._invocations.count_documents, query))

    @translate_errors
    def filter_by_status(
        self,
        invocation_ids: list[InvocationId],
        status_filter: frozenset[InvocationStatus],
    ) -> list[InvocationId]:
        """The ids (in the given order) whose status is in ``status_filter``: one
        ``_id $in`` query for the ids whose final record is not cached."""
        if not invocation_ids or status_filter is None:
            return []
        wanted = {InvocationStatus(st) for st in status_filter}
        known: dict[str, InvocationStatus] = {}
        unknown: list[str] = []
        for inv in dict.fromkeys(invocation_ids):
            cached = self._cache_get(inv)
            if cached is not None:
                known[inv] = cached.status
            else:
                unknown.append(inv)
        if unknown:
            collection = self._invocations
            query = {
                "_id": {"$in": [self._key(inv) for inv in unknown]},
                s.F_STATUS: {"$in": sorted(st.value for st in wanted)},
            }
            docs = self.store.retry(
                lambda: list(collection.find(query, {s.F_INV: 1, s.F_STATUS: 1}))
            )
            for doc in docs:
                known[doc[s.F_INV]] = InvocationStatus(doc[s.F_STATUS])
        return [inv for inv in invocation_ids if known.get(inv) in wanted]

    # ------------------------------------------------------------------ status
    @translate_errors
    def _atomic_status_transition(
        self, invocation_id: InvocationId, status: InvocationStatus, runner_id: str | None = None
    ) -> InvocationStatusRecord:
        """One ``find_one_and_update`` (see :mod:`.transitions`).

        :raises KeyError: the invocation is not registered.
        :raises InvocationStatusTransitionError: pynenc forbids the transition.
        :raises InvocationStatusOwnershipError: ownership rules refuse it.
        :raises InvocationStatusRaceConditionError: others won every attempt.
        """
        result = transition(
            self._invocations,
            self._key(invocation_id),
            invocation_id,
            InvocationStatus(status),
            runner_id,
            self.conf.mongo_transition_attempts,
        )
        if result.record.status.is_final():
            self._cache_put(invocation_id, result.record)
            self._stamped.add(invocation_id)
            if not result.had_waiters:
                self._no_waiters.add(invocation_id)
        return result.record

    @translate_errors
    def get_invocation_status_record(self, invocation_id: InvocationId) -> InvocationStatusRecord:
        """The current status record (cached once final), by ``_id``.

        :raises KeyError: the invocation is not registered.
        """
        cached = self._cache_get(invocation_id)
        if cached is not None:
            return cached
        doc = self.store.retry(
            self._invocations.find_one,
            {"_id": self._key(invocation_id)},
            {s.F_STATUS: 1, s.F_OWNER: 1, s.F_TS: 1},
        )
        if doc is None:
            raise KeyError(f"Invocation ID {invocation_id} not found")
        record = record_of(doc)
        self._cache_put(invocation_id, record)
        return record

    def release_waiters(self, waited_id: InvocationId) -> None:
        """Release the waiters of a finished invocation; nothing to do (no round trip)
        when its final transition by this process read no ``waited`` flag."""
        if self._no_waiters.take(waited_id):
            return
        super().release_waiters(waited_id)

    # ------------------------------------------------------------------ retries
    @translate_errors
    def increment_invocation_retries(self, invocation_id: InvocationId) -> None:
        """``$inc`` the retry count (atomic; not retried by this package: the driver
        retries the write once itself)."""
        self._invocations.update_one({"_id": self._key(invocation_id)}, {"$inc": {s.F_RETRIES: 1}})

    @translate_errors
    def get_invocation_retries(self, invocation_id: InvocationId) -> int:
        """The retry count (0 for an unknown invocation)."""
        doc = self.store.retry(
            self._invocations.find_one, {"_id": self._key(invocation_id)}, {s.F_RETRIES: 1}
        )
        return int(doc.get(s.F_RETRIES, 0)) if doc else 0

    # ------------------------------------------------------------------ purge
    @translate_errors
    def set_up_invocation_auto_purge(self, invocation_id: InvocationId) -> None:
        """Stamp ``purge_at`` (already done by this process's final transition)."""
        if self._stamped.take(invocation_id):
            return
        self.store.retry(
            self._invocations.update_one,
            {"_id": self._key(invocation_id)},
            {"$set": {s.F_PURGE: now_us()}},
        )

    @translate_errors
    def auto_purge(self) -> None:
        """Delete invocations stamped ``auto_final_invocation_purge_hours`` ago or
        earlier, with their edges, in batches of ``mongo_purge_batch_size``
        (index ``orch_inv_purge``, then ``orch_edge_waited`` / ``orch_edge_waiter``)."""
        store = self.store
        threshold = now_us() - int(float(self.conf.auto_final_invocation_purge_hours) * 3600e6)
        batch = self.conf.mongo_purge_batch_size
        collection = self._invocations
        edges = store.collection(s.EDGES)
        query = store.app_filter(**{s.F_PURGE: {"$lte": threshold}})
        while True:
            docs = store.retry(lambda: list(collection.find(query, {s.F_INV: 1}).limit(batch)))
            ids = [doc[s.F_INV] for doc in docs]
            if not ids:
                return
            store.retry(edges.delete_many, store.app_filter(**{s.F_WAITED_ID: {"$in": ids}}))
            store.retry(edges.delete_many, store.app_filter(**{s.F_WAITER: {"$in": ids}}))
            store.retry(collection.delete_many, {"_id": {"$in": [doc["_id"] for doc in docs]}})
            self._cache_drop(ids)
            if len(ids) < batch:
                return

    @translate_errors
    def purge(self) -> None:
        """Delete every orchestrator document of this app (tests only)."""
        self.store.purge(s.COLLECTIONS)
        self._cache_drop()
        for ids in (self._stamped, self._no_waiters, self._args_indexed):
            ids.clear()

    # ------------------------------------------------------------------ runners
    @translate_errors
    def register_runner_heartbeats(
        self,
        runner_ids: list[str],
        can_run_atomic_service: bool = False,
        consumed_queues: Sequence[str] | None = None,
    ) -> None:
        """One bulk upsert of these runners' heartbeats (see :mod:`.runners`)."""
        self._runners.register(runner_ids, can_run_atomic_service, consumed_queues)

    @translate_errors
    def _get_active_runners(
        self, timeout_seconds: float, can_run_atomic_service: bool | None = None
    ) -> list[ActiveRunnerInfo]:
        """Runners heartbeating within ``timeout_seconds``, by creation time then id."""
        return self._runners.active(timeout_seconds, can_run_atomic_service)

    @translate_errors
    def get_pending_invocations_for_recovery(self) -> Iterator[InvocationId]:
        """PENDING invocations older than ``max_pending_seconds`` (ids read first).

        First routes again the invocations whose queue message was lost before
        their PENDING change (a status available for run, older than
        ``max_pending_seconds``, no message in ``MongoBroker``'s queue): see
        :mod:`.recovery`. Those keep their status and are not yielded (pynenc's
        core task would move each yielded id to PENDING_RECOVERY).
        """
        max_pending = float(self.app.conf.max_pending_seconds)
        pending = self._runners.pending_for_recovery(max_pending)
        reroute_unqueued(self.app, self.store, max_pending, now_us())
        return iter(pending)

    @translate_errors
    def _get_running_invocations_for_recovery(
        self, timeout_seconds: float
    ) -> Iterator[InvocationId]:
        """RUNNING invocations whose owner has no live heartbeat (ids read first)."""
        return iter(self._runners.running_for_recovery(timeout_seconds))


__all__ = [
    "ARG_HASH_CHARS",
    "ConfigOrchestratorMongo",
    "MongoBlockingControl",
    "MongoOrchestrator",
    "argument_hashes",
]
