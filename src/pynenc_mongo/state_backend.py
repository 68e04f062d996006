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
* ``add_history``/``add_histories`` build the records the way pynenc's base class
  does, but write all of them in one ``insert_many`` through a history writer
  (synchronous, or asynchronous with per-invocation tracking: see
  :mod:`pynenc_mongo.async_writes`). No thread is created per record.
* Reads that could miss this process's own pending history writes wait for them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache
from pymongo import ReturnDocument
from pymongo.collection import Collection
from pynenc.invocation.status import InvocationStatus
from pynenc.state_backend.base_state_backend import BaseStateBackend, InvocationHistory

from pynenc_mongo import aio, schema, values
from pynenc_mongo.async_writes import HistoryWriter, make_history_writer
from pynenc_mongo.client import get_database
from pynenc_mongo.config import ConfigStateBackendMongo, describe, effective_database
from pynenc_mongo.errors import translate, translate_errors, with_retry
from pynenc_mongo.indexes import ensure_collection_indexes
from pynenc_mongo.operations import insert_if_absent
from pynenc_mongo.schema import F_APP, F_INV, F_TS_US
from pynenc_mongo.urls import MongoUrlError, strip_password

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
#: Re-reads of a large value whose pieces were replaced while reading.
STALE_READ_ATTEMPTS = 5
_SECRET_KEY = re.compile(r"pass(word)?|secret|token|credential", re.IGNORECASE)

DTOPair = tuple["InvocationDTO", "CallDTO"]


