"""``MongoBlockingControl``: which invocation waits on which (waiter -> waited edges).

Edges live in ``orchestrator_blocking_edges`` with an ``_id`` made of the app,
waiter and waited ids, so adding one twice is a duplicate key and a no-op. The waited
invocations get a ``waited: true`` flag on their status record; a final transition
that reads no flag skips :meth:`MongoBlockingControl.release_waiters` (one round trip
saved per invocation nobody waits on).

:meth:`MongoBlockingControl.get_blocking_invocations` reads the edges oldest first
(``orch_edge_time``) in bounded pages; when no edge exists that is the only query.
For the waited ids of a page it then asks, with two ``$in`` queries bounded by the
page size (never an unbounded ``$nin``), which of them wait on someone themselves
(``orch_edge_waiter``) and which have a status available for run (``_id``). The ids
returned are ordered by their oldest edge (how long they have been blocking).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pynenc.identifiers.invocation_id import InvocationId
from pynenc.invocation.status import InvocationStatus
from pynenc.orchestrator.base_orchestrator import BaseBlockingControl

from pynenc_mongo.errors import translate_errors
from pynenc_mongo.operations import insert_if_absent
from pynenc_mongo.schema import orchestrator as s
from pynenc_mongo.schema.layout import F_APP, to_us

if TYPE_CHECKING:
    from pynenc_mongo.store import MongoStore

#: Edges read per page by ``get_blocking_invocations`` (at least this many, or 4x the
#: number of ids asked for).
EDGE_PAGE = 200
#: Pages read per call at most (a bound on one loop iteration's cost).
MAX_PAGES = 10


class MongoBlockingControl(BaseBlockingControl):
    """Blocking control of :class:`~pynenc_mongo.orchestrator.MongoOrchestrator`.

    :param MongoStore store: the orchestrator's store.
    """

    def __init__(self, store: MongoStore) -> None:
        self.store = store

    def describe_target(self) -> str:
        """Where the edges are stored (redacted URL and database)."""
        return self.store.describe_target()

    @translate_errors
    def waiting_for_results(
        self, caller_invocation_id: InvocationId, result_invocation_ids: list[InvocationId]
    ) -> None:
        """Record that ``caller_invocation_id`` waits on each of ``result_invocation_ids``.

        Idempotent: one unordered ``insert_many`` (duplicates skipped), then one
        ``update_many`` flagging the waited records (``waited: true``).

        :param InvocationId caller_invocation_id: the waiter.
        :param list[InvocationId] result_invocation_ids: the invocations it waits on.
        """
        store = self.store
        waited = sorted({str(i) for i in result_invocation_ids if i != caller_invocation_id})
        if not waited:
            return
        now = to_us_now()
        docs = [
            {
                "_id": s.edge_key(store.app_id, caller_invocation_id, d),
                F_APP: store.app_id,
                s.F_WAITER: caller_invocation_id,
                s.F_WAITED_ID: d,
                s.F_EDGE_TIME: now,
            }
            for d in waited
        ]
        store.retry(insert_if_absent, store.collection(s.EDGES), docs)
        store.retry(
            store.collection(s.INVOCATIONS).update_many,
            {"_id": {"$in": [s.invocation_key(store.app_id, d) for d in waited]}},
            {"$set": {s.F_WAITED: True}},
        )

    @translate_errors
    def release_waiters(self, waited_invocation_id: str) -> None:
        """Delete every edge pointing at ``waited_invocation_id`` (index ``orch_edge_waited``).

        :param str waited_invocation_id: an invocation that reached a final status.
        """
        store = self.store
        store.retry(
            store.collection(s.EDGES).delete_many,
            store.app_filter(**{s.F_WAITED_ID: waited_invocation_id}),
        )

    @translate_errors
    def get_blocking_invocations(self, max_num_invocations: int) -> Iterator[InvocationId]:
        """Invocations others wait on, that wait on nobody and are available for run.

        :param int max_num_invocations: at most this many ids.
        :return: the ids, longest-blocking first (by their oldest edge); the list is
            read completely before the first id is yielded.
        """
        yield from self._blocking_ids(max_num_invocations)

    def _blocking_ids(self, limit: int) -> list[InvocationId]:
        if limit <= 0:
            return []
        store = self.store
        edges = store.collection(s.EDGES)
        available = sorted(st.value for st in InvocationStatus.get_available_for_run_statuses())
        page_size = max(EDGE_PAGE, 4 * limit)
        found: list[InvocationId] = []
        seen: set[str] = set()
        after: tuple[int, Any] | None = None
        for _page in range(MAX_PAGES):
            query = store.app_filter()
            if after is not None:
                query[s.F_EDGE_TIME] = {"$gte": after[0]}
            page = store.retry(
                lambda q=query: list(
                    edges.find(q, {s.F_WAITED_ID: 1, s.F_EDGE_TIME: 1})
                    .sort([(s.F_EDGE_TIME, 1)])
                    .limit(page_size)
                )
            )
            candidates: list[str] = []
            for doc in page:
                waited = doc[s.F_WAITED_ID]
                if waited not in seen:
                    seen.add(waited)
                    candidates.append(waited)
            if candidates:
                found.extend(self._unblocked_available(candidates, available))
            if len(found) >= limit or len(page) < page_size:
                break
            last_time = page[-1][s.F_EDGE_TIME]
            if after is not None and last_time == after[0]:
                break  # a page of equal times: stop rather than loop on it
            after = (last_time, None)
        return found[:limit]

    def _unblocked_available(
        self, candidates: list[str], available: list[str]
    ) -> list[InvocationId]:
        """The candidates (in order) that wait on nobody and whose status is available."""
        store = self.store
        waiting = set(
            store.retry(
                store.collection(s.EDGES).distinct,
                s.F_WAITER,
                store.app_filter(**{s.F_WAITER: {"$in": candidates}}),
            )
        )
        rest = [c for c in candidates if c not in waiting]
        if not rest:
            return []
        docs = store.retry(
            lambda: list(
                store.collection(s.INVOCATIONS).find(
                    {
                        "_id": {"$in": [s.invocation_key(store.app_id, c) for c in rest]},
                        s.F_STATUS: {"$in": available},
                    },
                    {s.F_INV: 1},
                )
            )
        )
        ok = {doc[s.F_INV] for doc in docs}
        return [InvocationId(c) for c in rest if c in ok]


def to_us_now() -> int:
    """Now, in microseconds since the epoch (the client's clock)."""
    return to_us(datetime.now(UTC))
