"""Workflows: runs, sub-invocations and workflow data.

* ``workflow_runs``: one document per run (idempotent upsert), listed newest first.
* ``workflow_sub_invocations``: one document per (workflow, sub-invocation).
* ``workflow_data``: a workflow's keys in bounded bucket documents (the bucket
  pattern, :mod:`pynenc_mongo.schema.state`): each key is a field of one bucket's
  ``data`` (encoded by :func:`pynenc_mongo.schema.encode_data_key`), its value
  inline up to :data:`WORKFLOW_INLINE_MAX_BYTES` or as pieces owned by
  ``workflow:<id>``. pynenc's deterministic replay writes a key per step
  (``task_invocation:<call id>``, counters): with one document per workflow that
  document reached 16 MiB at about 97,000 steps, and every step rewrote all of it
  (issue 16, item 8). A bucket holds at most :data:`~pynenc_mongo.schema.BUCKET_MAX_KEYS`
  keys, so a step costs one bounded document whatever the workflow's length.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from pynenc_mongo import schema, values
from pynenc_mongo.errors import MongoBackendError
from pynenc_mongo.schema import (
    BUCKET_MAX_KEYS,
    BUCKET_SOFT_MAX_BYTES,
    F_APP,
    F_BUCKET,
    F_BYTES,
    F_COUNT,
    F_EXPIRE,
    F_KEYS,
)
from pynenc_mongo.state_backend.common import StorePart, check_str
from pynenc_mongo.store import MongoStore, check_document_size

if TYPE_CHECKING:
    from pynenc.identifiers.invocation_id import InvocationId
    from pynenc.identifiers.task_id import TaskId
    from pynenc.workflow.workflow_identity import WorkflowIdentity

#: Workflow-data values are inlined in their bucket only up to this many bytes (at
#: most ``mongo_inline_value_max_bytes``); larger ones are stored as pieces.
WORKFLOW_INLINE_MAX_BYTES = 16 * 1024
#: Longest encoded workflow-data key kept as its own field name (bytes); a longer
#: key is named by its SHA-256 instead (``h<64 hex digits>``), so any key fits.
#: Together with :data:`WORKFLOW_INLINE_MAX_BYTES` and ``BUCKET_MAX_KEYS`` this
#: bounds a bucket document below MongoDB's 16 MiB.
FIELD_NAME_MAX_BYTES = 1024
#: How many times a write looks for a bucket again after losing a race for one (two
#: writers adding the same new key, or filling the same bucket) before giving up.
PLACE_ATTEMPTS = 16
#: Workflows whose newest bucket number this process remembers.
OPEN_BUCKET_CACHE_SIZE = 10_000
#: Workflow-data keys this process remembers having written or read (about 150
#: bytes each): an overwrite of one of them goes straight to its bucket.
SEEN_KEYS_CACHE_SIZE = 50_000


def data_field(key: str) -> str:
    """The field path of workflow-data ``key``: ``data.`` and the key encoded by
    :func:`schema.encode_data_key` (``k...``), or for an encoded key longer than
    :data:`FIELD_NAME_MAX_BYTES`, ``data.h`` and its SHA-256 in hex (keys are never
    listed back, so a long key need not be stored; ``k`` and ``h`` never collide).

    :raises TypeError: if ``key`` is not a str.
    """
    encoded = schema.encode_data_key(key)
    raw = encoded.encode("utf-8", "surrogatepass")
    if len(raw) > FIELD_NAME_MAX_BYTES:
        return "data.h" + hashlib.sha256(raw).hexdigest()
    return "data." + encoded


def data_filter(app_id: str, workflow_id: str, field: str) -> dict[str, Any]:
    """The filter of the one bucket holding ``field`` (index ``app_workflow_key``).

    :param str field: a path made by :func:`data_field`.
    """
    digest = schema.data_key_digest(field.removeprefix("data."))
    return {F_APP: app_id, "workflow_id": workflow_id, F_KEYS: digest}


class Workflows(StorePart):
    """Workflow runs, sub-invocations and data of one app.

    :param MongoStore store: the app's store.
    """

    def __init__(self, store: MongoStore) -> None:
        super().__init__(store)
        #: workflow id -> (newest bucket number, its expire_at) as last seen.
        self._open: LRUCache[str, tuple[int, Any]] = LRUCache(OPEN_BUCKET_CACHE_SIZE)
        #: (workflow id, key digest) of keys this process wrote or read: set first.
        self._seen: LRUCache[tuple[str, str], bool] = LRUCache(SEEN_KEYS_CACHE_SIZE)
        self._cache_lock = threading.Lock()  # guards both caches (cachetools is not thread-safe)

    # ------------------------------------------------------------------ data
    def set_data(
        self, workflow_id: str, key: str, value: Any, serialize: Callable[[Any], str]
    ) -> None:
        """Set ``key`` of a workflow's data to ``value``.

        An existing key is overwritten in its bucket (one ``find_one_and_update``);
        a new key is added to the newest bucket with room (an ``update_one`` upsert
        whose filter states the room: fewer than ``BUCKET_MAX_KEYS`` keys, below
        ``BUCKET_SOFT_MAX_BYTES``, and the key not there), after looking for it in
        the older buckets when there are any. Operations: a new key 1 (while the
        workflow has one bucket) or 2, an overwrite 1 (2 for a key another process
        wrote into a one-bucket workflow), plus one ``find`` when this process first
        writes to the workflow. The unique indexes ``app_workflow_bucket`` and
        ``app_workflow_key`` settle races: a writer that loses one looks again.
        Large values are stored as pieces first.

        :param Callable serialize: turns ``value`` into text (the app's client data
            store); called once the key is checked.
        :raises TypeError: if ``key`` or ``workflow_id`` is not a string.
        :raises pynenc_mongo.errors.MongoBackendError: if no bucket could be
            settled in :data:`PLACE_ATTEMPTS` tries (constant contention).
        """
        field = data_field(key)
        text = serialize(value)
        check_str("workflow_id", workflow_id)
        self.require_unique(schema.WORKFLOW_DATA)
        by_key = data_filter(self.app_id, workflow_id, field)

        def switch(prepared: values.PreparedValue) -> dict[str, Any] | None:
            return self._place(workflow_id, by_key, field, prepared.stored)

        self.store.write_value(
            schema.WORKFLOW_DATA,
            by_key,
            field,
            f"workflow:{workflow_id}",
            text,
            limit=WORKFLOW_INLINE_MAX_BYTES,
            switch=switch,
        )

    def _place(
        self, workflow_id: str, by_key: dict[str, Any], field: str, stored: Any
    ) -> dict[str, Any] | None:
        """Point ``field`` at ``stored`` in its bucket, or add it to the newest one.

        :return: the bucket before the write (with ``field``) when the key existed,
            else None.
        """
        collection = self.store.collection(schema.WORKFLOW_DATA)
        digest = by_key[F_KEYS]
        size = len(field) + values.stored_size(stored)
        with self._cache_lock:
            seen = self._seen.get((workflow_id, digest), False)
        # While the newest bucket is bucket 0, a key can be nowhere else: the add's own
        # filter (the key not in bucket 0) decides, in one operation. Past bucket 0, or
        # for a key this process has seen, look for the key first (on MongoDB the
        # unique index would refuse a second copy, but the embedded store does not
        # enforce uniqueness on arrays).
        add_first = not seen and self._newest_bucket(workflow_id)[0] == 0
        for _ in range(PLACE_ATTEMPTS):
            if not add_first:
                before: dict[str, Any] | None = self.store.retry(
                    collection.find_one_and_update,
                    by_key,
                    {"$set": {field: stored}},
                    projection={field: 1, "_id": 0},
                    return_document=ReturnDocument.BEFORE,
                )
                if before is not None:
                    self._see(workflow_id, digest)
                    return before
            add_first = False
            bucket, expire_at = self._newest_bucket(workflow_id)
            update: dict[str, Any] = {
                "$set": {field: stored},
                "$addToSet": {F_KEYS: digest},
                "$inc": {F_COUNT: 1, F_BYTES: size},
            }
            if expire_at is not None:  # the workflow was stamped for expiry already
                update["$setOnInsert"] = {F_EXPIRE: expire_at}
            try:
                self.store.retry(
                    collection.update_one,
                    {
                        F_APP: self.app_id,
                        "workflow_id": workflow_id,
                        F_BUCKET: bucket,
                        F_COUNT: {"$lt": BUCKET_MAX_KEYS},
                        F_BYTES: {"$lt": BUCKET_SOFT_MAX_BYTES},
                        F_KEYS: {"$ne": digest},
                    },
                    update,
                    upsert=True,
                )
                self._see(workflow_id, digest)
                return None
            except DuplicateKeyError:
                # The bucket is full (the upsert tried to insert it again), or another
                # writer added this key meanwhile (in this bucket or another): look again.
                with self._cache_lock:
                    self._open.pop(workflow_id, None)
        raise MongoBackendError(
            f"workflow {workflow_id[:80]!r}: no bucket of {schema.WORKFLOW_DATA!r} settled "
            f"for a data key in {PLACE_ATTEMPTS} attempts (other writers kept filling them)"
        )

    def _see(self, workflow_id: str, digest: str) -> None:
        """Remember that key ``digest`` of ``workflow_id`` exists (written or read here)."""
        with self._cache_lock:
            self._seen[(workflow_id, digest)] = True

    def _newest_bucket(self, workflow_id: str) -> tuple[int, Any]:
        """The bucket new keys of ``workflow_id`` go to, and its ``expire_at``.

        Cached per process; looked up (one ``find_one`` sorted on
        ``app_workflow_bucket``) when unknown or after a lost race: the newest
        bucket, or the next number when it is full.
        """
        with self._cache_lock:
            known = self._open.get(workflow_id)
        if known is not None:
            return known
        doc = self.store.retry(
            self.store.collection(schema.WORKFLOW_DATA).find_one,
            {F_APP: self.app_id, "workflow_id": workflow_id},
            {F_BUCKET: 1, F_COUNT: 1, F_BYTES: 1, F_EXPIRE: 1, "_id": 0},
            sort=[(F_BUCKET, -1)],
        )
        if doc is None:
            found: tuple[int, Any] = (0, None)
        else:
            bucket = int(doc.get(F_BUCKET) or 0)
            full = (
                doc.get(F_COUNT, 0) >= BUCKET_MAX_KEYS
                or doc.get(F_BYTES, 0) >= BUCKET_SOFT_MAX_BYTES
            )
            found = (bucket + 1 if full else bucket, doc.get(F_EXPIRE))
        with self._cache_lock:
            self._open[workflow_id] = found
        return found

    def get_data(self, workflow_id: str, key: str) -> tuple[bool, str]:
        """The serialized value under ``key``: ``(found, text)``; one ``find_one`` on
        the index ``app_workflow_key``.

        :raises TypeError: if ``key`` or ``workflow_id`` is not a string.
        """
        field = data_field(key)
        check_str("workflow_id", workflow_id)
        by_key = data_filter(self.app_id, workflow_id, field)
        found, text = self.store.read_value(schema.WORKFLOW_DATA, by_key, field)
        if found:
            self._see(workflow_id, by_key[F_KEYS])
        return found, text

    # ------------------------------------------------------------------ runs
    def store_run(self, workflow_identity: WorkflowIdentity) -> None:
        """Record a workflow run (idempotent upsert).

        :raises pynenc_mongo.errors.MongoLimitError: if the run's document would pass 16 MiB.
        """
        doc = schema.workflow_run_doc(self.app_id, workflow_identity)
        check_str("workflow_id", workflow_identity.workflow_id)
        check_document_size(doc, f"workflow run {workflow_identity.workflow_id[:80]!r}")
        self.require_unique(schema.WORKFLOW_RUNS)
        self.store.upsert(
            self.store.collection(schema.WORKFLOW_RUNS).update_one,
            {F_APP: self.app_id, "workflow_id": workflow_identity.workflow_id},
            {"$set": doc},
            upsert=True,
        )

    def all_types(self) -> Iterator[TaskId]:
        """Distinct workflow types (task ids) that have runs, sorted by key."""
        from pynenc.identifiers.task_id import TaskId

        keys: list[str] = self.store.retry(
            self.store.collection(schema.WORKFLOW_RUNS).distinct,
            "workflow_type.key",
            {F_APP: self.app_id},
        )
        return iter([TaskId.from_key(key) for key in sorted(keys)])

    def runs(self, workflow_type_key: str | None = None) -> Iterator[WorkflowIdentity]:
        """Workflow runs (of one type, or all), newest first.

        Newest first, to the second (``_id`` is the ObjectId made when the run was first
        stored): pynenc's monitor shows the first run as a type's "latest run" and
        charts the first three.

        :raises TypeError: if ``workflow_type_key`` is given and not a str.
        """
        filter_: dict[str, Any] = {F_APP: self.app_id}
        if workflow_type_key is not None:
            filter_["workflow_type.key"] = check_str("workflow_type.key", workflow_type_key)
        docs = self.stream(
            self.store.collection(schema.WORKFLOW_RUNS), filter_, {"_id": 0}, sort=[("_id", -1)]
        )
        return (schema.workflow_run_from(doc) for doc in docs)

    # ------------------------------------------------------------------ sub-invocations
    def store_sub_invocation(
        self, parent_workflow_id: InvocationId, sub_invocation_id: InvocationId
    ) -> None:
        """Record that ``sub_invocation_id`` runs inside ``parent_workflow_id`` (idempotent).

        :raises TypeError: if an id is not a str.
        """
        key = {
            F_APP: self.app_id,
            "workflow_id": check_str("parent_workflow_id", parent_workflow_id),
            "sub_invocation_id": check_str("sub_invocation_id", sub_invocation_id),
        }
        check_document_size(key, f"workflow sub-invocation {sub_invocation_id[:80]!r}")
        self.require_unique(schema.WORKFLOW_SUB_INVOCATIONS)
        self.store.upsert(
            self.store.collection(schema.WORKFLOW_SUB_INVOCATIONS).update_one,
            key,
            {"$setOnInsert": key},
            upsert=True,
        )

    def sub_invocations(self, workflow_id: InvocationId) -> Iterator[InvocationId]:
        """Ids of the invocations that run inside ``workflow_id``."""
        docs = self.stream(
            self.store.collection(schema.WORKFLOW_SUB_INVOCATIONS),
            {F_APP: self.app_id, "workflow_id": check_str("workflow_id", workflow_id)},
            {"_id": 0, "sub_invocation_id": 1},
        )
        return (doc["sub_invocation_id"] for doc in docs)


__all__ = [
    "FIELD_NAME_MAX_BYTES",
    "WORKFLOW_INLINE_MAX_BYTES",
    "Workflows",
    "data_field",
    "data_filter",
]