def _at_path(doc: dict[str, Any] | None, path: str) -> Any:
    """The value at dotted ``path`` of ``doc``, or None."""
    value: Any = doc
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


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
        self._app_id: str = app.app_id
        self._names = schema.CollectionNames(conf.mongo_collection_prefix)
        self._database_name = effective_database(conf)
        self._dto_cache: LRUCache[str, DTOPair] = LRUCache(
            maxsize=max(conf.mongo_invocation_cache_size, 1)
        )
        self._cache_enabled = conf.mongo_invocation_cache_size > 0
        self._cache_lock = threading.Lock()
        self._writer_lock = threading.Lock()
        self._writer: HistoryWriter | None = None

    # ------------------------------------------------------------------ plumbing
    @cached_property
    def conf(self) -> ConfigStateBackendMongo:
        """The resolved settings (cistell: config values, files, env vars)."""
        return ConfigStateBackendMongo(
            config_values=self.app.config_values,
            config_filepath=self.app.config_filepath,
        )

    def describe_target(self) -> str:
        """Where this backend writes: redacted URL and database (for messages)."""
        return describe(self.conf)

    def __repr__(self) -> str:
        return f"<MongoStateBackend app_id={self._app_id!r} {self.describe_target()}>"

    def _collection(self, logical: str) -> Collection[dict[str, Any]]:
        """The physical collection for ``logical``, with its indexes ensured."""
        conf = self.conf
        db = get_database(
            conf.mongo_url, self._database_name, conf.mongo_server_selection_timeout_seconds
        )
        collection = db[self._names[logical]]
        ensure_collection_indexes(
            collection,
            logical,
            create=conf.mongo_create_indexes,
            retention=conf.mongo_retention_days > 0,
        )
        return collection

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
        return self._names[logical]

    @property
    def database_name(self) -> str:
        """The database this backend uses (``mongo_database``, URL path or ``pynenc``)."""
        return self._database_name

    @property
    def app_id(self) -> str:
        """The app whose documents this backend reads and writes."""
        return self._app_id

    def close(self) -> None:
        """Flush pending asynchronous writes and stop the writer (clients stay shared)."""
        with self._writer_lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    # ------------------------------------------------------------------ purge
    @translate_errors
    def purge(self) -> None:
        """Delete every document of this app (and only this app) in every collection."""
        self.wait_for_all_async_operations()
        for logical in schema.ALL_COLLECTIONS:
            with_retry(self._collection(logical).delete_many, {F_APP: self._app_id})
        with self._cache_lock:
            self._dto_cache.clear()
        self._runner_context_cache.clear()

    # ------------------------------------------------------------------ values
    def _prepare_value(
        self, owner: str, text: str, limit: int | None = None
    ) -> values.PreparedValue:
        inline_max = self.conf.mongo_inline_value_max_bytes
        prepared = values.prepare(
            self._app_id, owner, text, min(inline_max, limit) if limit else inline_max
        )
        if prepared.pieces:
            insert_if_absent(self._collection(schema.VALUE_PIECES), prepared.pieces)
        return prepared

    def _delete_pieces(self, stored: Any) -> None:
        value_id = values.reference_id(stored)
        if value_id is not None:
            with_retry(
                self._collection(schema.VALUE_PIECES).delete_many,
                {F_APP: self._app_id, "value_id": value_id},
            )

    def _load_value(self, stored: Any) -> str:
        if isinstance(stored, str):
            return stored
        pieces = list(
            self._collection(schema.VALUE_PIECES)
            .find({F_APP: self._app_id, "value_id": stored["value_id"]})
            .sort("n", 1)
        )
        return values.assemble(stored, pieces)

    def _read_value(self, logical: str, filter_: dict[str, Any], path: str) -> tuple[bool, str]:
        """Read the value at ``path`` of the document matching ``filter_``.

        :return: ``(found, text)``; re-reads when large-value pieces were replaced
            concurrently (see :mod:`pynenc_mongo.values`).
        """
        for attempt in range(STALE_READ_ATTEMPTS):
            doc = with_retry(self._collection(logical).find_one, filter_, {path: 1, "_id": 0})
            stored = _at_path(doc, path)
            if stored is None:
                return False, ""
            try:
                return True, self._load_value(stored)
            except values.StaleValueError:
                if attempt == STALE_READ_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _write_value(
        self,
        logical: str,
        filter_: dict[str, Any],
        path: str,
        owner: str,
        text: str,
        limit: int | None = None,
    ) -> None:
        """Point ``path`` of the (upserted) document at ``text``; old pieces are deleted after."""
        prepared = self._prepare_value(owner, text, limit)
        before = with_retry(
            self._collection(logical).find_one_and_update,
            filter_,
            {"$set": {path: prepared.stored}},
            projection={path: 1, "_id": 0},
            upsert=True,
            return_document=ReturnDocument.BEFORE,
        )
        old = _at_path(before, path)
        if values.reference_id(old) not in (None, values.reference_id(prepared.stored)):
            self._delete_pieces(old)

    # ------------------------------------------------------------------ invocations
    @translate_errors
    def _upsert_invocations(self, entries: list[tuple[InvocationDTO, CallDTO]]) -> None:
        """Store invocation/call DTO pairs: one ``insert_many`` for the whole batch.

        Pairs whose invocation id this process already stored are skipped (the
        DTOs are immutable); others are inserted unless present (idempotent).
        """
        fresh: dict[str, DTOPair] = {}
        with self._cache_lock:
            for inv_dto, call_dto in entries:
                inv_id = inv_dto.invocation_id
                if inv_id not in self._dto_cache and inv_id not in fresh:
                    fresh[inv_id] = (inv_dto, call_dto)
        if not fresh:
            return
        docs = []
        for key, (inv_dto, call_dto) in fresh.items():
            arguments = [
                {"name": name, "value": self._prepare_value(key, text).stored}
                for name, text in call_dto.serialized_arguments.items()
            ]
            docs.append(schema.invocation_doc(self._app_id, inv_dto, call_dto, arguments))
        with_retry(insert_if_absent, self._collection(schema.INVOCATIONS), docs)
        self._remember(fresh)

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
        """The DTO pair of ``invocation_id`` (from this process's cache when known), or None."""
        with self._cache_lock:
            cached = self._dto_cache.get(invocation_id)
        if cached is not None:
            return cached
        for attempt in range(STALE_READ_ATTEMPTS):
            doc = with_retry(
                self._collection(schema.INVOCATIONS).find_one,
                {F_APP: self._app_id, F_INV: invocation_id},
                {"_id": 0, "invocation": 1, "call": 1},
            )
            if doc is None:
                return None
            try:
                pair = self._pair_from_doc(doc)
            except values.StaleValueError:
                if attempt == STALE_READ_ATTEMPTS - 1:
                    raise
                continue
            self._remember({invocation_id: pair})
            return pair
        return None  # pragma: no cover

    def _ids_where(self, field: str, value: Any) -> Iterator[InvocationId]:
        cursor = self._collection(schema.INVOCATIONS).find(
            {F_APP: self._app_id, field: value}, {"_id": 0, F_INV: 1}
        )
        return iter([doc[F_INV] for doc in with_retry(list, cursor)])

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
            filter_[schema.F_WF_ID] = workflow_id
        if workflow_type_key:
            filter_[schema.F_WF_TYPE] = workflow_type_key
        cursor = self._collection(schema.INVOCATIONS).find(filter_, {"_id": 0, F_INV: 1})
        return iter([doc[F_INV] for doc in with_retry(list, cursor)])

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
        self.wait_for_invocation_async_operations(invocation_id)
        cursor = (
            self._collection(schema.HISTORY)
            .find({F_APP: self._app_id, F_INV: invocation_id})
            .sort([(F_TS_US, 1), ("_id", 1)])
        )
        return [schema.history_from(doc) for doc in with_retry(list, cursor)]

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
        in lists of at most ``batch_size`` (one server cursor, no skip/limit paging).
        """
        self.wait_for_all_async_operations()
        cursor = (
            self._collection(schema.HISTORY)
            .find(self._time_filter(start_time, end_time))
            .sort([(F_TS_US, 1), ("_id", 1)])
            .batch_size(max(batch_size, 1))
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
        cursor = (
            self._collection(schema.HISTORY)
            .find(self._time_filter(start_time, end_time), {"_id": 1, F_INV: 1, F_TS_US: 1})
            .sort([(F_TS_US, 1), ("_id", 1)])
            .batch_size(max(batch_size, 1) * 4)
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
    @translate_errors
    def _set_result(self, invocation_id: InvocationId, serialized_result: str) -> None:
        """Store (or replace) the serialized result of ``invocation_id``."""
        self._write_value(
            schema.RESULTS,
            {F_APP: self._app_id, F_INV: invocation_id},
            "value",
            invocation_id,
            serialized_result,
        )

    @translate_errors
    def _get_result(self, invocation_id: InvocationId) -> str:
        """The serialized result. :raises KeyError: if none is stored (pynenc's contract)."""
        found, text = self._read_value(
            schema.RESULTS, {F_APP: self._app_id, F_INV: invocation_id}, "value"
        )
        if not found:
            raise KeyError(f"Result for invocation {invocation_id} not found")
        return text

    @translate_errors
    def _set_exception(self, invocation_id: InvocationId, serialized_exception: str) -> None:
        """Store (or replace) the serialized exception of ``invocation_id``."""
        self._write_value(
            schema.EXCEPTIONS,
            {F_APP: self._app_id, F_INV: invocation_id},
            "value",
            invocation_id,
            serialized_exception,
        )

    @translate_errors
    def _get_exception(self, invocation_id: InvocationId) -> str:
        """The serialized exception. :raises KeyError: if none is stored."""
        found, text = self._read_value(
            schema.EXCEPTIONS, {F_APP: self._app_id, F_INV: invocation_id}, "value"
        )
        if not found:
            raise KeyError(f"Exception for invocation {invocation_id} not found")
        return text

    # ------------------------------------------------------------------ workflows
    @translate_errors
    def set_workflow_data(self, workflow_identity: WorkflowIdentity, key: str, value: Any) -> None:
        """Set ``key`` (any string) of a workflow's data to ``value`` (serialized by
        the app's client data store), one ``$set`` upsert on the workflow's document.

        :raises TypeError: if ``key`` is not a string.
        """
        field = "data." + schema.encode_data_key(key)
        serialized = self.app.client_data_store.serialize(value)
        workflow_id = workflow_identity.workflow_id
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
        field = "data." + schema.encode_data_key(key)
        found, text = self._read_value(
            schema.WORKFLOW_DATA,
            {F_APP: self._app_id, "workflow_id": workflow_identity.workflow_id},
            field,
        )
        if not found:
            return default
        return self.app.client_data_store.deserialize(text)

    @translate_errors
    def store_workflow_run(self, workflow_identity: WorkflowIdentity) -> None:
        """Record a workflow run (idempotent upsert)."""
        doc = schema.workflow_run_doc(self._app_id, workflow_identity)
        with_retry(
            self._collection(schema.WORKFLOW_RUNS).update_one,
            {F_APP: self._app_id, "workflow_id": workflow_identity.workflow_id},
            {"$set": doc},
            upsert=True,
        )

    @translate_errors
    def get_all_workflow_types(self) -> Iterator[TaskId]:
        """Distinct workflow types (task ids) that have runs."""
        from pynenc.identifiers.task_id import TaskId

        keys = with_retry(
            self._collection(schema.WORKFLOW_RUNS).distinct,
            "workflow_type.key",
            {F_APP: self._app_id},
        )
        return iter([TaskId.from_key(key) for key in sorted(keys)])

    def _workflow_runs(self, filter_: dict[str, Any]) -> Iterator[WorkflowIdentity]:
        # Newest first, to the second (``_id`` is the ObjectId made when the run was first
        # stored): pynenc's monitor shows the first run as a type's "latest run" and
        # charts the first three.
        cursor = self._collection(schema.WORKFLOW_RUNS).find(filter_, {"_id": 0}).sort("_id", -1)
        return iter([schema.workflow_run_from(doc) for doc in with_retry(list, cursor)])

    @translate_errors
    def get_all_workflow_runs(self) -> Iterator[WorkflowIdentity]:
        """Every workflow run of the app, newest first."""
        return self._workflow_runs({F_APP: self._app_id})

    @translate_errors
    def get_workflow_runs(self, workflow_type: TaskId) -> Iterator[WorkflowIdentity]:
        """Workflow runs of one workflow type, newest first."""
        return self._workflow_runs({F_APP: self._app_id, "workflow_type.key": workflow_type.key})

    @translate_errors
    def store_workflow_sub_invocation(
        self, parent_workflow_id: InvocationId, sub_invocation_id: InvocationId
    ) -> None:
        """Record that ``sub_invocation_id`` runs inside ``parent_workflow_id`` (idempotent)."""
        key = {
            F_APP: self._app_id,
            "workflow_id": parent_workflow_id,
            "sub_invocation_id": sub_invocation_id,
        }
        with_retry(
            self._collection(schema.WORKFLOW_SUB_INVOCATIONS).update_one,
            key,
            {"$setOnInsert": key},
            upsert=True,
        )

    @translate_errors
    def get_workflow_sub_invocations(self, workflow_id: InvocationId) -> Iterator[InvocationId]:
        """Ids of the invocations that run inside ``workflow_id``."""
        cursor = self._collection(schema.WORKFLOW_SUB_INVOCATIONS).find(
            {F_APP: self._app_id, "workflow_id": workflow_id}, {"_id": 0, "sub_invocation_id": 1}
        )
        return iter([doc["sub_invocation_id"] for doc in with_retry(list, cursor)])

    # ------------------------------------------------------------------ app info
    def _safe_config_values(self, config_values: dict[str, Any] | None) -> dict[str, Any] | None:
        """Config values without secrets: Mongo URLs lose their password, values of
        keys that look secret (password, secret, token, credential) are dropped."""
        if config_values is None:
            return None
        safe: dict[str, Any] = {}
        for key, value in config_values.items():
            if isinstance(key, str) and _SECRET_KEY.search(key) and "url" not in key.lower():
                continue
            if isinstance(value, str) and value.startswith(("mongodb://", "mongodb+srv://")):
                value = strip_password(value)
            safe[key] = value
        return safe

    @translate_errors
    def store_app_info(self, app_info: AppInfo) -> None:
        """Store the app's info for discovery, with secrets removed (see
        :meth:`_safe_config_values`); sets, tuples and bytes in config values round-trip."""
        doc = schema.app_info_doc(app_info, self._safe_config_values(app_info.config_values))
        with_retry(
            self._collection(schema.APP_INFOS).replace_one,
            {F_APP: app_info.app_id},
            doc,
            upsert=True,
        )

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
        """Store a runner context (its parent is stored by the base class, by id)."""
        doc = schema.runner_context_doc(self._app_id, runner_context)
        with_retry(
            self._collection(schema.RUNNER_CONTEXTS).update_one,
            {F_APP: self._app_id, "runner_id": runner_context.runner_id},
            {"$set": doc},
            upsert=True,
        )

    def _context_from(self, doc: dict[str, Any]) -> RunnerContext:
        from pynenc.runner.runner_context import RunnerContext

        parent = None
        parent_id = doc.get("parent_runner_id")
        if parent_id:
            parent = self.get_runner_context(parent_id)
            if parent is None:
                logger.warning(
                    "runner context %s names parent %s, which is not stored",
                    doc["runner_id"],
                    parent_id,
                )
        return RunnerContext(
            runner_cls=doc["runner_cls"],
            runner_id=doc["runner_id"],
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
            {F_APP: self._app_id, "runner_id": runner_id},
            {"_id": 0},
        )
        return self._context_from(doc) if doc else None

    @translate_errors
    def _get_runner_contexts(self, runner_ids: list[str]) -> list[RunnerContext]:
        """The stored runner contexts among ``runner_ids`` (missing ones are skipped)."""
        if not runner_ids:
            return []
        cursor = self._collection(schema.RUNNER_CONTEXTS).find(
            {F_APP: self._app_id, "runner_id": {"$in": list(runner_ids)}}, {"_id": 0}
        )
        return [self._context_from(doc) for doc in with_retry(list, cursor)]

    @translate_errors
    def get_matching_runner_contexts(self, partial_id: str) -> Iterator[RunnerContext]:
        """Runner contexts whose runner id contains ``partial_id`` literally.

        The text is escaped (``re.escape``) before it becomes a ``$regex``, so
        ``.``, ``(``, ``*`` and ``\\`` match themselves and no pattern can make
        the server backtrack.

        :raises TypeError: if ``partial_id`` is not a string.
        """
        if not isinstance(partial_id, str):
            raise TypeError(f"partial_id: expected a str, got {type(partial_id).__name__}")
        cursor = self._collection(schema.RUNNER_CONTEXTS).find(
            {F_APP: self._app_id, "runner_id": {"$regex": re.escape(partial_id)}}, {"_id": 0}
        )
        return iter([self._context_from(doc) for doc in with_retry(list, cursor)])

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

        async def query() -> Any:
            self._collection(logical)  # first use: ensures indexes (on the loop thread)
            client = aio.loop_thread().client(
                conf.mongo_url,
                self._database_name,
                conf.mongo_async_driver,
                conf.mongo_server_selection_timeout_seconds,
            )
            collection = client[self._database_name][self._names[logical]]
            if one:
                return await collection.find_one(filter_, projection)
            cursor = collection.find(filter_, projection)
            if sort:
                cursor = cursor.sort(sort)
            return await cursor.to_list(None)

        try:
            return await aio.run_async(query())
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
            doc = await self._aquery(logical, filter_, {path: 1, "_id": 0}, one=True)
            stored = _at_path(doc, path)
            if stored is None:
                return False, ""
            try:
                return True, await self._aload_value(stored)
            except values.StaleValueError:
                if attempt == STALE_READ_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def aget_result(self, invocation_id: InvocationId) -> Any:
        """Awaitable ``get_result``: the deserialized result.

        :raises KeyError: if no result is stored.
        """
        found, text = await self._aread_value(
            schema.RESULTS, {F_APP: self._app_id, F_INV: invocation_id}, "value"
        )
        if not found:
            raise KeyError(f"Result for invocation {invocation_id} not found")
        return self.app.client_data_store.deserialize(text)

    async def aget_exception(self, invocation_id: InvocationId) -> Exception:
        """Awaitable ``get_exception``: the deserialized exception.

        :raises KeyError: if no exception is stored.
        """
        found, text = await self._aread_value(
            schema.EXCEPTIONS, {F_APP: self._app_id, F_INV: invocation_id}, "value"
        )
        if not found:
            raise KeyError(f"Exception for invocation {invocation_id} not found")
        return self.deserialize_exception(text)

    async def aget_history(self, invocation_id: InvocationId) -> list[InvocationHistory]:
        """Awaitable ``get_history`` (time order, exact to the microsecond).

        Waits first, without blocking the caller's loop, for this process's
        pending writes of that invocation.
        """
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


__all__ = ["MongoStateBackend", "MongoUrlError"]
