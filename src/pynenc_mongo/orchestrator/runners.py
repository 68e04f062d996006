"""Runner heartbeats, active runners and recovery queries.

**Clock.** Heartbeat times, the "dead" cutoff and the recovery cutoffs are read from
the clock of the process that writes or asks (``datetime.now(UTC)``), as pynenc's
SQLite and the Redis plugin do. Server time (``$$NOW``) would remove clock skew
between hosts, but the embedded store (mongomock) has no ``$$NOW``, and reading the
server's clock costs a round trip per decision. So hosts must keep their clocks
within a small part of ``runner_considered_dead_after_minutes`` (10 minutes by
default) of each other, which NTP does; a host whose clock runs behind by more than
the timeout would have its runners declared dead.

**Heartbeats** are one bulk upsert per call with one timestamp for the whole batch
(``bulk_write`` of ``UpdateOne(upsert=True)``, unordered): ``created`` is set on
insert only, ``hb`` and ``atomic`` on every call, and ``queues`` when given (kept
otherwise, as pynenc's memory orchestrator does). Runners registered by one call
share their creation time and are ordered by runner id. mongomock's ``bulk_write``
with ``UpdateOne`` fails on PyMongo >= 4.11 (it passes ``sort`` to its own builder),
so on the embedded store only, the same upserts are sent one ``update_one`` each;
that store is in-process, so no round trip is paid.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pymongo import UpdateOne
from pymongo.errors import BulkWriteError
from pynenc.identifiers.invocation_id import InvocationId
from pynenc.invocation.status import InvocationStatus
from pynenc.orchestrator.atomic_service import ActiveRunnerInfo

from pynenc_mongo import embedded
from pynenc_mongo.operations import only_duplicates, upsert_retrying_duplicate
from pynenc_mongo.schema import orchestrator as s
from pynenc_mongo.schema.layout import F_APP, from_us, to_us

if TYPE_CHECKING:
    from pynenc_mongo.store import MongoStore

#: Attempts of a heartbeat batch whose upserts raced another process's inserts.
HEARTBEAT_ATTEMPTS = 3


def now_us() -> int:
    """Now on this process's clock, in microseconds since the epoch (see the module docstring)."""
    return to_us(datetime.now(UTC))


