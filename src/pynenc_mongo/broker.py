"""``MongoBroker``: pynenc's queue of invocation ids, on MongoDB.

Named queues and float priorities, as pynenc 0.4's ``BaseBroker`` defines them.
One collection, ``broker_queue`` (shape and index in
:mod:`pynenc_mongo.schema.broker`); every operation is one MongoDB command:

* routing (``_route_invocation(s)``) is one ``insert_many`` of messages with
  client-made ``_id`` values, so a retry after a lost reply inserts nothing twice;
* :meth:`MongoBroker.retrieve_invocation` is one ``find_one_and_delete`` whose
  filter (``app_id``, ``queue``) and sort (``priority`` descending, ``seq``,
  ``_id``) are served by the index ``app_queue_priority_seq``. MongoDB applies it to
  one document atomically, so no two consumers, in any process, receive the same
  message (MongoDB manual, ``findAndModify``: "modifies and returns a single
  document"). It is never wrapped in a client-side retry: PyMongo's retryable
  writes retry it once, safely;
* :meth:`MongoBroker.count_invocations` is one ``count_documents`` over ``queue $in``;
* :meth:`MongoBroker.purge` deletes this app's messages only.

**Order.** Highest priority first; within a priority, FIFO by ``seq``. ``seq`` is
an Int64 of nanoseconds since the epoch made strictly increasing within the
process (:func:`next_seq`), so one producer's messages come out in routing order
(a batch keeps its order). Across producers, FIFO means "in the order of the
producers' clocks at routing time": two hosts with skewed clocks interleave by
their clocks, and equal ``seq`` values (two processes in the same nanosecond)
are ordered by ``_id``, which is well defined but arbitrary. A server-side counter
would give one global order at the price of a round trip per route and one hot
document; pynenc's own brokers give no stronger guarantee.

**Delivery.** ``retrieve_invocation`` deletes the message as it returns it, as
pynenc's SQLite and memory brokers do; ownership is then proved by the
orchestrator's atomic status change to PENDING (a compare-and-set from the
statuses pynenc marks available for run). Two windows lose the message:

1. the runner dies after the PENDING change: pynenc's own pending recovery
   (``recover_pending_invocations``, statuses PENDING older than
   ``max_pending_seconds``) re-routes it;
2. the runner dies between the pop and the PENDING change: the invocation stays
   in a status available for run (REGISTERED, REROUTED, RETRY on pynenc 0.4, read
   from ``InvocationStatus.get_available_for_run_statuses()`` at run time) with no
   message, which pynenc 0.4 never recovers. ``MongoOrchestrator`` closes it in the
   same core task: its ``get_pending_invocations_for_recovery`` first finds the
   invocations in a status available for run whose status is older than
   ``max_pending_seconds`` (one query, index ``orch_inv_status_ts``), keeps those
   with no message here (:meth:`MongoBroker.queued_invocation_ids`, one ``$in``
   query per 1,000 ids, index ``app_invocation``), and routes them again with the
   queue and priority they were registered with
   (:mod:`pynenc_mongo.orchestrator.recovery`).

The guarantee, with ``MongoBroker`` and ``MongoOrchestrator`` together:

* **at-least-once through recovery**: a routed invocation whose message is lost
  in either window is routed again by the next run of the recovery core task, so
  it runs unless the app stops for good;
* **never twice concurrently, never twice to completion by this mechanism**: a
  re-route can duplicate a message (the sweep's two reads are not one snapshot:
  a runner may pop the message between them), but each message leads a runner
  to the one compare-and-set to PENDING; exactly one runner wins it, the others'
  messages are dropped because the status is no longer available for run. An
  invocation runs a second time only through pynenc's own recoveries of a PENDING
  or RUNNING owner presumed dead (a runner slower than ``max_pending_seconds``
  between PENDING and RUNNING, or a RUNNING owner without heartbeat), never while
  its owner's status change still holds;
* **worst-case delay** before a lost message is routed again: the recovery core
  task's period plus ``max_pending_seconds``: ``recover_pending_invocations_cron``
  (default ``*/5 * * * *``, every 5 minutes) + ``max_pending_seconds`` (default
  5 s), plus the time for the runner holding the atomic-service slot to start it.

``tests/broker/test_broker_processes.py`` shows both windows with real runner
processes killed by SIGKILL, and a duplicated message run once by racing runners.

**Idle cost.** pynenc's runners poll: one ``find_one_and_delete`` per queue per
loop iteration, each examining at most one index key; there is no blocking pop in
MongoDB.

**pynenc 0.2.3.** Its broker has no queues or priorities and its abstract methods
are the public ``route_invocation(id)`` / ``route_invocations(ids)``; on that
version this class defines those (queue ``default``, priority 0) and the queue
methods keep their defaults, so the same collection and order serve both versions.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, Final

from bson import ObjectId
from bson.int64 import Int64
from pynenc.broker.base_broker import BaseBroker
from pynenc.conf.config_broker import ConfigBroker
from pynenc.identifiers.invocation_id import InvocationId

from pynenc_mongo.config import ConfigMongo, check_unknown_settings
from pynenc_mongo.errors import translate_errors
from pynenc_mongo.operations import insert_if_absent
from pynenc_mongo.schema.broker import (
    BROKER_QUEUE,
    COLLECTIONS,
    F_INVOCATION,
    F_PRIORITY,
    F_QUEUE,
    F_SEQ,
    RETRIEVAL_SORT,
)
from pynenc_mongo.schema.layout import F_APP
from pynenc_mongo.store import MongoStore

if TYPE_CHECKING:
    from pymongo.collection import Collection
    from pynenc.app import Pynenc

#: True on pynenc 0.2.x, whose broker has no queues or priorities.
LEGACY_BROKER: Final = not hasattr(BaseBroker, "_route_invocation")
#: The queue pynenc always configures (and the only one on pynenc 0.2.x).
DEFAULT_QUEUE: Final = "default"
#: Largest ``seq``: the Int64 maximum (nanoseconds since the epoch reach it in 2262).
MAX_SEQ: Final = 2**63 - 1

_seq_lock = threading.Lock()
_last_seq = 0


def next_seq(count: int = 1) -> int:
    """Reserve ``count`` consecutive routing sequence numbers; return the first.

    The value is ``time.time_ns()`` (nanoseconds since the Unix epoch, this host's
    clock), raised past the last value this process handed out, so the numbers one
    process makes are strictly increasing even when the clock stalls or steps back.
    A forked child inherits the counter and continues from it.

    :param int count: how many numbers (at least 1).
    :return: the first of ``count`` numbers ``first .. first + count - 1``.
    :raises ValueError: if ``count`` < 1.
    """
    global _last_seq
    if count < 1:
        raise ValueError(f"count: expected at least 1, got {count!r}")
    with _seq_lock:
        first = max(time.time_ns(), _last_seq + 1)
        _last_seq = first + count - 1
    return first


def _reset_seq_after_fork() -> None:  # pragma: no cover (runs in forked children)
    global _seq_lock
    _seq_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_seq_after_fork)


class ConfigBrokerMongo(ConfigBroker, ConfigMongo):
    """Broker settings: pynenc's ``ConfigBroker`` (``queues``, ``priority_rules``,
    queue-mismatch policy) plus the shared :class:`~pynenc_mongo.config.ConfigMongo`
    connection settings. The broker adds none of its own."""


class MongoBroker(BaseBroker):
    """pynenc broker on MongoDB: named queues, float priorities, FIFO within a priority.

    Select it with ``broker_cls="MongoBroker"`` (config values, or the env var
    ``PYNENC__BROKER_CLS``); the ``mongo_*`` settings are the state backend's.
    Creating it does no I/O. See the module docstring for order and delivery.

    :param Pynenc app: the pynenc app.
    """

    def __init__(self, app: Pynenc) -> None:
        super().__init__(app)
        self._store: MongoStore | None = None

    # ------------------------------------------------------------------ plumbing
    @cached_property
    def conf(self) -> ConfigBrokerMongo:
        """The resolved settings (cistell: config values, files, env vars).

        :raises pynenc_mongo.config.MongoConfigError: for a bad or misspelt setting.
        """
        check_unknown_settings(self.app.config_values)
        return ConfigBrokerMongo(
            config_values=self.app.config_values,
            config_filepath=self.app.config_filepath,
        )

    @property
    def store(self) -> MongoStore:
        """This app's :class:`~pynenc_mongo.store.MongoStore` (made on first use)."""
        if self._store is None:
            self._store = MongoStore(self.conf, self.app.app_id)
        return self._store

    def describe_target(self) -> str:
        """Where the queue lives: redacted URL and database (for error messages)."""
        return self.store.describe_target()

    def __repr__(self) -> str:
        return f"<MongoBroker app_id={self.app.app_id!r} {self.describe_target()}>"

    def _queue(self) -> Collection[dict[str, Any]]:
        return self.store.collection(BROKER_QUEUE)

    def _configured_queues(self) -> tuple[str, ...]:
        """``conf.queues``, read on every call (tests change it while the app runs)."""
        queues: tuple[str, ...] = getattr(self.conf, "queues", (DEFAULT_QUEUE,))
        return tuple(queues)

    def _validate(self, queue_names: Sequence[str]) -> None:
        """pynenc's queue-name validation and mismatch policy (absent on 0.2.x)."""
        validate = getattr(self, "_validate_queue_names", None)
        if validate is not None:
            validate(queue_names)

    # ------------------------------------------------------------------ routing
    def _route_invocation(
        self, invocation_id: InvocationId, queue_name: str, priority: float
    ) -> None:
        """Queue one invocation id (called by pynenc's validating ``route_invocation``).

        :param InvocationId invocation_id: the id; routing it twice queues it twice.
        :param str queue_name: a validated queue name.
        :param float priority: a validated priority in [-100, 100].
        """
        self._route_invocations([invocation_id], queue_name, priority)

    @translate_errors
    def _route_invocations(
        self, invocation_ids: Sequence[InvocationId], queue_name: str, priority: float
    ) -> None:
        """Queue several ids in their order, in one ``insert_many``.

        Called by pynenc's validating ``route_invocations``. Each message gets a
        client-made ``_id``, so the insert is idempotent and is retried on
        transient errors without queueing anything twice.

        :param Sequence[InvocationId] invocation_ids: the ids, in routing order.
        :param str queue_name: a validated queue name.
        :param float priority: a validated priority in [-100, 100].
        :raises TypeError: if an id is not a string.
        """
        if not invocation_ids:
            return
        for invocation_id in invocation_ids:
            if not isinstance(invocation_id, str):
                raise TypeError(
                    f"invocation_id: expected a str, got {type(invocation_id).__name__}"
                )
        first = next_seq(len(invocation_ids))
        app_id = self.app.app_id
        docs = [
            {
                "_id": ObjectId(),
                F_APP: app_id,
                F_QUEUE: str(queue_name),
                F_PRIORITY: float(priority),
                F_SEQ: Int64(first + offset),
                F_INVOCATION: str(invocation_id),
            }
            for offset, invocation_id in enumerate(invocation_ids)
        ]
        self.store.retry(insert_if_absent, self._queue(), docs)

    # ------------------------------------------------------------------ retrieval
    @translate_errors
    def retrieve_invocation(self, queue_name: str | None = None) -> InvocationId | None:
        """Pop the next invocation id of one queue: highest priority, then FIFO.

        One ``find_one_and_delete`` served by the index ``app_queue_priority_seq``:
        atomic, so no two consumers ever receive the same message.

        :param str | None queue_name: the queue; None means ``conf.queues[0]``.
        :return: the invocation id, or None when the queue is empty.
        :raises pynenc.exceptions.ConfigError: for an invalid queue name (such as
            ``"*"``), or an unknown one when ``raise_on_queue_mismatch`` is set.
        """
        queue = self._configured_queues()[0] if queue_name is None else queue_name
        self._validate((queue,))
        doc = self._queue().find_one_and_delete(
            {F_APP: self.app.app_id, F_QUEUE: queue},
            # ``_id`` stays in the projection: mongomock deletes the document it
            # returns by its ``_id`` (without it, the first match in natural order).
            projection={F_INVOCATION: 1},
            sort=list(RETRIEVAL_SORT),
        )
        if doc is None:
            return None
        return InvocationId(doc[F_INVOCATION])

    @translate_errors
    def count_invocations(self, queue_names: Sequence[str] | None = None) -> int:
        """How many messages wait in the given queues.

        :param Sequence[str] | None queue_names: queues to count; None means every
            queue of ``conf.queues``. Unknown names follow pynenc's mismatch policy.
        :return: the number of queued messages (one per routing).
        """
        queues = self._configured_queues() if queue_names is None else tuple(queue_names)
        self._validate(queues)
        if not queues:
            return 0
        return int(
            self.store.retry(
                self._queue().count_documents,
                {F_APP: self.app.app_id, F_QUEUE: {"$in": sorted(set(queues))}},
            )
        )

    @translate_errors
    def purge(self) -> None:
        """Delete every queued message of this app (other apps' are untouched);
        calling it again is harmless."""
        self.store.purge(COLLECTIONS)

    @translate_errors
    def queued_invocation_ids(self, invocation_ids: Sequence[str]) -> set[str]:
        """Which of these invocations have at least one message queued (any queue).

        One ``find`` with ``invocation_id $in``, covered by the index
        ``app_invocation``; used by the orchestrator's recovery to tell an
        invocation waiting in a backlog from one whose message was lost. The
        caller bounds the list (the orchestrator sends at most 1,000 ids).

        :param Sequence[str] invocation_ids: the ids to look up.
        :return: the subset of ``invocation_ids`` with a message.
        """
        ids = sorted({str(i) for i in invocation_ids})
        if not ids:
            return set()
        queue = self._queue()
        query = {F_APP: self.app.app_id, F_INVOCATION: {"$in": ids}}
        docs = self.store.retry(lambda: list(queue.find(query, {F_INVOCATION: 1, "_id": 0})))
        return {doc[F_INVOCATION] for doc in docs}

    # ------------------------------------------------------------------ pynenc 0.2.x
    if LEGACY_BROKER:  # pragma: no cover (covered by the pynenc 0.2.3 run)

        def route_invocation(self, invocation_id: InvocationId) -> None:  # type: ignore[override]
            """pynenc 0.2.x: queue one id on ``default`` with priority 0."""
            self._route_invocations([invocation_id], DEFAULT_QUEUE, 0.0)

        def route_invocations(self, invocation_ids: Sequence[InvocationId]) -> None:  # type: ignore[override]
            """pynenc 0.2.x: queue ids on ``default`` with priority 0, in order."""
            self._route_invocations(list(invocation_ids), DEFAULT_QUEUE, 0.0)


__all__ = ["ConfigBrokerMongo", "MongoBroker", "next_seq"]
