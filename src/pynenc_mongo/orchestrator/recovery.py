"""Recovery of invocations whose queue message was lost before the PENDING change.

pynenc's runner pops a message (``broker.retrieve_invocation``) before the status
change to PENDING that proves ownership. A runner dying between the two leaves
the invocation in a status available for run with no message; pynenc 0.4's
``recover_pending_invocations`` core task recovers PENDING invocations only, so
nothing would route it again. :func:`reroute_unqueued` closes that window; the
orchestrator runs it inside ``get_pending_invocations_for_recovery``, which that
core task calls every ``recover_pending_invocations_cron`` (5 minutes by default).

The steps, each index-served:

1. the invocations whose status is available for run (from pynenc's
   ``InvocationStatus.get_available_for_run_statuses()``, read at run time) and
   whose status timestamp is ``max_pending_seconds`` old or older: one ``find``
   on ``orchestrator_invocations`` (index ``orch_inv_status_ts``: ``app_id``,
   ``st $in``, ``ts`` range), read completely;
2. per batch of :data:`BATCH` ids, the ones that still have a message:
   :meth:`~pynenc_mongo.broker.MongoBroker.queued_invocation_ids` (index
   ``app_invocation`` of ``broker_queue``). Those wait in a backlog and are left;
3. the rest are routed again through the broker's public ``route_invocations``
   (which validates queue and priority), grouped by the queue and priority stored
   at registration (``q``, ``p``). A document without them (registered by an
   older pynenc-mongo) is routed through pynenc's ``orchestrator.route_invocation``
   (the task's current queue and priority, as pynenc's own re-route does).

No status is changed (pynenc allows no transition from REGISTERED that would mark
a re-route). A duplicate message, made when a runner pops the message between
steps 1 and 2, is harmless: every message leads to the one compare-and-set to
PENDING, which one runner wins; the others find the status no longer available
for run and drop the message. The sweep needs the broker to be ``MongoBroker``
(the only broker whose queue it can see); with any other broker it does nothing.

Cost per run: one query plus one query per :data:`BATCH` old invocations
(backlog included), plus one ``insert_many`` per queue and priority to re-route.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pynenc.exceptions import PynencError
from pynenc.identifiers.invocation_id import InvocationId
from pynenc.invocation.status import InvocationStatus

from pynenc_mongo.broker import LEGACY_BROKER
from pynenc_mongo.schema import orchestrator as s

if TYPE_CHECKING:
    from pynenc.app import Pynenc

    from pynenc_mongo.store import MongoStore

#: Ids per ``$in`` query on the broker's queue (bounds each query's size).
BATCH = 1_000


def available_statuses() -> list[str]:
    """pynenc's statuses available for run (REGISTERED, REROUTED, RETRY on 0.4), sorted."""
    return sorted(st.value for st in InvocationStatus.get_available_for_run_statuses())


def stale_available(
    store: MongoStore, max_pending_seconds: float, now_us: int
) -> list[dict[str, Any]]:
    """Invocations available for run whose status is ``max_pending_seconds`` old or older.

    :param MongoStore store: the orchestrator's store.
    :param float max_pending_seconds: age in seconds (pynenc's ``max_pending_seconds``).
    :param int now_us: now, microseconds since the epoch (the orchestrator's clock).
    :return: documents with ``inv`` and, when stored, ``q`` and ``p`` (read completely;
        index ``orch_inv_status_ts``).
    """
    cutoff = now_us - int(max_pending_seconds * 1e6)
    query = store.app_filter(
        **{s.F_STATUS: {"$in": available_statuses()}, s.F_TS: {"$lte": cutoff}}
    )
    projection = {s.F_INV: 1, s.F_ROUTE_QUEUE: 1, s.F_ROUTE_PRIORITY: 1, "_id": 0}
    collection = store.collection(s.INVOCATIONS)
    return list(store.retry(lambda: list(collection.find(query, projection))))


def _batches(items: Sequence[dict[str, Any]], size: int) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def reroute_unqueued(
    app: Pynenc, store: MongoStore, max_pending_seconds: float, now_us: int
) -> list[InvocationId]:
    """Route again the stale invocations available for run that have no message.

    :param Pynenc app: the app (its broker must be ``MongoBroker``, else nothing is done).
    :param MongoStore store: the orchestrator's store.
    :param float max_pending_seconds: age in seconds before an invocation is examined.
    :param int now_us: now, microseconds since the epoch.
    :return: the ids routed again (empty when none, or when the broker is not ``MongoBroker``).
    :raises pynenc_mongo.errors.MongoUnavailableError: the server cannot be reached
        (the core task then fails and pynenc runs it at its next cron time).
    """
    broker: Any = app.broker
    queued_ids = getattr(broker, "queued_invocation_ids", None)
    if queued_ids is None:
        return []
    stale = stale_available(store, max_pending_seconds, now_us)
    routes: dict[tuple[str, float] | None, list[InvocationId]] = {}
    for batch in _batches(stale, BATCH):
        queued = queued_ids([doc[s.F_INV] for doc in batch])
        for doc in batch:
            if doc[s.F_INV] in queued:
                continue
            queue, priority = doc.get(s.F_ROUTE_QUEUE), doc.get(s.F_ROUTE_PRIORITY)
            key = None if queue is None or priority is None else (str(queue), float(priority))
            routes.setdefault(key, []).append(InvocationId(doc[s.F_INV]))
    rerouted: list[InvocationId] = []
    for key, ids in routes.items():
        try:
            _route(app, key, ids)
        except PynencError as exc:  # e.g. a queue no longer configured
            app.logger.warning(f"Could not route again {len(ids)} unqueued invocation(s): {exc}")
            continue
        rerouted += ids
    for inv in rerouted:
        app.logger.info(f"Recovered unqueued invocation:{inv} (routed again)")
    return rerouted


def _route(app: Pynenc, key: tuple[str, float] | None, ids: list[InvocationId]) -> None:
    broker: Any = app.broker
    if LEGACY_BROKER:
        broker.route_invocations(ids)  # pynenc 0.2.x: no queues or priorities
    elif key is not None:
        broker.route_invocations(ids, key[0], key[1])
    else:
        for inv in ids:
            app.orchestrator.route_invocation(app.state_backend.get_invocation(inv))


def route_of(invocation: Any) -> dict[str, Any]:
    """The ``q`` and ``p`` fields of a registration: the queue and priority pynenc
    routes ``invocation`` with (``task.broker_queue``, ``task.broker_priority``),
    or nothing on pynenc 0.2.x (no queues or priorities).

    :param DistributedInvocation invocation: the invocation being registered.
    :return: ``{"q": str, "p": float}`` or ``{}``.
    """
    task = invocation.task
    if LEGACY_BROKER or not hasattr(task, "broker_queue"):
        return {}
    return {
        s.F_ROUTE_QUEUE: str(task.broker_queue),
        s.F_ROUTE_PRIORITY: float(task.broker_priority),
    }
