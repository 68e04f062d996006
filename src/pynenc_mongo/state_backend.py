"""``MongoStateBackend``: pynenc's ``BaseStateBackend`` on MongoDB.

Select it with ``state_backend_cls: MongoStateBackend`` in the pynenc config, or
with the builder's ``.mongo(url=...)``. The storage layout is in
:mod:`pynenc_mongo.schema`; settings in :mod:`pynenc_mongo.config`.

Works with pynenc 0.2.3 (the specified API, including the two
``wait_for_*_async_operations`` methods) and pynenc 0.4.x (which adds
``get_invocations_by_parent_event``).

Design notes:

* ``InvocationDTO`` and ``CallDTO`` are frozen (an invocation id's DTOs never
  change once stored), so each process keeps the DTOs it has written or read in
  a bounded LRU cache and never re-reads or re-writes them; a batch upsert is a
  single unordered ``insert_many`` that skips invocations already stored.
* pynenc stores each new invocation from its constructor, one by one, then
  upserts the whole batch again when it registers them (``parallelize`` builds
  N invocations, then registers the N together), always before routing them.
  New invocations are therefore deferred, per thread: they are written, all in
  one ``insert_many``, by the next upsert call naming one of them (the
  registration, which returns once they are durable), or before the same
  thread's next MongoDB operation of any kind, whichever comes first;
  ``wait_for_all_async_operations``, ``purge``, ``close`` and interpreter exit
  write every thread's. Registering N invocations costs one operation, not N + 1.
* ``add_history``/``add_histories`` build the records the way pynenc's base class
  does, but write all of them in one ``insert_many`` through a history writer
  (synchronous, or asynchronous with per-invocation tracking: see
  :mod:`pynenc_mongo.async_writes`). No thread is created per record.
* Reads that could miss this process's own pending history writes wait for them.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import re
import threading
import weakref
from collections.abc import Iterator
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from cachetools import LRUCache
from pymongo.collection import Collection
from pymongo.errors import PyMongoError
from pynenc.invocation.status import InvocationStatus
from pynenc.state_backend.base_state_backend import BaseStateBackend, InvocationHistory

from pynenc_mongo import aio, schema, values
from pynenc_mongo.async_writes import HistoryWriter, make_history_writer
from pynenc_mongo.config import (
    ConfigStateBackendMongo,
    check_unknown_settings,
    describe,
)
from pynenc_mongo.errors import (
    MAX_DOCUMENT_BYTES,
    MongoLimitError,
    is_transient,
    translate,
    translate_errors,
    with_retry,
    with_retry_async,
)
from pynenc_mongo.operations import (
    find_all,
    insert_if_absent,
    iter_resumable,
    upsert_retrying_duplicate,
)
from pynenc_mongo.schema import F_APP, F_INV, F_TS_US
from pynenc_mongo.store import (
    STALE_READ_ATTEMPTS,
    MongoStore,
    at_path,
    check_document_size,
    is_expired,
)
from pynenc_mongo.urls import SCHEMES, MongoUrlError, strip_password

if TYPE_CHECKING:
    from pynenc.app import Pynenc
    from pynenc.app_info import AppInfo
    from pynenc.identifiers.invocation_id import InvocationId
    from pynenc.identifiers.task_id import TaskId
    from pynenc.invocation.dist_invocation import DistributedInvocation
    from pynenc.invocation.status import InvocationStatusRecord
    from pynenc.models.call_dto import CallDTO
    from pynenc.models.invocation_dto import InvocationDTO
    from pynenc.runner.runner_context import RunnerContext
    from pynenc.workflow.workflow_identity import WorkflowIdentity

logger = logging.getLogger("pynenc_mongo")

#: Workflow-data values share one document per workflow, so they are inlined
#: only up to this many bytes (at most ``mongo_inline_value_max_bytes``).
WORKFLOW_INLINE_MAX_BYTES = 64 * 1024
#: Bytes of inline argument values one invocation document may hold; beyond it
#: the largest arguments go to pieces, so the document stays far below 16 MiB.
INVOCATION_ARGUMENTS_BUDGET_BYTES = 8 * 1024 * 1024
#: Longest workflow-data key (bytes of its encoded field name): the key is a field
#: name in the workflow's single document, which MongoDB caps at 16 MiB.
MAX_DATA_KEY_BYTES = 8 * 1024 * 1024
#: Longest text of a runner-context search sent to the server as a pattern;
#: longer searches are narrowed on a slice and checked exactly here.
MAX_SEARCH_PATTERN_CHARS = 1000
#: Deepest runner-context parent chain followed (guards against loops).
MAX_RUNNER_DEPTH = 64
_SECRET_KEY = re.compile(
    r"pass(word)?|passwd|pwd|secret|token|credential|api_?key|private_?key|auth(?!ors?\b)|"
    r"(^|_)key$|cookie|session|signature",
    re.IGNORECASE,
)

DTOPair = tuple["InvocationDTO", "CallDTO"]


class MongoStateBackend(BaseStateBackend[Any, Any]):
    """pynenc state backend that keeps every invocation's state in MongoDB.

    :param Pynenc app: the pynenc app; its config selects the server
        (:class:`~pynenc_mongo.config.ConfigStateBackendMongo`).
    :raises pynenc_mongo.config.MongoConfigError: at construction, for a bad setting.

    Connection or authentication failures raise
    :class:`~pynenc_mongo.errors.MongoUnavailableError` /
    :class:`~pynenc_mongo.errors.MongoAuthenticationError` naming the host; the
    app may retry later without restarting.
    """

    def __init__(self, app: Pynenc) -> None:
        super().__init__(app)
        conf = self.conf  # validates every setting now, with errors naming the setting
        if not isinstance(app.app_id, str):
            raise TypeError(f"app_id: expected a str, got {type(app.app_id).__name__}")
        self._app_id: str = app.app_id
        self._store = MongoStore(conf, app.app_id, before_operation=self._before_operation)
        self._dto_cache: LRUCache[str, DTOPair] = LRUCache(
            maxsize=max(conf.mongo_invocation_cache_size, 1)
        )
        self._cache_enabled = conf.mongo_invocation_cache_size > 0
        self._cache_lock = threading.Lock()
        self._writer_lock = threading.Lock()
        self._writer: HistoryWriter | None = None
        # Deferred invocation inserts (see the module docstring): per thread ident,
        # invocation id -> (document, value ids of its large-argument pieces); the
        # ids deferred or being written; the lock held while writing (so a flush
        # returns only once earlier deferred inserts it depends on are durable).
        self._deferred: dict[int, dict[str, tuple[dict[str, Any], list[str]]]] = {}
        self._unwritten: set[str] = set()
        self._deferred_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        _live_backends.add(self)
        self._app_info_lock = threading.RLock()
        self._pending_app_info: AppInfo | None = None
        self._local = threading.local()

    # ------------------------------------------------------------------ plumbing
    @cached_property
    def conf(self) -> ConfigStateBackendMongo:
        """The resolved settings (cistell: config values, files, env vars).

        :raises pynenc_mongo.config.MongoConfigError: for a bad value or a
            misspelt ``mongo_*`` setting (see :func:`~pynenc_mongo.config.check_unknown_settings`).
        """
        check_unknown_settings(self.app.config_values)
        return ConfigStateBackendMongo(
            config_values=self.app.config_values,
            config_filepath=self.app.config_filepath,
        )

    def describe_target(self) -> str:
        """Where this backend writes: redacted URL and database (for messages)."""
        return describe(self.conf)

    def __repr__(self) -> str:
        return f"<MongoStateBackend app_id={self._app_id!r} {self.describe_target()}>"

    def _before_operation(self) -> None:
        """Run before every MongoDB operation (:class:`~pynenc_mongo.store.MongoStore`'s hook):
        store the app info if an earlier attempt failed (the server was unreachable when
        pynenc created the backend, see :meth:`store_app_info`), then this thread's
        deferred inserts."""
        if self._pending_app_info is not None and not getattr(self._local, "storing", False):
            self._store_pending_app_info()
        if self._deferred.get(threading.get_ident()):  # this thread's deferred inserts first
            self._flush_deferred()

    @property
    def store(self) -> MongoStore:
        """The per-app store this backend reads and writes through."""
        return self._store

    def _collection(self, logical: str) -> Collection[dict[str, Any]]:
        """The physical collection for ``logical``, with its indexes ensured (after the
        deferred work of :meth:`_before_operation`)."""
        return self._store.collection(logical)

    def _physical_collection(self, logical: str) -> Collection[dict[str, Any]]:
        """:meth:`_collection` without the deferred writes that precede an operation."""
        return self._store.physical_collection(logical)

    @property
    def history_writer(self) -> HistoryWriter:
        """The history writer of this backend (created on first use)."""
        writer = self._writer
        if writer is None or writer.is_stale():
            with self._writer_lock:
                writer = self._writer
                if writer is None or writer.is_stale():
                    writer = make_history_writer(self)
                    self._writer = writer
        return writer

    def collection(self, logical: str) -> Collection[dict[str, Any]]:
        """Public access to a physical collection (for the history writer and tools)."""
        return self._collection(logical)

    def collection_name(self, logical: str) -> str:
        """The physical name of a logical collection (prefix applied)."""
        return self._store.collection_name(logical)

    @property
    def database_name(self) -> str:
        """The database this backend uses (``mongo_database``, URL path or ``pynenc``)."""
        return self._store.database_name

    @property
    def app_id(self) -> str:
        """The app whose documents this backend reads and writes."""
        return self._app_id

    def close(self) -> None:
        """Write deferred invocations, flush pending asynchronous writes and stop the
        writer (clients stay shared)."""
        self._flush_deferred(every_thread=True)
        with self._writer_lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    # ------------------------------------------------------------------ purge
    @translate_errors
    def purge(self) -> None:
        """Delete every document of this app (and only this app) in every collection."""
        self.wait_for_all_async_operations()
        self._store.purge(schema.STATE_COLLECTIONS)
        with self._cache_lock:
            self._dto_cache.clear()
        self._runner_context_cache.clear()

    # ------------------------------------------------------------------ values
    # Large values live in the store layer (shared with every component).
    def _prepare_value(
        self, owner: str, text: str, limit: int | None = None, force_pieces: bool = False
    ) -> values.PreparedValue:
        return self._store.prepare_value(owner, text, limit, force_pieces)

    def _prepare_only(
        self, owner: str, text: str, limit: int | None = None, force_pieces: bool = False
    ) -> values.PreparedValue:
        return self._store.prepare_only(owner, text, limit, force_pieces)

    def _insert_pieces(self, pieces: list[dict[str, Any]]) -> None:
        self._store.insert_pieces(pieces)

    def _delete_pieces(self, stored: Any) -> None:
        self._store.delete_pieces(stored)

    def _delete_value_ids(self, value_ids: list[str | None]) -> None:
        self._store.delete_value_ids(value_ids)

    def _load_value(self, stored: Any) -> str:
        return self._store.load_value(stored)

    _expired = staticmethod(is_expired)

    def _read_value(self, logical: str, filter_: dict[str, Any], path: str) -> tuple[bool, str]:
        return self._store.read_value(logical, filter_, path)

    def _write_value(
        self,
        logical: str,
        filter_: dict[str, Any],
        path: str,
        owner: str,
        text: str,
        limit: int | None = None,
    ) -> None:
        self._store.write_value(logical, filter_, path, owner, text, limit)

    _check_size = staticmethod(check_document_size)

    # ------------------------------------------------------------------ invocations
    @translate_errors
    def _upsert_invocations(self, entries: list[tuple[InvocationDTO, CallDTO]]) -> None:
        """Store invocation/call DTO pairs: one ``insert_many`` for the whole batch.

        Pairs whose invocation id this process already stored are skipped (the
        DTOs are immutable); others are inserted unless present (idempotent: the
        document stored first wins, and the losing writer deletes the large-value
        pieces it had written for its copy). Argument values go inline up to
        ``mongo_inline_value_max_bytes`` each and
        :data:`INVOCATION_ARGUMENTS_BUDGET_BYTES` together; the largest ones
        beyond that are stored as pieces.

        :raises pynenc_mongo.errors.MongoLimitError: if an invocation document
            would still pass 16 MiB (huge ids, task or argument names).
        """
        fresh: dict[str, DTOPair] = {}
        registering: list[str] = []
        with self._cache_lock, self._deferred_lock:
            for inv_dto, call_dto in entries:
                inv_id = inv_dto.invocation_id
                _check_str("invocation_id", inv_id)
                if inv_id in self._unwritten:
                    registering.append(inv_id)
                elif inv_id not in self._dto_cache and inv_id not in fresh:
                    fresh[inv_id] = (inv_dto, call_dto)
        if fresh:
            deferred: dict[str, tuple[dict[str, Any], list[str]]] = {}
            pieces: list[dict[str, Any]] = []
            for key, (inv_dto, call_dto) in fresh.items():
                arguments = self._prepare_arguments(key, call_dto.serialized_arguments)
                doc = schema.invocation_doc(
                    self._app_id,
                    inv_dto,
                    call_dto,
                    [{"name": name, "value": prep.stored} for name, prep in arguments],
                )
                doc["_id"] = ObjectId()  # client-made: tells our retried insert from a rival's
                self._check_size(doc, f"invocation {key[:80]!r}")
                ids = [values.reference_id(prep.stored) for _, prep in arguments]
                deferred[key] = (doc, [i for i in ids if i is not None])
                pieces.extend(p for _, prep in arguments for p in prep.pieces)
            self._insert_pieces(pieces)  # pieces before the documents that point at them
            self._remember(fresh)
            with self._deferred_lock:
                self._deferred.setdefault(threading.get_ident(), {}).update(deferred)
                self._unwritten.update(deferred)
        if registering or (fresh and not self._cache_enabled):
            self._flush_deferred(named=registering)

    @translate_errors
    def _flush_deferred(
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
        if not self._unwritten or not (named or every_thread or self._deferred.get(me)):
            return
        with self._flush_lock:
            with self._deferred_lock:
                if every_thread:
                    taken = {k: v for per in self._deferred.values() for k, v in per.items()}
                    self._deferred.clear()
                else:
                    taken = self._deferred.pop(me, {})
                    for other in (named or []) if self._deferred else []:
                        for per in self._deferred.values():
                            if other in per:
                                taken[other] = per.pop(other)
                                break
                    for ident in [i for i, per in self._deferred.items() if not per]:
                        del self._deferred[ident]
            if not taken:
                return
            docs = [doc for doc, _ in taken.values()]
            doc_value_ids = [ids for _, ids in taken.values()]
            collection = self._physical_collection(schema.INVOCATIONS)
            try:
                duplicates = with_retry(insert_if_absent, collection, docs)
            except PyMongoError as exc:
                if is_transient(exc):  # maybe not applied: keep them deferred, retry later
                    with self._deferred_lock:
                        self._deferred.setdefault(me, {}).update(taken)
                else:  # surely not stored: the pieces are unused
                    with self._deferred_lock:
                        self._unwritten.difference_update(taken)
                    with self._cache_lock:
                        for inv_id in taken:
                            self._dto_cache.pop(inv_id, None)
                    self._delete_value_ids([i for ids in doc_value_ids for i in ids])
                raise
            with self._deferred_lock:
                self._unwritten.difference_update(taken)
        with_pieces = [i for i in duplicates if doc_value_ids[i]]  # others have nothing to drop
        if with_pieces:
            self._drop_losing_pieces(
                collection, [docs[i] for i in with_pieces], [doc_value_ids[i] for i in with_pieces]
            )

    def _prepare_arguments(
        self, owner: str, serialized: dict[str, str]
    ) -> list[tuple[str, values.PreparedValue]]:
        """Prepare an invocation's arguments within the per-document budget.

        :return: ``[(name, PreparedValue)]`` in argument order; nothing written yet.
        """
        prepared = [(name, self._prepare_only(owner, text)) for name, text in serialized.items()]
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
            prepared[pos] = (name, self._prepare_only(owner, serialized[name], force_pieces=True))
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
        stored = find_all(
            collection,
            {F_APP: self._app_id, F_INV: {"$in": [doc[F_INV] for doc in docs]}},
            {F_INV: 1, "_id": 1},
        )
        winner = {doc[F_INV]: doc["_id"] for doc in stored}
        losing = [
            value_id
            for doc, ids in zip(docs, value_ids, strict=True)
            if winner.get(doc[F_INV]) != doc["_id"]
            for value_id in ids
        ]
        self._delete_value_ids(list(losing))

    def _remember(self, pairs: dict[str, DTOPair]) -> None:
        if self._cache_enabled:
            with self._cache_lock:
                for inv_id, pair in pairs.items():
                    self._dto_cache[inv_id] = pair

    def _pair_from_doc(self, doc: dict[str, Any]) -> DTOPair:
        from pynenc.models.call_dto import CallDTO

        inv_dto = schema.invocation_dto_from(doc)
        call = doc["call"]
        arguments = {
            arg["name"]: self._load_value(arg["value"]) for arg in call["serialized_arguments"]
        }
        return inv_dto, CallDTO(
            call_id=schema.call_id_from(call["call_id"]), serialized_arguments=arguments
        )

    @translate_errors
    def _get_invocation(self, invocation_id: InvocationId) -> tuple[InvocationDTO, CallDTO] | None:
        """The DTO pair of ``invocation_id`` (from this process's cache when known), or None.

        None too for an invocation whose retention has expired and whose pieces
        are already deleted. :raises TypeError: if ``invocation_id`` is not a str.
        """
        _check_str("invocation_id", invocation_id)
        with self._cache_lock:
            cached = self._dto_cache.get(invocation_id)
        if cached is not None:
            return cached
        if invocation_id in self._unwritten:  # deferred by another thread, evicted from cache
            self._flush_deferred(named=[invocation_id])
        for attempt in range(STALE_READ_ATTEMPTS):
            doc = with_retry(
                self._collection(schema.INVOCATIONS).find_one,
                {F_APP: self._app_id, F_INV: invocation_id},
                {"_id": 0, "invocation": 1, "call": 1, schema.F_EXPIRE: 1},
            )
            if doc is None:
                return None
            try:
                pair = self._pair_from_doc(doc)
            except values.StaleValueError:
                if self._expired(doc):
                    return None
                if attempt == STALE_READ_ATTEMPTS - 1:
                    raise
                continue
            self._remember({invocation_id: pair})
            return pair
        return None  # pragma: no cover

    def _ids_where(self, field: str, value: Any) -> Iterator[InvocationId]:
        """Invocation ids whose ``field`` equals ``value`` (a str, never an operator)."""
        _check_str(field.rsplit(".", 1)[-1], value)
        docs = find_all(
            self._collection(schema.INVOCATIONS),
            {F_APP: self._app_id, field: value},
            {"_id": 0, F_INV: 1},
        )
        return iter([doc[F_INV] for doc in docs])

    @translate_errors
    def get_child_invocations(self, parent_invocation_id: InvocationId) -> Iterator[InvocationId]:
        """Ids of invocations whose ``parent_invocation_id`` is the given one (maybe none)."""
        return self._ids_where(schema.F_PARENT, parent_invocation_id)

    @translate_errors
    def get_invocations_by_parent_event(self, parent_event_id: str) -> Iterator[InvocationId]:
        """Ids of invocations created in response to ``parent_event_id`` (pynenc >= 0.4)."""
        return self._ids_where(schema.F_PARENT_EVENT, parent_event_id)

    @translate_errors
    def get_invocation_ids_by_workflow(
        self, workflow_id: str | None = None, workflow_type_key: str | None = None
    ) -> Iterator[InvocationId]:
        """Ids of invocations in ``workflow_id`` and/or of workflow type ``workflow_type_key``.

        With neither argument, every invocation id of the app.
        """
        filter_: dict[str, Any] = {F_APP: self._app_id}
        if workflow_id:
            filter_[schema.F_WF_ID] = _check_str("workflow_id", workflow_id)
        if workflow_type_key:
            filter_[schema.F_WF_TYPE] = _check_str("workflow_type_key", workflow_type_key)
        docs = find_all(self._collection(schema.INVOCATIONS), filter_, {"_id": 0, F_INV: 1})
        return iter([doc[F_INV] for doc in docs])

    # ------------------------------------------------------------------ history
    def add_history(
        self,
        invocation_id: InvocationId,
        status_record: InvocationStatusRecord,
        runner_context: RunnerContext,
    ) -> None:
        """Record one status change (pynenc's contract; no thread per record).

        Written synchronously or scheduled, per ``mongo_history_write_mode``.
        """
        self.store_runner_context(runner_context)
        history = InvocationHistory(
            invocation_id=invocation_id,
            status_record=status_record,
            runner_context_id=runner_context.runner_id,
        )
        self._add_histories([invocation_id], history)

    def add_histories(
        self,
        invocations: list[DistributedInvocation[Any, Any]],
        status_record: InvocationStatusRecord,
        runner_context: RunnerContext,
    ) -> None:
        """Record the same status change for many invocations in one ``insert_many``.

        ``registered_by_inv_id`` is the parent invocation for REGISTERED records,
        as in pynenc's base class.
        """
        self.store_runner_context(runner_context)
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
                runner_context_id=runner_context.runner_id,
                registered_by_inv_id=registered_by,
            )
            docs.append(schema.history_doc(self._app_id, invocation.invocation_id, history))
        self._write_history_docs(docs)

    def _add_histories(
        self, invocation_ids: list[InvocationId], invocation_history: InvocationHistory
    ) -> None:
        """Store ``invocation_history`` once for each id (one ``insert_many``)."""
        docs = [
            schema.history_doc(self._app_id, inv_id, invocation_history)
            for inv_id in invocation_ids
        ]
        self._write_history_docs(docs)

    def _write_history_docs(self, docs: list[dict[str, Any]]) -> None:
        if not docs:
            return
        for doc in docs:  # ids become query values: a dict would act as an operator
            _check_str("invocation_id", doc[F_INV])
        self._flush_deferred()  # the invocations are stored before their history
        retention_days = self.conf.mongo_retention_days
        if retention_days > 0:
            for doc in docs:
                if InvocationStatus(doc["status"]).is_final():
                    doc[schema.F_EXPIRE] = doc["ts"] + timedelta(days=retention_days)
        writer = self.history_writer
        writer.submit(docs)
        if retention_days > 0:
            for doc in docs:
                if schema.F_EXPIRE in doc:
                    # Earlier records of the invocation must be stored before they
                    # can be stamped: wait for them (asynchronous mode only blocks here).
                    writer.wait(doc[F_INV])
                    self.expire_invocation(doc[F_INV], doc[schema.F_EXPIRE])

    @translate_errors
    def write_history_now(self, docs: list[dict[str, Any]]) -> None:
        """Insert history documents now (idempotent: client-made ``_id``)."""
        with_retry(insert_if_absent, self._collection(schema.HISTORY), docs)

    @translate_errors
    def expire_invocation(self, invocation_id: str, expire_at: datetime) -> None:
        """Set ``expire_at`` on every document owned by a finished invocation.

        Used when ``mongo_retention_days`` > 0; MongoDB's TTL monitor then deletes
        them after ``expire_at`` (MongoDB manual, "Expire Data from Collections by
        Setting TTL"). Covers the invocation, its history, result, exception,
        large-value pieces and, when it is a workflow, the workflow's documents.
        """
        _check_str("invocation_id", invocation_id)
        # History records of this invocation still queued in this process must
        # be stored first, or they would miss the update below and never expire.
        self.wait_for_invocation_async_operations(invocation_id)
        update = {"$set": {schema.F_EXPIRE: expire_at}}
        app = self._app_id
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
            with_retry(self._collection(logical).update_many, filter_, update)

    @translate_errors
    def _get_history(self, invocation_id: InvocationId) -> list[InvocationHistory]:
        """History of one invocation in time order (exact to the microsecond).

        Waits first for this process's pending writes for that invocation.
        """
        _check_str("invocation_id", invocation_id)
        self.wait_for_invocation_async_operations(invocation_id)
        docs = find_all(
            self._collection(schema.HISTORY),
            {F_APP: self._app_id, F_INV: invocation_id},
            None,
            [(F_TS_US, 1), ("_id", 1)],
        )
        return [schema.history_from(doc) for doc in docs]

    def wait_for_invocation_async_operations(self, invocation_id: str) -> None:
        """Block until this process's history writes for ``invocation_id`` issued so
        far are durable.

        :raises pynenc_mongo.errors.AsyncOperationError: naming the invocation and
            the cause, if one of them failed for good.
        """
        writer = self._writer
        if writer is not None:
            writer.wait(invocation_id)

    def wait_for_all_async_operations(self) -> None:
        """Block until every history write of this process issued so far is durable.

        :raises pynenc_mongo.errors.AsyncOperationError: if any failed for good.
        """
        self._flush_deferred(every_thread=True)
        writer = self._writer
        if writer is not None:
            writer.wait_all()

    def _time_filter(self, start_time: datetime, end_time: datetime) -> dict[str, Any]:
        return {
            F_APP: self._app_id,
            F_TS_US: {"$gte": schema.to_us(start_time), "$lte": schema.to_us(end_time)},
        }

    @translate_errors
    def iter_history_in_timerange(
        self, start_time: datetime, end_time: datetime, batch_size: int = 100
    ) -> Iterator[list[InvocationHistory]]:
        """History entries with ``start_time <= timestamp <= end_time``, in time order,
        in lists of at most ``batch_size`` (one server cursor, no skip/limit paging;
        after a lost connection it is re-opened after the last entry read).
        """
        self.wait_for_all_async_operations()
        cursor = iter_resumable(
            self._collection(schema.HISTORY),
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

    @translate_errors
    def iter_invocations_in_timerange(
        self, start_time: datetime, end_time: datetime, batch_size: int = 100
    ) -> Iterator[list[InvocationId]]:
        """Distinct ids of invocations with history in the range, in order of their
        first entry there, in lists of at most ``batch_size``.
        """
        self.wait_for_all_async_operations()
        cursor = iter_resumable(
            self._collection(schema.HISTORY),
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

    # ------------------------------------------------------------------ results
    def _set_invocation_value(self, logical: str, invocation_id: str, text: str) -> None:
        """Store (or replace) the value of ``invocation_id`` in ``results``/``exceptions``."""
        _check_str("invocation_id", invocation_id)
        filter_ = {F_APP: self._app_id, F_INV: invocation_id}
        self._write_value(logical, filter_, "value", invocation_id, text)

    def _get_invocation_value(self, logical: str, invocation_id: str, what: str) -> str:
        """The value of ``invocation_id`` in ``results``/``exceptions``.

        :raises KeyError: ``"<what> for invocation <id> not found"`` (pynenc's contract).
        """
        _check_str("invocation_id", invocation_id)
        filter_ = {F_APP: self._app_id, F_INV: invocation_id}
        found, text = self._read_value(logical, filter_, "value")
        if not found:
            raise KeyError(f"{what} for invocation {invocation_id} not found")
        return text

    @translate_errors
    def _set_result(self, invocation_id: InvocationId, serialized_result: str) -> None:
        """Store (or replace) the serialized result of ``invocation_id``."""
        self._set_invocation_value(schema.RESULTS, invocation_id, serialized_result)

    @translate_errors
    def _get_result(self, invocation_id: InvocationId) -> str:
        """The serialized result. :raises KeyError: if none is stored (pynenc's contract)."""
        return self._get_invocation_value(schema.RESULTS, invocation_id, "Result")

    @translate_errors
    def _set_exception(self, invocation_id: InvocationId, serialized_exception: str) -> None:
        """Store (or replace) the serialized exception of ``invocation_id``."""
        self._set_invocation_value(schema.EXCEPTIONS, invocation_id, serialized_exception)

    @translate_errors
    def _get_exception(self, invocation_id: InvocationId) -> str:
        """The serialized exception. :raises KeyError: if none is stored."""
        return self._get_invocation_value(schema.EXCEPTIONS, invocation_id, "Exception")

    # ------------------------------------------------------------------ workflows
    @translate_errors
    def set_workflow_data(self, workflow_identity: WorkflowIdentity, key: str, value: Any) -> None:
        """Set ``key`` (any string) of a workflow's data to ``value`` (serialized by
        the app's client data store), one ``$set`` upsert on the workflow's document.

        :raises TypeError: if ``key`` is not a string.
        :raises pynenc_mongo.errors.MongoLimitError: if the key is longer than
            :data:`MAX_DATA_KEY_BYTES`.
        """
        field = self._data_field(key)
        serialized = self.app.client_data_store.serialize(value)
        workflow_id = _check_str("workflow_id", workflow_identity.workflow_id)
        self._write_value(
            schema.WORKFLOW_DATA,
            {F_APP: self._app_id, "workflow_id": workflow_id},
            field,
            f"workflow:{workflow_id}",
            serialized,
            limit=WORKFLOW_INLINE_MAX_BYTES,
        )

    @translate_errors
    def get_workflow_data(
        self, workflow_identity: WorkflowIdentity, key: str, default: Any = None
    ) -> Any:
        """The value stored under ``key``, or ``default`` when there is none.

        :raises TypeError: if ``key`` is not a string.
        """
        field = self._data_field(key)
        found, text = self._read_value(
            schema.WORKFLOW_DATA,
            {
                F_APP: self._app_id,
                "workflow_id": _check_str("workflow_id", workflow_identity.workflow_id),
            },
            field,
        )
        if not found:
            return default
        return self.app.client_data_store.deserialize(text)

    @staticmethod
    def _data_field(key: str) -> str:
        """The field path of workflow-data ``key`` (see :func:`schema.encode_data_key`).

        :raises TypeError: if ``key`` is not a str.
        :raises pynenc_mongo.errors.MongoLimitError: if longer than :data:`MAX_DATA_KEY_BYTES`.
        """
        encoded = schema.encode_data_key(key)
        size = len(encoded.encode("utf-8"))
        if size > MAX_DATA_KEY_BYTES:
            raise MongoLimitError(
                f"workflow data key of {size} bytes is longer than the limit of "
                f"{MAX_DATA_KEY_BYTES} bytes: keys are field names in the workflow's one "
                f"document, which MongoDB caps at {MAX_DOCUMENT_BYTES} bytes (16 MiB)"
            )
        return "data." + encoded

    @translate_errors
    def store_workflow_run(self, workflow_identity: WorkflowIdentity) -> None:
        """Record a workflow run (idempotent upsert).

        :raises pynenc_mongo.errors.MongoLimitError: if the run's document would pass 16 MiB.
        """
        doc = schema.workflow_run_doc(self._app_id, workflow_identity)
        _check_str("workflow_id", workflow_identity.workflow_id)
        self._check_size(doc, f"workflow run {workflow_identity.workflow_id[:80]!r}")
        upsert_retrying_duplicate(
            self._collection(schema.WORKFLOW_RUNS).update_one,
            {F_APP: self._app_id, "workflow_id": workflow_identity.workflow_id},
            {"$set": doc},
            upsert=True,
        )

    @translate_errors
    def get_all_workflow_types(self) -> Iterator[TaskId]:
        """Distinct workflow types (task ids) that have runs."""
        from pynenc.identifiers.task_id import TaskId

        keys: list[str] = with_retry(
            self._collection(schema.WORKFLOW_RUNS).distinct,
            "workflow_type.key",
            {F_APP: self._app_id},
        )
        return iter([TaskId.from_key(key) for key in sorted(keys)])

    def _workflow_runs(self, filter_: dict[str, Any]) -> Iterator[WorkflowIdentity]:
        """Workflow runs matching ``filter_``, newest first.

        Newest first, to the second (``_id`` is the ObjectId made when the run was first
        stored): pynenc's monitor shows the first run as a type's "latest run" and
        charts the first three.
        """
        docs = find_all(
            self._collection(schema.WORKFLOW_RUNS), filter_, {"_id": 0}, sort=[("_id", -1)]
        )
        return iter([schema.workflow_run_from(doc) for doc in docs])

    @translate_errors
    def get_all_workflow_runs(self) -> Iterator[WorkflowIdentity]:
        """Every workflow run of the app, newest first."""
        return self._workflow_runs({F_APP: self._app_id})

    @translate_errors
    def get_workflow_runs(self, workflow_type: TaskId) -> Iterator[WorkflowIdentity]:
        """Workflow runs of one workflow type, newest first."""
        key = _check_str("workflow_type.key", workflow_type.key)
        return self._workflow_runs({F_APP: self._app_id, "workflow_type.key": key})

    @translate_errors
    def store_workflow_sub_invocation(
        self, parent_workflow_id: InvocationId, sub_invocation_id: InvocationId
    ) -> None:
        """Record that ``sub_invocation_id`` runs inside ``parent_workflow_id`` (idempotent)."""
        key = {
            F_APP: self._app_id,
            "workflow_id": _check_str("parent_workflow_id", parent_workflow_id),
            "sub_invocation_id": _check_str("sub_invocation_id", sub_invocation_id),
        }
        self._check_size(key, f"workflow sub-invocation {sub_invocation_id[:80]!r}")
        upsert_retrying_duplicate(
            self._collection(schema.WORKFLOW_SUB_INVOCATIONS).update_one,
            key,
            {"$setOnInsert": key},
            upsert=True,
        )

    @translate_errors
    def get_workflow_sub_invocations(self, workflow_id: InvocationId) -> Iterator[InvocationId]:
        """Ids of the invocations that run inside ``workflow_id``."""
        docs = find_all(
            self._collection(schema.WORKFLOW_SUB_INVOCATIONS),
            {F_APP: self._app_id, "workflow_id": _check_str("workflow_id", workflow_id)},
            {"_id": 0, "sub_invocation_id": 1},
        )
        return iter([doc["sub_invocation_id"] for doc in docs])

    # ------------------------------------------------------------------ app info
    def _safe_config_values(self, config_values: dict[str, Any] | None) -> dict[str, Any] | None:
        """Config values without secrets (see :func:`_without_secrets`)."""
        if config_values is None:
            return None
        safe = _without_secrets(config_values)
        assert isinstance(safe, dict)
        return safe

    @translate_errors
    def store_app_info(self, app_info: AppInfo) -> None:
        """Store the app's info for discovery, with secrets removed (see
        :meth:`_safe_config_values`); sets, tuples and bytes in config values round-trip.

        pynenc calls this when it creates the backend. If the server cannot be
        reached then, the error is raised (naming the host) and the info is kept
        to be stored by the next operation that reaches the server, so an app
        that retries later is discoverable without restarting.

        :raises pynenc_mongo.errors.MongoUnavailableError: server unreachable.
        """
        doc = schema.app_info_doc(app_info, self._safe_config_values(app_info.config_values))
        self._check_size(doc, f"app info of {app_info.app_id[:80]!r}")
        with self._app_info_lock:
            self._pending_app_info = app_info
            self._local.storing = True
            try:
                upsert_retrying_duplicate(
                    self._collection(schema.APP_INFOS).replace_one,
                    {F_APP: app_info.app_id},
                    doc,
                    upsert=True,
                )
            finally:
                self._local.storing = False
            self._pending_app_info = None

    def _store_pending_app_info(self) -> None:
        """Store the app info whose first store failed (see :meth:`store_app_info`)."""
        pending = self._pending_app_info
        if pending is not None:
            self.store_app_info(pending)

    @translate_errors
    def get_app_info(self) -> AppInfo:
        """This app's stored info. :raises KeyError: if none is stored."""
        doc = with_retry(self._collection(schema.APP_INFOS).find_one, {F_APP: self._app_id})
        if doc is None:
            raise KeyError(f"App info for {self._app_id} not found")
        return schema.app_info_from(doc)

    @staticmethod
    def discover_app_infos() -> dict[str, AppInfo]:
        """Every app stored in the database that the default configuration points at.

        The default configuration is pynenc's: env vars (``PYNENC__MONGO_URL``, ...),
        the file named by ``PYNENC__FILEPATH`` and ``[tool.pynenc]`` in
        ``./pyproject.toml``.

        :return: ``{app_id: AppInfo}``.
        :raises ValueError: when no MongoDB URL is configured there (pynenc's
            monitor catches ``ValueError``), or a setting is invalid.
        :raises pynenc_mongo.errors.MongoUnavailableError: server unreachable.
        """
        from pynenc_mongo.discovery import discover_app_infos

        return discover_app_infos()

    # ------------------------------------------------------------------ runner contexts
    @translate_errors
    def _store_runner_context(self, runner_context: RunnerContext) -> None:
        """Store a runner context (its parent is stored by the base class, by id).

        :raises pynenc_mongo.errors.MongoLimitError: if its document would pass 16 MiB.
        """
        runner_id = _check_str("runner_id", runner_context.runner_id)
        doc = schema.runner_context_doc(self._app_id, runner_context)
        self._check_size(doc, f"runner context {runner_id[:80]!r}")
        upsert_retrying_duplicate(
            self._collection(schema.RUNNER_CONTEXTS).update_one,
            {F_APP: self._app_id, "runner_id": runner_id},
            {"$set": doc},
            upsert=True,
        )

    def _context_from(
        self, doc: dict[str, Any], seen: frozenset[str] = frozenset()
    ) -> RunnerContext:
        """Build a ``RunnerContext`` with its chain of parents.

        A parent that is not stored, or a chain that loops back or is deeper
        than :data:`MAX_RUNNER_DEPTH`, ends the chain (logged as a warning).
        """
        from pynenc.runner.runner_context import RunnerContext

        parent = None
        parent_id = doc.get("parent_runner_id")
        runner_id = doc["runner_id"]
        if parent_id:
            chain = seen | {runner_id}
            if parent_id in chain or len(chain) >= MAX_RUNNER_DEPTH:
                logger.warning(
                    "runner context %s: parent chain loops or is too deep at %s; cut there",
                    str(runner_id)[:200],
                    str(parent_id)[:200],
                )
            else:
                parent = self._runner_context_cache.get(parent_id)
                if parent is None:
                    parent_doc = with_retry(
                        self._collection(schema.RUNNER_CONTEXTS).find_one,
                        {F_APP: self._app_id, "runner_id": parent_id},
                        {"_id": 0},
                    )
                    if parent_doc is None:
                        logger.warning(
                            "runner context %s names parent %s, which is not stored",
                            str(runner_id)[:200],
                            str(parent_id)[:200],
                        )
                    else:
                        parent = self._context_from(parent_doc, chain)
        return RunnerContext(
            runner_cls=doc["runner_cls"],
            runner_id=runner_id,
            parent_ctx=parent,
            pid=doc["pid"],
            hostname=doc["hostname"],
            thread_id=doc["thread_id"],
        )

    @translate_errors
    def _get_runner_context(self, runner_id: str) -> RunnerContext | None:
        """The stored runner context, or None."""
        doc = with_retry(
            self._collection(schema.RUNNER_CONTEXTS).find_one,
            {F_APP: self._app_id, "runner_id": _check_str("runner_id", runner_id)},
            {"_id": 0},
        )
        return self._context_from(doc) if doc else None

    @translate_errors
    def _get_runner_contexts(self, runner_ids: list[str]) -> list[RunnerContext]:
        """The stored runner contexts among ``runner_ids`` (missing ones are skipped)."""
        if not runner_ids:
            return []
        ids = [_check_str("runner_id", runner_id) for runner_id in runner_ids]
        docs = find_all(
            self._collection(schema.RUNNER_CONTEXTS),
            {F_APP: self._app_id, "runner_id": {"$in": ids}},
            {"_id": 0},
        )
        return [self._context_from(doc) for doc in docs]

    @translate_errors
    def get_matching_runner_contexts(self, partial_id: str) -> Iterator[RunnerContext]:
        """Runner contexts whose runner id contains ``partial_id`` literally.

        A literal substring match: ``.``, ``(``, ``*``, ``\\`` and every other
        character match themselves. The server gets an escaped (``re.escape``)
        pattern, which has no quantifier or group to backtrack on; since MongoDB
        refuses patterns with NUL and very long ones, it gets at most
        :data:`MAX_SEARCH_PATTERN_CHARS` characters of the longest NUL-free part,
        and every candidate is then checked exactly here.

        :param str partial_id: any string (``""`` matches every runner).
        :return: the matching contexts.
        :raises TypeError: if ``partial_id`` is not a string.
        """
        _check_str("partial_id", partial_id)
        probe = max(partial_id.split("\x00"), key=len)[:MAX_SEARCH_PATTERN_CHARS]
        filter_: dict[str, Any] = {F_APP: self._app_id}
        if probe and values.is_bson_string(probe):
            filter_["runner_id"] = {"$regex": re.escape(probe)}
        docs = find_all(self._collection(schema.RUNNER_CONTEXTS), filter_, {"_id": 0})
        return iter(
            [
                self._context_from(doc)
                for doc in docs
                if isinstance(doc.get("runner_id"), str) and partial_id in doc["runner_id"]
            ]
        )

    # ------------------------------------------------------------------ async API
    # Awaitable counterparts of the reads an async task needs. The queries run on
    # the background loop's asynchronous client (pynenc_mongo.aio); the caller's
    # event loop only awaits a future and is never blocked by MongoDB.
    async def _aquery(
        self,
        logical: str,
        filter_: dict[str, Any],
        projection: dict[str, Any] | None = None,
        sort: list[tuple[str, int]] | None = None,
        one: bool = False,
    ) -> Any:
        conf = self.conf
        owner = threading.get_ident()
        if self._deferred.get(owner):  # this thread's deferred inserts go first
            await asyncio.to_thread(self._flush_deferred, owner=owner)

        async def query() -> Any:
            self._collection(logical)  # first use: ensures indexes (on the loop thread)
            client = aio.loop_thread().client(
                conf.mongo_url,
                self._store.database_name,
                conf.mongo_async_driver,
                conf.mongo_server_selection_timeout_seconds,
            )
            collection = client[self._store.database_name][self._store.collection_name(logical)]
            if one:
                return await collection.find_one(filter_, projection)
            cursor = collection.find(filter_, projection)
            if sort:
                cursor = cursor.sort(sort)
            return await cursor.to_list(None)

        try:
            return await aio.run_async(with_retry_async(query, conf.mongo_outage_tolerance_seconds))
        except Exception as exc:
            mapped = translate(exc, self.describe_target())
            if mapped is exc:
                raise
            raise mapped from None

    async def _aload_value(self, stored: Any) -> str:
        if isinstance(stored, str):
            return stored
        pieces = await self._aquery(
            schema.VALUE_PIECES,
            {F_APP: self._app_id, "value_id": stored["value_id"]},
            sort=[("n", 1)],
        )
        return values.assemble(stored, pieces)

    async def _aread_value(
        self, logical: str, filter_: dict[str, Any], path: str
    ) -> tuple[bool, str]:
        """Awaitable :meth:`_read_value`."""
        for attempt in range(STALE_READ_ATTEMPTS):
            doc = await self._aquery(
                logical, filter_, {path: 1, schema.F_EXPIRE: 1, "_id": 0}, one=True
            )
            stored = at_path(doc, path)
            if stored is None:
                return False, ""
            try:
                return True, await self._aload_value(stored)
            except values.StaleValueError:
                if self._expired(doc):
                    return False, ""
                if attempt == STALE_READ_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _aget_invocation_value(self, logical: str, invocation_id: str, what: str) -> str:
        """Awaitable :meth:`_get_invocation_value`.

        :raises KeyError: ``"<what> for invocation <id> not found"``.
        """
        _check_str("invocation_id", invocation_id)
        filter_ = {F_APP: self._app_id, F_INV: invocation_id}
        found, text = await self._aread_value(logical, filter_, "value")
        if not found:
            raise KeyError(f"{what} for invocation {invocation_id} not found")
        return text

    async def aget_result(self, invocation_id: InvocationId) -> Any:
        """Awaitable ``get_result``: the deserialized result.

        :raises KeyError: if no result is stored.
        """
        text = await self._aget_invocation_value(schema.RESULTS, invocation_id, "Result")
        return self.app.client_data_store.deserialize(text)

    async def aget_exception(self, invocation_id: InvocationId) -> Exception:
        """Awaitable ``get_exception``: the deserialized exception.

        :raises KeyError: if no exception is stored.
        """
        text = await self._aget_invocation_value(schema.EXCEPTIONS, invocation_id, "Exception")
        return self.deserialize_exception(text)

    async def aget_history(self, invocation_id: InvocationId) -> list[InvocationHistory]:
        """Awaitable ``get_history`` (time order, exact to the microsecond).

        Waits first, without blocking the caller's loop, for this process's
        pending writes of that invocation.
        """
        _check_str("invocation_id", invocation_id)
        writer = self._writer
        if writer is not None and writer.pending(invocation_id):
            await asyncio.to_thread(writer.wait, invocation_id)
        docs = await self._aquery(
            schema.HISTORY,
            {F_APP: self._app_id, F_INV: invocation_id},
            sort=[(F_TS_US, 1), ("_id", 1)],
        )
        return [schema.history_from(doc) for doc in docs]

    async def aget_invocation(self, invocation_id: InvocationId) -> DistributedInvocation[Any, Any]:
        """Awaitable ``get_invocation``.

        :raises pynenc.exceptions.InvocationNotFoundError: if it is not stored.
        """
        _check_str("invocation_id", invocation_id)
        from pynenc.call import LazyCall
        from pynenc.exceptions import InvocationNotFoundError
        from pynenc.invocation.dist_invocation import DistributedInvocation

        with self._cache_lock:
            pair = self._dto_cache.get(invocation_id)
        if pair is None:
            doc = await self._aquery(
                schema.INVOCATIONS,
                {F_APP: self._app_id, F_INV: invocation_id},
                {"_id": 0, "invocation": 1, "call": 1},
                one=True,
            )
            if doc is None:
                raise InvocationNotFoundError(invocation_id, "The invocation wasn't stored")
            pair = await self._apair_from_doc(doc)
            self._remember({invocation_id: pair})
        inv_dto, call_dto = pair
        invocation: DistributedInvocation[Any, Any] = DistributedInvocation.from_dto(
            inv_dto, call=LazyCall.from_dto(self.app, call_dto)
        )
        return invocation

    async def _apair_from_doc(self, doc: dict[str, Any]) -> DTOPair:
        from pynenc.models.call_dto import CallDTO

        call = doc["call"]
        arguments = {
            arg["name"]: await self._aload_value(arg["value"])
            for arg in call["serialized_arguments"]
        }
        return schema.invocation_dto_from(doc), CallDTO(
            call_id=schema.call_id_from(call["call_id"]), serialized_arguments=arguments
        )

    async def aget_workflow_data(
        self, workflow_identity: WorkflowIdentity, key: str, default: Any = None
    ) -> Any:
        """Awaitable ``get_workflow_data``: the value under ``key`` or ``default``."""
        found, text = await self._aread_value(
            schema.WORKFLOW_DATA,
            {F_APP: self._app_id, "workflow_id": workflow_identity.workflow_id},
            "data." + schema.encode_data_key(key),
        )
        if not found:
            return default
        return self.app.client_data_store.deserialize(text)


def _check_str(name: str, value: Any) -> str:
    """Return ``value`` if it is a ``str``; refuse anything else.

    Identifiers go into query filters as values: a dict such as ``{"$ne": None}``
    would be read by MongoDB as an operator and match other documents.

    :raises TypeError: naming ``name`` and the type received.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a str, got {type(value).__name__}")
    return value


_URL_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*@|^[^/?#\s]*:[^/?#\s]*@")


def _without_secrets(value: Any, key: Any = None) -> Any:
    """A copy of a config value with secrets removed, recursively.

    * values under keys that look secret (password, secret, token, credential,
      api key, private key) are dropped, unless the key names a URL;
    * strings that are URLs with user info (any scheme: ``mongodb://``,
      ``mongomock://``, ``redis://``...) lose their password and secret options
      (:func:`~pynenc_mongo.urls.strip_password`, or ``***`` for other schemes);
    * dicts, lists, tuples and sets are walked.
    """
    if isinstance(value, str):
        if _URL_USERINFO.search(value) or value.startswith(SCHEMES):
            return strip_password(value)
        return value
    if isinstance(value, dict):
        safe: dict[Any, Any] = {}
        for k, v in value.items():
            if isinstance(k, str) and _SECRET_KEY.search(k) and "url" not in k.lower():
                continue
            safe[k] = _without_secrets(v, k)
        return safe
    if isinstance(value, list):
        return [_without_secrets(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_without_secrets(v) for v in value)
    if isinstance(value, set | frozenset):
        return type(value)(_without_secrets(v) for v in value)
    return value


_live_backends: weakref.WeakSet[MongoStateBackend] = weakref.WeakSet()


def _write_all_deferred() -> None:
    """At exit: write every live backend's deferred invocations (errors are logged)."""
    for backend in list(_live_backends):
        try:
            backend._flush_deferred(every_thread=True)
        except Exception as exc:  # noqa: BLE001 - nothing left to raise to at exit
            logger.error("pynenc-mongo: at exit, deferred invocations not written: %s", exc)


def _reset_locks_after_fork() -> None:
    """In a forked child: fresh locks (another parent thread may have held them)."""
    for backend in list(_live_backends):
        backend._cache_lock = threading.Lock()
        backend._deferred_lock = threading.Lock()
        backend._flush_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_locks_after_fork)
atexit.register(_write_all_deferred)

__all__ = ["MongoStateBackend", "MongoUrlError"]
