"""Atomic-service executions (pynenc >= 0.3): the storage gate, finalize, the lease.

**Gate.** ``record_atomic_service_execution_start`` inserts the RUNNING execution;
the partial unique index ``orch_exec_single_running`` (``{app_id, status}`` where
``status == "running"``) lets exactly one such document exist per app, so of any
number of concurrent starts, on any number of hosts, one insert succeeds and the
others get a duplicate-key error. A loser records a zero-width BLOCKED execution
whose reason is pynenc's ``prior_running:<run id> runner:<runner id>`` and returns
False. Starting the run that already holds the gate returns True.

**Finalize** is ``update_one({_id, status: "running"}, $set terminal)``: the first
terminal write wins and later ones match nothing. With no execution at all (its
start was never written), one is inserted with ``start == end``; if another writer
inserted it first, that write wins.

**Lease (beyond pynenc).** pynenc 0.4 never releases a RUNNING execution whose
holder died, so one crash would stop cron, recovery and triggers for the whole
cluster. Here a start that meets a RUNNING execution takes it over when

* the holder runner has no heartbeat within ``runner_considered_dead_after_minutes``, or
* the execution started more than the lease ago: ``mongo_atomic_service_lease_seconds``,
  by default ``atomic_service_interval_minutes * 60`` (a holder should finish one
  cycle within the service interval).

The take-over is atomic: ``update_one({_id: <held run>, status: "running"},
$set: abandoned, reason "lease_expired: ...")`` succeeds for one contender only
(the others match nothing), and the gate insert is then retried, so the usual
partial-index race decides the next holder. A holder that outlives its lease while
still working therefore loses the gate; its own finalize then matches nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pymongo.errors import DuplicateKeyError
from pynenc.orchestrator.atomic_service import (
    AtomicServiceExecution,
    AtomicServiceExecutionStatus,
    AtomicServiceRun,
)

from pynenc_mongo.schema import orchestrator as s
from pynenc_mongo.schema.layout import F_APP, from_us, to_us

if TYPE_CHECKING:
    from pynenc.app import Pynenc

    from pynenc_mongo.orchestrator.runners import RunnerRegistry
    from pynenc_mongo.store import MongoStore

#: Name of the gate index (``schema.orchestrator``).
GATE_INDEX = "orch_exec_single_running"
#: Gate attempts per start (each after a take-over or a finalize seen in between).
START_ATTEMPTS = 3
#: Ids per ``delete_many`` of the purge.
PURGE_CHUNK = 500

RUNNING = AtomicServiceExecutionStatus.RUNNING
TERMINAL = sorted(st.value for st in AtomicServiceExecutionStatus if st != RUNNING)


class AtomicServiceLedger:
    """The atomic-service executions of one app.

    :param Pynenc app: the app (its settings and trigger).
    :param MongoStore store: the orchestrator's store.
    :param RunnerRegistry runners: heartbeats, for the lease.
    :param float lease_seconds: see the module docstring (0: from the service interval).
    """

    def __init__(
        self, app: Pynenc, store: MongoStore, runners: RunnerRegistry, lease_seconds: float
    ) -> None:
        self.app = app
        self.store = store
        self.runners = runners
        self.lease_seconds = lease_seconds

    # ------------------------------------------------------------------ documents
    def _doc(
        self,
        run: AtomicServiceRun,
        start: datetime,
        end: datetime | None,
        status: AtomicServiceExecutionStatus,
        reason: str,
    ) -> dict[str, Any]:
        sid = run.atomic_service_id
        start_us = to_us(start)
        end_us = to_us(end) if end is not None else None
        return {
            "_id": s.execution_key(self.store.app_id, sid.atomic_service_run_id),
            F_APP: self.store.app_id,
            s.F_RUN: sid.atomic_service_run_id,
            s.F_EXEC_RUNNER: sid.runner_id,
            s.F_EXEC_STATUS: str(status),
            s.F_REASON: reason,
            s.F_START: start_us,
            s.F_END: end_us,
            s.F_COVER_END: end_us if end_us is not None else start_us,
        }

    @staticmethod
    def execution_of(doc: dict[str, Any]) -> AtomicServiceExecution:
        """The pynenc ``AtomicServiceExecution`` of a stored document."""
        end = doc.get(s.F_END)
        return AtomicServiceExecution.from_raw(
            runner_id=doc[s.F_EXEC_RUNNER],
            atomic_service_run_id=doc[s.F_RUN],
            start_time=from_us(doc[s.F_START]),
            end_time=from_us(end) if end is not None else None,
            status=AtomicServiceExecutionStatus(doc[s.F_EXEC_STATUS]),
            reason=doc.get(s.F_REASON, ""),
        )

    def _collection(self) -> Any:
        """``orchestrator_atomic_service_executions`` (the gate's partial unique index is
        ensured by the store layer, on the embedded store too)."""
        return self.store.collection(s.ATOMIC_EXECUTIONS)

    def _put(self, doc: dict[str, Any]) -> None:
        """Write an execution document whole (idempotent)."""
        collection = self._collection()
        self.store.retry(collection.replace_one, {"_id": doc["_id"]}, doc, upsert=True)

    def _running(self) -> dict[str, Any] | None:
        """The RUNNING execution, if any (index ``orch_exec_status_start``)."""
        collection = self._collection()
        docs = self.store.retry(
            lambda: list(
                collection.find(self.store.app_filter(**{s.F_EXEC_STATUS: RUNNING.value}))
                .sort([(s.F_START, -1)])
                .limit(1)
            )
        )
        return docs[0] if docs else None

    # ------------------------------------------------------------------ the gate
    def record_start(
        self,
        run: AtomicServiceRun,
        started_at: datetime | None,
        status: AtomicServiceExecutionStatus,
        reason: str,
    ) -> bool:
        """pynenc's ``record_atomic_service_execution_start`` (see the module docstring).

        :return: True when the run may execute work.
        """
        start = started_at or datetime.now(UTC)
        run.started_at = start
        if status != RUNNING:
            end = start if status == AtomicServiceExecutionStatus.BLOCKED else None
            self._put(self._doc(run, start, end, status, reason))
            self.purge()
            return status != AtomicServiceExecutionStatus.BLOCKED
        collection = self._collection()
        doc = self._doc(run, start, None, RUNNING, reason)
        run_id = run.atomic_service_id.atomic_service_run_id
        blocked_by = "prior_running:unknown runner:unknown"
        for _attempt in range(START_ATTEMPTS):
            try:
                collection.insert_one(dict(doc))  # the gate (no retry wrapper: see errors)
                return True
            except DuplicateKeyError:
                pass
            prior = self._running()
            if prior is None:  # finalized meanwhile, or this run id exists already
                mine = self.store.retry(collection.find_one, {"_id": doc["_id"]})
                if mine is not None:
                    return bool(mine.get(s.F_EXEC_STATUS) == RUNNING.value)
                continue
            if prior[s.F_RUN] == run_id:
                return True
            blocked_by = f"prior_running:{prior[s.F_RUN]} runner:{prior[s.F_EXEC_RUNNER]}"
            expired = self._lease_expired(prior)
            if expired is None:
                break
            self.store.retry(
                collection.update_one,
                {"_id": prior["_id"], s.F_EXEC_STATUS: RUNNING.value},
                {"$set": self._ending(datetime.now(UTC), "abandoned", expired)},
            )
        self._put(
            self._doc(run, start, start, AtomicServiceExecutionStatus.BLOCKED, reason or blocked_by)
        )
        self.purge()
        return False

    def _lease_expired(self, prior: dict[str, Any]) -> str | None:
        """Why the RUNNING execution ``prior`` may be taken over, or None if it may not."""
        conf = self.app.conf
        timeout = float(conf.runner_considered_dead_after_minutes) * 60.0
        holder = prior[s.F_EXEC_RUNNER]
        if not self.runners.is_live(holder, timeout):
            return f"lease_expired: runner {holder} has no heartbeat within {timeout:g}s"
        lease = self.lease_seconds or float(conf.atomic_service_interval_minutes) * 60.0
        age = datetime.now(UTC) - from_us(prior[s.F_START])
        if age > timedelta(seconds=lease):
            return f"lease_expired: running for {age.total_seconds():.1f}s > lease {lease:g}s"
        return None

    @staticmethod
    def _ending(end: datetime, status: str, reason: str) -> dict[str, Any]:
        fields: dict[str, Any] = {
            s.F_EXEC_STATUS: status,
            s.F_END: to_us(end),
            s.F_COVER_END: to_us(end),
        }
        if reason:
            fields[s.F_REASON] = reason
        return fields

    def finalize(
        self,
        run: AtomicServiceRun,
        end_time: datetime,
        status: AtomicServiceExecutionStatus,
        reason: str,
    ) -> None:
        """pynenc's ``finalize_atomic_service_execution``: the first terminal write wins."""
        collection = self._collection()
        key = s.execution_key(self.store.app_id, run.atomic_service_id.atomic_service_run_id)
        result = self.store.retry(
            collection.update_one,
            {"_id": key, s.F_EXEC_STATUS: RUNNING.value},
            {"$set": self._ending(end_time, str(status), reason)},
        )
        if result.matched_count == 0:
            try:
                collection.insert_one(self._doc(run, end_time, end_time, status, reason))
            except DuplicateKeyError:
                pass  # an execution exists (already terminal): the first write won
        self.purge()

    # ------------------------------------------------------------------ reads
    def active(self) -> list[AtomicServiceExecution]:
        """RUNNING executions, most recently started first (``orch_exec_status_start``)."""
        collection = self._collection()
        query = self.store.app_filter(**{s.F_EXEC_STATUS: RUNNING.value})
        docs = self.store.retry(lambda: list(collection.find(query).sort([(s.F_START, -1)])))
        return [self.execution_of(doc) for doc in docs]

    def in_timerange(
        self,
        start_time: datetime,
        end_time: datetime,
        limit: int,
        runner_id: str | None,
        min_duration_seconds: float,
    ) -> list[AtomicServiceExecution]:
        """Executions overlapping ``[start_time, end_time]``, newest first.

        A RUNNING execution overlaps when it started inside the window. Served by
        ``orch_exec_window`` (``orch_exec_runner_window`` for one runner); the
        minimum duration is applied to the rows read.
        """
        if limit <= 0:
            return []
        collection = self._collection()
        query = self.store.app_filter(
            **{s.F_START: {"$lte": to_us(end_time)}, s.F_COVER_END: {"$gte": to_us(start_time)}}
        )
        if runner_id is not None:
            query[s.F_EXEC_RUNNER] = runner_id
        min_us = int(min_duration_seconds * 1e6)

        def read() -> list[dict[str, Any]]:
            cursor = collection.find(query).sort([(s.F_START, -1)])
            if min_us <= 0:
                cursor = cursor.limit(limit)
            return list(cursor)

        docs = self.store.retry(read)
        if min_us > 0:
            docs = [
                d
                for d in docs
                if d.get(s.F_END) is not None and d[s.F_END] - d[s.F_START] >= min_us
            ]
        return [self.execution_of(doc) for doc in docs[:limit]]

    # ------------------------------------------------------------------ purge
    def purge(self) -> int:
        """pynenc's ``purge_atomic_service_executions``: age, then capacity.

        Never deletes a RUNNING execution, nor one the trigger references
        (``get_referenced_atomic_service_run_ids``).

        :return: how many executions were deleted.
        """
        conf = self.app.conf
        retention = float(getattr(conf, "atomic_service_execution_retention_minutes", 60.0))
        max_records = int(getattr(conf, "atomic_service_execution_max_records", 1000))
        referenced = getattr(self.app.trigger, "get_referenced_atomic_service_run_ids", None)
        protected = set(referenced()) if referenced is not None else set()
        store = self.store
        collection = store.collection(s.ATOMIC_EXECUTIONS)
        terminal = store.app_filter(**{s.F_EXEC_STATUS: {"$in": TERMINAL}})
        removed = 0
        if retention > 0:
            cutoff = to_us(datetime.now(UTC) - timedelta(minutes=retention))
            old = {**terminal, s.F_COVER_END: {"$lt": cutoff}}
            docs = store.retry(lambda: list(collection.find(old, {s.F_RUN: 1})))
            removed += self._delete([d["_id"] for d in docs if d[s.F_RUN] not in protected])
        if max_records > 0:
            excess = int(store.retry(collection.count_documents, terminal)) - max_records
            if excess > 0:
                docs = store.retry(
                    lambda: list(
                        collection.find(terminal, {s.F_RUN: 1})
                        .sort([(s.F_START, 1)])
                        .limit(excess + len(protected))
                    )
                )
                ids = [d["_id"] for d in docs if d[s.F_RUN] not in protected]
                removed += self._delete(ids[:excess])
        return removed

    def _delete(self, ids: list[Any]) -> int:
        collection = self._collection()
        removed = 0
        for i in range(0, len(ids), PURGE_CHUNK):
            result = self.store.retry(
                collection.delete_many, {"_id": {"$in": ids[i : i + PURGE_CHUNK]}}
            )
            removed += int(result.deleted_count)
        return removed