class RunnerRegistry:
    """Heartbeats and liveness of the runners of one app.

    :param MongoStore store: the orchestrator's store.
    """

    def __init__(self, store: MongoStore) -> None:
        self.store = store

    def register(
        self,
        runner_ids: list[str],
        can_run_atomic_service: bool,
        consumed_queues: Sequence[str] | None,
    ) -> None:
        """Upsert the heartbeat of each runner in one bulk write (one time for all).

        :param list[str] runner_ids: runners to heartbeat (duplicates ignored).
        :param bool can_run_atomic_service: their atomic-service eligibility.
        :param Sequence[str] | None consumed_queues: their queues; None keeps the stored ones.
        """
        ids = sorted(set(runner_ids))
        if not ids:
            return
        store = self.store
        now = now_us()
        fields: dict[str, Any] = {s.F_HEARTBEAT: now, s.F_ATOMIC: bool(can_run_atomic_service)}
        on_insert: dict[str, Any] = {F_APP: store.app_id, s.F_CREATED: now}
        if consumed_queues is None:
            on_insert[s.F_QUEUES] = []
        else:
            fields[s.F_QUEUES] = list(consumed_queues)
        collection = store.collection(s.HEARTBEATS)
        pairs = [
            (
                {"_id": s.runner_key(store.app_id, rid)},
                {"$set": fields, "$setOnInsert": {**on_insert, s.F_RUNNER: rid}},
            )
            for rid in ids
        ]
        if embedded.is_embedded(collection):
            for query, update in pairs:
                upsert_retrying_duplicate(collection.update_one, query, update, upsert=True)
            return
        requests = [UpdateOne(q, u, upsert=True) for q, u in pairs]
        for attempt in range(HEARTBEAT_ATTEMPTS):
            try:
                store.retry(collection.bulk_write, requests, ordered=False)
                return
            except BulkWriteError as exc:  # two processes inserting the same runner
                if not only_duplicates(exc) or attempt == HEARTBEAT_ATTEMPTS - 1:
                    raise

    def active(
        self, timeout_seconds: float, can_run_atomic_service: bool | None
    ) -> list[ActiveRunnerInfo]:
        """Runners with a heartbeat within ``timeout_seconds``, by creation time then id.

        :param float timeout_seconds: heartbeat timeout in seconds.
        :param bool | None can_run_atomic_service: only runners with this eligibility
            (None: all).
        :return: the runners (index ``orch_hb_created`` / ``orch_hb_atomic_created``).
        """
        store = self.store
        query = store.app_filter(**{s.F_HEARTBEAT: {"$gte": now_us() - int(timeout_seconds * 1e6)}})
        if can_run_atomic_service is not None:
            query[s.F_ATOMIC] = bool(can_run_atomic_service)
        collection = store.collection(s.HEARTBEATS)
        docs = store.retry(
            lambda: list(collection.find(query).sort([(s.F_CREATED, 1), (s.F_RUNNER, 1)]))
        )
        return [runner_info(doc) for doc in docs]

    def live_ids(self, timeout_seconds: float) -> set[str]:
        """Ids of the runners with a heartbeat within ``timeout_seconds``."""
        return {info.runner_id for info in self.active(timeout_seconds, None)}

    def is_live(self, runner_id: str, timeout_seconds: float) -> bool:
        """True when ``runner_id`` heartbeat within ``timeout_seconds`` (``_id`` lookup)."""
        store = self.store
        doc = store.retry(
            store.collection(s.HEARTBEATS).find_one,
            {"_id": s.runner_key(store.app_id, runner_id)},
            {s.F_HEARTBEAT: 1},
        )
        cutoff = now_us() - int(timeout_seconds * 1e6)
        return doc is not None and int(doc.get(s.F_HEARTBEAT, 0)) >= cutoff

    def record_service_window(self, runner_id: str, start: datetime, end: datetime) -> None:
        """pynenc 0.2.3's ``record_atomic_service_execution``: keep the runner's last window."""
        store = self.store
        store.retry(
            store.collection(s.HEARTBEATS).update_one,
            {"_id": s.runner_key(store.app_id, runner_id)},
            {"$set": {s.F_SVC_START: to_us(start), s.F_SVC_END: to_us(end)}},
        )

    def pending_for_recovery(self, max_pending_seconds: float) -> list[InvocationId]:
        """PENDING invocations whose status is older than ``max_pending_seconds``.

        :return: the ids, read completely (index ``orch_inv_status_ts``).
        """
        store = self.store
        cutoff = now_us() - int(max_pending_seconds * 1e6)
        query = store.app_filter(
            **{s.F_STATUS: InvocationStatus.PENDING.value, s.F_TS: {"$lte": cutoff}}
        )
        collection = store.collection(s.INVOCATIONS)
        docs = store.retry(lambda: list(collection.find(query, {s.F_INV: 1})))
        return [InvocationId(doc[s.F_INV]) for doc in docs]

    def running_for_recovery(self, timeout_seconds: float) -> list[InvocationId]:
        """RUNNING invocations whose owner has no heartbeat within ``timeout_seconds``.

        Two queries: the live runners, then the RUNNING records with their owners
        (index ``orch_inv_status_ts``); the ids are read completely.
        """
        live = self.live_ids(timeout_seconds)
        store = self.store
        query = store.app_filter(**{s.F_STATUS: InvocationStatus.RUNNING.value})
        collection = store.collection(s.INVOCATIONS)
        docs = store.retry(lambda: list(collection.find(query, {s.F_INV: 1, s.F_OWNER: 1})))
        return [
            InvocationId(doc[s.F_INV])
            for doc in docs
            if doc.get(s.F_OWNER) is not None and doc[s.F_OWNER] not in live
        ]


def runner_info(doc: dict[str, Any]) -> ActiveRunnerInfo:
    """The pynenc ``ActiveRunnerInfo`` of a heartbeat document (0.4 or 0.2.3 fields)."""
    values: dict[str, Any] = {
        "runner_id": doc[s.F_RUNNER],
        "creation_time": from_us(doc[s.F_CREATED]),
        "last_heartbeat": from_us(doc[s.F_HEARTBEAT]),
        "allow_to_run_atomic_service": bool(doc.get(s.F_ATOMIC)),
    }
    fields = ActiveRunnerInfo._fields
    if "consumed_queues" in fields:
        values["consumed_queues"] = tuple(doc.get(s.F_QUEUES) or ())
    if "last_service_start" in fields:
        start, end = doc.get(s.F_SVC_START), doc.get(s.F_SVC_END)
        values["last_service_start"] = from_us(start) if start is not None else None
        values["last_service_end"] = from_us(end) if end is not None else None
    return ActiveRunnerInfo(**values)
