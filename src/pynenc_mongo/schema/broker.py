"""The broker's collection, its document shape and index.

``broker_queue`` -- one document per queued message (routing the same invocation
twice gives two documents, as pynenc's broker contract requires)::

    {_id: ObjectId (client-made),
     app_id,
     queue: str,               # a pynenc queue name ([A-Za-z0-9_.-]+)
     priority: double,         # finite, in [-100, 100]; higher is retrieved first
     seq: Int64,               # routing order: see :func:`pynenc_mongo.broker.next_seq`
     invocation_id: str}

Retrieval order is ``priority`` descending, then ``seq`` ascending, then ``_id``
ascending; the one index below serves that filter and sort in ESR order
(equality ``app_id``, ``queue``; sort ``priority``, ``seq``, ``_id``; MongoDB
manual, "The ESR (Equality, Sort, Range) Guideline"), so a claim examines one
index key whatever the queue length, and counting per queue is a covered range of
the same index. Messages have no TTL: a queued invocation is never dropped.

A second index, ``{app_id, invocation_id}`` (``app_invocation``), serves the
orchestrator's recovery check "which of these invocations still have a message"
(:meth:`pynenc_mongo.broker.MongoBroker.queued_invocation_ids`, an ``$in`` query
covered by the index).
"""

from __future__ import annotations

from typing import Final

from pynenc_mongo.schema.layout import F_APP, IndexSpec

BROKER_QUEUE: Final = "broker_queue"

F_QUEUE: Final = "queue"
F_PRIORITY: Final = "priority"
F_SEQ: Final = "seq"
F_INVOCATION: Final = "invocation_id"

#: The retrieval order (``find_one_and_delete`` sort): highest priority first, then
#: routing order, then ``_id`` for messages routed with the same ``seq``.
RETRIEVAL_SORT: Final[tuple[tuple[str, int], ...]] = ((F_PRIORITY, -1), (F_SEQ, 1), ("_id", 1))

#: This component's logical collection names.
COLLECTIONS: Final[tuple[str, ...]] = (BROKER_QUEUE,)
#: Every index this component's queries need.
INDEXES: Final[tuple[IndexSpec, ...]] = (
    IndexSpec(
        BROKER_QUEUE,
        ((F_APP, 1), (F_QUEUE, 1), *RETRIEVAL_SORT),
        "app_queue_priority_seq",
    ),
    # recovery: which of a batch of invocation ids still have a queued message.
    IndexSpec(BROKER_QUEUE, ((F_APP, 1), (F_INVOCATION, 1)), "app_invocation"),
)
