"""Invocations: the DTO cache and the deferred inserts of the ``invocations`` collection.

* ``InvocationDTO`` and ``CallDTO`` are frozen (an invocation id's DTOs never
  change once stored), so each process keeps the DTOs it has written or read in
  a bounded LRU cache (``mongo_invocation_cache_size``) and never re-reads or
  re-writes them; a batch upsert is a single unordered ``insert_many`` that skips
  invocations already stored.
* pynenc stores each new invocation from its constructor, one by one, then
  upserts the whole batch again when it registers them (``parallelize`` builds
  N invocations, then registers the N together), always before routing them.
  New invocations are therefore deferred, per thread: they are written, all in
  one ``insert_many``, by the next upsert call naming one of them (the
  registration, which returns once they are durable), or before the same
  thread's next MongoDB operation of any kind (the store's ``before_operation``
  hook), whichever comes first; ``wait_for_all_async_operations``, ``purge``,
  ``close`` and interpreter exit write every thread's. Registering N invocations
  costs one operation, not N + 1.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from cachetools import LRUCache
from pymongo.collection import Collection

from pynenc_mongo import at_exit, schema, values
from pynenc_mongo.errors import translate_errors
from pynenc_mongo.operations import insert_if_absent, surely_unwritten
from pynenc_mongo.schema import F_APP, F_INV
from pynenc_mongo.state_backend.common import DTOPair, StorePart, check_str
from pynenc_mongo.store import STALE_READ_ATTEMPTS, MongoStore, check_document_size, is_expired

if TYPE_CHECKING:
    from pynenc.identifiers.invocation_id import InvocationId
    from pynenc.models.call_dto import CallDTO
    from pynenc.models.invocation_dto import InvocationDTO

logger = logging.getLogger("pynenc_mongo")

#: Bytes of inline argument values one invocation document may hold; beyond it
#: the largest arguments go to pieces, so the document stays far below 16 MiB.
INVOCATION_ARGUMENTS_BUDGET_BYTES = 8 * 1024 * 1024
#: With retention, a cached DTO pair whose expiry is unknown is re-read this many
#: seconds before a full retention has passed since it was cached.
CACHE_EXPIRY_MARGIN_SECONDS = 3600


class Invocations(StorePart):
    """The ``invocations`` collection of one app, with the DTO cache and deferred inserts.

    :param MongoStore store: the app's store.
    :param int cache_size: most DTO pairs kept (``mongo_invocation_cache_size``);
        0 disables the cache, and then new invocations are written at once.
    """

    def __init__(self, store: MongoStore, cache_size: int) -> None:
        super().__init__(store)
        self.dto_cache: LRUCache[str, DTOPair] = LRUCache(maxsize=max(cache_size, 1))
        self.cache_enabled = cache_size > 0
        self.cache_lock = threading.Lock()
        # Deferred inserts: per thread ident, invocation id -> (document, value ids of
        # its large-argument pieces); the ids deferred or being written; the lock held
        # while writing (so a flush returns only once earlier deferred inserts it
        # depends on are durable).
        self.deferred: dict[int, dict[str, tuple[dict[str, Any], list[str]]]] = {}
        self.unwritten: set[str] = set()
        self.deferred_lock = threading.Lock()
        self.flush_lock = threading.Lock()
        # With retention: when each cached pair must be re-read (epoch seconds), so the
        # cache never serves an invocation the TTL monitor may have deleted (item 12).
        self.retention_seconds = store.conf.mongo_retention_days * 86400
        self.deadlines: dict[str, float] = {}
        _live_parts.add(self)

    def has_deferred(self, owner: int | None = None) -> bool:
        """True if thread ``owner`` (default: this thread) has deferred inserts."""
        return bool(self.deferred.get(threading.get_ident() if owner is None else owner))

    def cached(self, invocation_id: str) -> DTOPair | None:
        """The cached DTO pair of ``invocation_id``, or None (also when retention may
        have deleted it since: see :meth:`remember`)."""
        with self.cache_lock:
            deadline = self.deadlines.get(invocation_id)
            if deadline is not None and time.time() >= deadline:
                self.dto_cache.pop(invocation_id, None)
                del self.deadlines[invocation_id]
                return None
            return self.dto_cache.get(invocation_id)

    def note_expiry(self, invocation_id: str, expire_at: datetime) -> None:
        """This process stamped ``invocation_id`` for expiry at ``expire_at``: its cached
        pair is served until then only."""
        with self.cache_lock:
            if invocation_id in self.dto_cache:
                self.deadlines[invocation_id] = expire_at.timestamp()

    def clear_cache(self) -> None:
        """Forget every cached DTO pair (after a purge)."""
        with self.cache_lock:
            self.dto_cache.clear()
            self.deadlines.clear()

    def reset_locks(self) -> None:
        """In a forked child: fresh locks (another parent thread may have held them),
        and none of the parent's deferred inserts: the parent writes them (issue 16,
        item 2); the child's cache keeps them, as the parent's copy will be stored."""
        self.cache_lock = threading.Lock()
        self.deferred_lock = threading.Lock()
        self.flush_lock = threading.Lock()
        self.deferred = {}
        self.unwritten = set()

    # ------------------------------------------------------------------ writes
    def upsert(self, entries: list[tuple[InvocationDTO, CallDTO]]) -> None:
        """Store invocation/call DTO pairs: one ``insert_many`` for the whole batch.

        Pairs whose invocation id this process already stored are skipped (the
        DTOs are immutable); others are deferred (see the module docstring), then
        inserted unless present (idempotent: the document stored first wins, and
        the losing writer deletes the large-value pieces it had written for its
        copy). Argument values go inline up to ``mongo_inline_value_max_bytes``
        each and :data:`INVOCATION_ARGUMENTS_BUDGET_BYTES` together; the largest
        ones beyond that are stored as pieces.

        :param list entries: ``[(InvocationDTO, CallDTO)]``.
        :raises TypeError: if an invocation id is not a str.
        :raises pynenc_mongo.errors.MongoLimitError: if an invocation document
            would still pass 16 MiB (huge ids, task or argument names).
        :raises pynenc_mongo.errors.MongoIndexMissingError: the unique index
            ``app_invocation`` is missing; nothing is stored or deferred.
        """
        fresh: dict[str, DTOPair] = {}
        registering: list[str] = []
        with self.cache_lock, self.deferred_lock:
            for inv_dto, call_dto in entries:
                inv_id = inv_dto.invocation_id
                check_str("invocation_id", inv_id)
                if inv_id in self.unwritten:
                    registering.append(inv_id)
                elif inv_id not in self.dto_cache and inv_id not in fresh:
                    fresh[inv_id] = (inv_dto, call_dto)
        if fresh:
            # Refused now, to the caller, or never: a deferred insert refused later
            # would fail every operation of this thread, then land after the caller
            # was told it failed (the fresh-clone review of issue 16).
            self.require_unique(schema.INVOCATIONS)
            deferred: dict[str, tuple[dict[str, Any], list[str]]] = {}
            pieces: list[dict[str, Any]] = []
            for key, (inv_dto, call_dto) in fresh.items():
                arguments = self._prepare_arguments(key, call_dto.serialized_arguments)
                doc = schema.invocation_doc(
                    self.app_id,
                    inv_dto,
                    call_dto,
                    [{"name": name, "value": prep.stored} for name, prep in arguments],
                )
                doc["_id"] = ObjectId()  # client-made: tells our retried insert from a rival's
                check_document_size(doc, f"invocation {key[:80]!r}")
                ids = [values.reference_id(prep.stored) for _, prep in arguments]
                deferred[key] = (doc, [i for i in ids if i is not None])
                pieces.extend(p for _, prep in arguments for p in prep.pieces)
            self.store.insert_pieces(pieces)  # pieces before the documents that point at them
            self.remember(fresh)
            with self.deferred_lock:
                self.deferred.setdefault(threading.get_ident(), {}).update(deferred)
                self.unwritten.update(deferred)
            at_exit.write_all_at_worker_exit()
        if registering or (fresh and not self.cache_enabled):
            self.flush_deferred(named=registering)

    @translate_errors
    def flush_deferred(
        self,
        named: list[str] | None = None,
        every_thread: bool = False,
        owner: int | None = None,
    ) -> None:
        """Write deferred invocations in one ``insert_many`` (idempotent): this
        thread's (or thread ``owner``'s), those in ``named`` whichever thread
        deferred them, or with ``every_thread`` all of them.

        Returns once they are durable, including those of ``named`` that another
        thread is writing at that moment. On failure the documents stay deferred
        and the error propagates; the next operation retries. A document that
        lost an insert race to another writer's copy has its pieces deleted.
        """
        me = threading.get_ident() if owner is None else owner
        if not self.unwritten or not (named or every_thread or self.deferred.get(me)):
            return
        # Before taking the batch: the first use ensures the indexes, which can fail;
        # then nothing has been taken, and the ids stay deferred (issue 16, item 5).
        collection = self.store.physical_collection(schema.INVOCATIONS)
        self.require_unique(schema.INVOCATIONS)  # the insert dedups by app_invocation
        with self.flush_lock:
            with self.deferred_lock:
                if every_thread:
                    taken = {k: v for per in self.deferred.values() for k, v in per.items()}
                    self.deferred.clear()
                else:
                    taken = self.deferred.pop(me, {})
                    for other in (named or []) if self.deferred else []:
                        for per in self.deferred.values():
                            if other in per:
                                taken[other] = per.pop(other)
                                break
                    for ident in [i for i, per in self.deferred.items() if not per]:
                        del self.deferred[ident]
            if not taken:
                return
            docs = [doc for doc, _ in taken.values()]
            doc_value_ids = [ids for _, ids in taken.values()]
            try:
                duplicates = self.store.retry(insert_if_absent, collection, docs)
            except BaseException as exc:
                self._restore_after_failure(me, taken, exc)
                raise
            with self.deferred_lock:
                self.unwritten.difference_update(taken)
        with_pieces = [i for i in duplicates if doc_value_ids[i]]  # others have nothing to drop
        if with_pieces:
            self._drop_losing_pieces(
                collection, [docs[i] for i in with_pieces], [doc_value_ids[i] for i in with_pieces]
            )

    def _restore_after_failure(
        self, me: int, taken: dict[str, tuple[dict[str, Any], list[str]]], exc: BaseException
    ) -> None:
        """After a failed insert of the batch ``taken``: the documents that were surely
        not stored (:func:`~pynenc_mongo.operations.surely_unwritten`) are forgotten and
        their pieces deleted; every other one (maybe stored: connection lost, write
        concern error, a non-PyMongo error) is put back as deferred, so the next
        operation writes it again (the insert is idempotent). Never raises."""
        keys = list(taken)
        gone = {keys[i] for i in surely_unwritten(exc, len(keys)) if i < len(keys)}
        with self.deferred_lock:
            self.deferred.setdefault(me, {}).update(
                {k: v for k, v in taken.items() if k not in gone}
            )
            self.unwritten.difference_update(gone)
        if not gone:
            return
        with self.cache_lock:  # (the ids of ``gone`` were never stored)
            for inv_id in gone:
                self.dto_cache.pop(inv_id, None)
        ids = sorted({i for k in gone for i in taken[k][1]})
        try:  # without the store's hook: it would flush the batch just put back, and
            # this thread holds the flush lock
            self.store.retry(
                self.store.physical_collection(schema.VALUE_PIECES).delete_many,
                {F_APP: self.app_id, "value_id": {"$in": ids}},
            )
        except Exception as cleanup:  # noqa: BLE001 - orphan pieces only cost space
            logger.warning("pynenc-mongo: unused argument pieces not deleted: %s", cleanup)

    def _prepare_arguments(
        self, owner: str, serialized: dict[str, str]
    ) -> list[tuple[str, values.PreparedValue]]:
        """Prepare an invocation's arguments within the per-document budget.

        :return: ``[(name, PreparedValue)]`` in argument order; nothing written yet.
        """
        prepare = self.store.prepare_only
        prepared = [(name, prepare(owner, text)) for name, text in serialized.items()]
        inline = sorted(
            (
                (values.stored_size(prep.stored), pos)
                for pos, (_, prep) in enumerate(prepared)
                if not prep.pieces
            ),
            reverse=True,
        )
        total = sum(size for size, _ in inline)
        for size, pos in inline:
            if total <= INVOCATION_ARGUMENTS_BUDGET_BYTES:
                break
            name, _ = prepared[pos]
            prepared[pos] = (name, prepare(owner, serialized[name], force_pieces=True))
            total -= size
        return prepared

    def _drop_losing_pieces(
        self,
        collection: Collection[dict[str, Any]],
        docs: list[dict[str, Any]],
        value_ids: list[list[str]],
    ) -> None:
        """Delete the pieces written for invocation documents that lost an insert race.

        A duplicate is ours when the stored document has our client-made ``_id``
        (an earlier attempt of the same insert got through); otherwise another
        writer's copy is stored and ours, with its pieces, is dropped.
        """
        stored = self.store.find_all(
            collection,
            {F_APP: self.app_id, F_INV: {"$in": [doc[F_INV] for doc in docs]}},
            {F_INV: 1, "_id": 1},
        )
        winner = {doc[F_INV]: doc["_id"] for doc in stored}
        losing = [
            value_id
            for doc, ids in zip(docs, value_ids, strict=True)
            if winner.get(doc[F_INV]) != doc["_id"]
            for value_id in ids
        ]
        self.store.delete_value_ids(list(losing))

    def remember(
        self, pairs: dict[str, DTOPair], expire_at: dict[str, datetime | None] | None = None
    ) -> None:
        """Cache DTO pairs (when the cache is enabled).

        With retention (``mongo_retention_days`` > 0) each entry gets a deadline after
        which it is re-read from MongoDB: the invocation's ``expire_at`` when known
        (read with the document, or stamped by this process: :meth:`note_expiry`),
        else the time cached plus the retention minus :data:`CACHE_EXPIRY_MARGIN_SECONDS`
        (an invocation not final when read or written expires at the earliest a full
        retention after it becomes final; the margin covers an expiry stamp in flight).

        :param dict pairs: ``{invocation_id: (InvocationDTO, CallDTO)}``.
        :param dict | None expire_at: ``{invocation_id: expire_at or None}`` as read.
        """
        if not self.cache_enabled:
            return
        now = time.time()
        with self.cache_lock:
            for inv_id, pair in pairs.items():
                self.dto_cache[inv_id] = pair
                if self.retention_seconds:
                    known = (expire_at or {}).get(inv_id)
                    self.deadlines[inv_id] = (
                        known.timestamp()
                        if known is not None
                        else now + self.retention_seconds - CACHE_EXPIRY_MARGIN_SECONDS
                    )
            if len(self.deadlines) > 2 * self.dto_cache.maxsize:  # evicted entries' deadlines
                self.deadlines = {k: v for k, v in self.deadlines.items() if k in self.dto_cache}

    # ------------------------------------------------------------------ reads
    def _pair_from_doc(self, doc: dict[str, Any]) -> DTOPair:
        from pynenc.models.call_dto import CallDTO

        inv_dto = schema.invocation_dto_from(doc)
        call = doc["call"]
        arguments = {
            arg["name"]: self.store.load_value(arg["value"]) for arg in call["serialized_arguments"]
        }
        return inv_dto, CallDTO(
            call_id=schema.call_id_from(call["call_id"]), serialized_arguments=arguments
        )

    def get(self, invocation_id: InvocationId) -> DTOPair | None:
        """The DTO pair of ``invocation_id`` (from this process's cache when known), or None.

        None too for an invocation whose retention has expired and whose pieces
        are already deleted.

        :raises TypeError: if ``invocation_id`` is not a str.
        :raises pynenc_mongo.values.StaleValueError: if argument pieces stay missing.
        """
        check_str("invocation_id", invocation_id)
        cached = self.cached(invocation_id)
        if cached is not None:
            return cached
        if invocation_id in self.unwritten:  # deferred by another thread, evicted from cache
            self.flush_deferred(named=[invocation_id])
        for attempt in range(STALE_READ_ATTEMPTS):
            doc = self.store.retry(
                self.store.collection(schema.INVOCATIONS).find_one,
                {F_APP: self.app_id, F_INV: invocation_id},
                {"_id": 0, "invocation": 1, "call": 1, schema.F_EXPIRE: 1},
            )
            if doc is None:
                return None
            try:
                pair = self._pair_from_doc(doc)
            except values.StaleValueError:
                if is_expired(doc):
                    return None
                if attempt == STALE_READ_ATTEMPTS - 1:
                    raise
                continue
            self.remember({invocation_id: pair}, {invocation_id: doc.get(schema.F_EXPIRE)})
            return pair
        return None  # pragma: no cover

    def ids_where(self, field: str, value: Any) -> Iterator[InvocationId]:
        """Invocation ids whose ``field`` equals ``value`` (a str, never an operator).

        :param str field: e.g. :data:`schema.F_PARENT`.
        :raises TypeError: if ``value`` is not a str.
        """
        check_str(field.rsplit(".", 1)[-1], value)
        docs = self.stream(
            self.store.collection(schema.INVOCATIONS),
            {F_APP: self.app_id, field: value},
            {"_id": 0, F_INV: 1},
        )
        return (doc[F_INV] for doc in docs)

    def ids_by_workflow(
        self, workflow_id: str | None = None, workflow_type_key: str | None = None
    ) -> Iterator[InvocationId]:
        """Ids of invocations in ``workflow_id`` and/or of workflow type ``workflow_type_key``.

        With neither argument, every invocation id of the app.
        """
        filter_: dict[str, Any] = {F_APP: self.app_id}
        if workflow_id:
            filter_[schema.F_WF_ID] = check_str("workflow_id", workflow_id)
        if workflow_type_key:
            filter_[schema.F_WF_TYPE] = check_str("workflow_type_key", workflow_type_key)
        docs = self.stream(self.store.collection(schema.INVOCATIONS), filter_, {"_id": 0, F_INV: 1})
        return (doc[F_INV] for doc in docs)


_live_parts: weakref.WeakSet[Invocations] = weakref.WeakSet()


def _exit_steps() -> list[tuple[at_exit.Step, float]]:
    """At exit (:func:`pynenc_mongo.at_exit.write_all`): one step per live backend with
    deferred invocations, writing all of them, and its longest retry."""
    steps: list[tuple[at_exit.Step, float]] = []
    for part in [part for part in list(_live_parts) if part.unwritten]:
        name = (
            f"{len(part.unwritten)} deferred invocation(s) of app {part.app_id!r} "
            f"({part.store.describe_target()})"
        )

        def write(_seconds_left: float, part: Invocations = part) -> None:
            part.flush_deferred(every_thread=True)

        steps.append(((name, write), at_exit.longest_retry(part.store.conf)))
    return steps


def _reset_locks_after_fork() -> None:
    """In a forked child: fresh locks (another parent thread may have held them)."""
    for part in list(_live_parts):
        part.reset_locks()


os.register_at_fork(after_in_child=_reset_locks_after_fork)
at_exit.add_source(_exit_steps)

__all__ = ["INVOCATION_ARGUMENTS_BUDGET_BYTES", "Invocations"]
