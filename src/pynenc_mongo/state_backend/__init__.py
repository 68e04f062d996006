"""``MongoStateBackend``: pynenc's ``BaseStateBackend`` on MongoDB.

Select it with ``state_backend_cls: MongoStateBackend`` in the pynenc config, or
with the builder's ``.mongo(url=...)``. The storage layout is in
:mod:`pynenc_mongo.schema`; settings in :mod:`pynenc_mongo.config`.

Works with pynenc 0.2.3 (the specified API, including the two
``wait_for_*_async_operations`` methods) and pynenc 0.4.x (which adds
``get_invocations_by_parent_event``).

The class is thin: it maps pynenc's methods onto parts, one module per concern,
each a plain object holding the app's :class:`~pynenc_mongo.store.MongoStore`:

* :mod:`.invocations` (DTO cache, deferred inserts), :mod:`.history` (through the
  writers of :mod:`pynenc_mongo.async_writes`), :mod:`.results`, :mod:`.workflows`,
  :mod:`.runners`, :mod:`.app_info` (secrets removed), :mod:`.async_reads` (``aget_*``).

The backend owns the wiring: the store's ``before_operation`` hook stores a
pending app info, then writes this thread's deferred invocations, before every
MongoDB operation; serialization is pynenc's (the app's client data store).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache
from pymongo.collection import Collection
from pynenc.state_backend.base_state_backend import BaseStateBackend, InvocationHistory

from pynenc_mongo import schema
from pynenc_mongo.async_writes import HistoryWriter
from pynenc_mongo.config import ConfigStateBackendMongo, check_unknown_settings, describe
from pynenc_mongo.errors import translate_errors
from pynenc_mongo.state_backend.app_info import AppInfos, safe_config_values
from pynenc_mongo.state_backend.async_reads import AsyncReads
from pynenc_mongo.state_backend.common import DTOPair
from pynenc_mongo.state_backend.history import History
from pynenc_mongo.state_backend.invocations import Invocations
from pynenc_mongo.state_backend.results import InvocationValues
from pynenc_mongo.state_backend.runners import RunnerContexts
from pynenc_mongo.state_backend.workflows import Workflows
from pynenc_mongo.store import MongoStore
from pynenc_mongo.urls import MongoUrlError

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


class MongoStateBackend(BaseStateBackend[Any, Any]):
    """pynenc state backend that keeps every invocation's state in MongoDB.

    :param Pynenc app: the pynenc app; its config selects the server
        (:class:`~pynenc_mongo.config.ConfigStateBackendMongo`).
    :raises pynenc_mongo.config.MongoConfigError: at construction, for a bad setting.
    :raises TypeError: if ``app.app_id`` is not a str.

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
        self._invocations = Invocations(self._store, conf.mongo_invocation_cache_size)
        self._history = History(self._store, conf, self._invocations)
        self._values = InvocationValues(self._store)
        self._workflows = Workflows(self._store)
        self._runners = RunnerContexts(self._store, self._runner_context_cache)
        self._app_infos = AppInfos(self._store)
        self._async = AsyncReads(self._store, conf, self._invocations, self._history)

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
        if self._app_infos.pending is not None:
            self._app_infos.store_pending()
        if self._invocations.has_deferred():  # this thread's deferred inserts first
            self._invocations.flush_deferred()

    @property
    def store(self) -> MongoStore:
        """The per-app store this backend reads and writes through."""
        return self._store

    def _collection(self, logical: str) -> Collection[dict[str, Any]]:
        """The physical collection for ``logical``, with its indexes ensured (after the
        deferred work of :meth:`_before_operation`)."""
        return self._store.collection(logical)

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

    # The parts' state, under the names tests and benchmarks use.
    @property
    def history_writer(self) -> HistoryWriter:
        """The history writer of this backend (created on first use)."""
        return self._history.writer

    @property
    def _writer(self) -> HistoryWriter | None:
        """The current history writer, or None before first use (settable: tests)."""
        return self._history.current_writer

    @_writer.setter
    def _writer(self, writer: HistoryWriter | None) -> None:
        self._history.current_writer = writer

    @property
    def _dto_cache(self) -> LRUCache[str, DTOPair]:
        return self._invocations.dto_cache

    @property
    def _cache_lock(self) -> threading.Lock:
        return self._invocations.cache_lock

    @property
    def _unwritten(self) -> set[str]:
        return self._invocations.unwritten

    def _flush_deferred(
        self, named: list[str] | None = None, every_thread: bool = False, owner: int | None = None
    ) -> None:
        """Write deferred invocations now (see :meth:`Invocations.flush_deferred`)."""
        self._invocations.flush_deferred(named, every_thread, owner)

    _safe_config_values = staticmethod(safe_config_values)

    def close(self) -> None:
        """Write deferred invocations, flush pending asynchronous writes and stop the
        writer (clients stay shared)."""
        self._invocations.flush_deferred(every_thread=True)
        self._history.close()

    @translate_errors
    def purge(self) -> None:
        """Delete every document of this app (and only this app) in every collection."""
        self.wait_for_all_async_operations()
        self._store.purge(schema.STATE_COLLECTIONS)
        self._invocations.clear_cache()
        self._runner_context_cache.clear()

    # ------------------------------------------------------------------ invocations
    @translate_errors
    def _upsert_invocations(self, entries: list[tuple[InvocationDTO, CallDTO]]) -> None:
        """Store invocation/call DTO pairs (see :meth:`Invocations.upsert`)."""
        self._invocations.upsert(entries)

    @translate_errors
    def _get_invocation(self, invocation_id: InvocationId) -> tuple[InvocationDTO, CallDTO] | None:
        """The DTO pair of ``invocation_id``, or None (see :meth:`Invocations.get`)."""
        return self._invocations.get(invocation_id)

    @translate_errors
    def get_child_invocations(self, parent_invocation_id: InvocationId) -> Iterator[InvocationId]:
        """Ids of invocations whose ``parent_invocation_id`` is the given one (maybe none)."""
        return self._invocations.ids_where(schema.F_PARENT, parent_invocation_id)

    @translate_errors
    def get_invocations_by_parent_event(self, parent_event_id: str) -> Iterator[InvocationId]:
        """Ids of invocations created in response to ``parent_event_id`` (pynenc >= 0.4)."""
        return self._invocations.ids_where(schema.F_PARENT_EVENT, parent_event_id)

    @translate_errors
    def get_invocation_ids_by_workflow(
        self, workflow_id: str | None = None, workflow_type_key: str | None = None
    ) -> Iterator[InvocationId]:
        """Ids of invocations in ``workflow_id`` and/or of workflow type ``workflow_type_key``
        (with neither, every invocation id of the app)."""
        return self._invocations.ids_by_workflow(workflow_id, workflow_type_key)

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
        """Record the same status change for many invocations in one ``insert_many``
        (see :meth:`History.add_for`)."""
        self.store_runner_context(runner_context)
        self._history.add_for(invocations, status_record, runner_context.runner_id)

    def _add_histories(
        self, invocation_ids: list[InvocationId], invocation_history: InvocationHistory
    ) -> None:
        """Store ``invocation_history`` once for each id (one ``insert_many``)."""
        self._history.add(invocation_ids, invocation_history)

    def write_history_now(self, docs: list[dict[str, Any]]) -> None:
        """Insert history documents now (idempotent: client-made ``_id``)."""
        self._history.write_history_now(docs)

    def expire_invocation(self, invocation_id: str, expire_at: datetime) -> None:
        """Stamp a finished invocation's documents for expiry (``History.expire_invocation``)."""
        self._history.expire_invocation(invocation_id, expire_at)

    @translate_errors
    def _get_history(self, invocation_id: InvocationId) -> list[InvocationHistory]:
        """History of one invocation in time order (waits for this process's pending
        writes of it first)."""
        return self._history.get(invocation_id)

    def wait_for_invocation_async_operations(self, invocation_id: str) -> None:
        """Block until this process's history writes for ``invocation_id`` issued so
        far are durable.

        :raises pynenc_mongo.errors.AsyncOperationError: naming the invocation and
            the cause, if one of them failed for good.
        """
        self._history.wait(invocation_id)

    def wait_for_all_async_operations(self) -> None:
        """Write every thread's deferred invocations, then block until every history
        write of this process issued so far is durable.

        :raises pynenc_mongo.errors.AsyncOperationError: if any failed for good.
        """
        self._invocations.flush_deferred(every_thread=True)
        self._history.wait_all()

    @translate_errors
    def iter_history_in_timerange(
        self, start_time: datetime, end_time: datetime, batch_size: int = 100
    ) -> Iterator[list[InvocationHistory]]:
        """History entries with ``start_time <= timestamp <= end_time``, in time order,
        in lists of at most ``batch_size`` (see :meth:`History.iter_in_timerange`)."""
        self.wait_for_all_async_operations()
        yield from self._history.iter_in_timerange(start_time, end_time, batch_size)

    @translate_errors
    def iter_invocations_in_timerange(
        self, start_time: datetime, end_time: datetime, batch_size: int = 100
    ) -> Iterator[list[InvocationId]]:
        """Distinct ids of invocations with history in the range, in order of their
        first entry there, in lists of at most ``batch_size``."""
        self.wait_for_all_async_operations()
        yield from self._history.iter_invocations_in_timerange(start_time, end_time, batch_size)

    # ------------------------------------------------------------------ results
    @translate_errors
    def _set_result(self, invocation_id: InvocationId, serialized_result: str) -> None:
        """Store (or replace) the serialized result of ``invocation_id``."""
        self._values.set(schema.RESULTS, invocation_id, serialized_result)

    @translate_errors
    def _get_result(self, invocation_id: InvocationId) -> str:
        """The serialized result. :raises KeyError: if none is stored (pynenc's contract)."""
        return self._values.get(schema.RESULTS, invocation_id, "Result")

    @translate_errors
    def _set_exception(self, invocation_id: InvocationId, serialized_exception: str) -> None:
        """Store (or replace) the serialized exception of ``invocation_id``."""
        self._values.set(schema.EXCEPTIONS, invocation_id, serialized_exception)

    @translate_errors
    def _get_exception(self, invocation_id: InvocationId) -> str:
        """The serialized exception. :raises KeyError: if none is stored."""
        return self._values.get(schema.EXCEPTIONS, invocation_id, "Exception")

    # ------------------------------------------------------------------ workflows
    @translate_errors
    def set_workflow_data(self, workflow_identity: WorkflowIdentity, key: str, value: Any) -> None:
        """Set ``key`` (any string) of a workflow's data to ``value``, serialized by the
        app's client data store (see :meth:`Workflows.set_data`).

        :raises TypeError: if ``key`` is not a string.
        """
        self._workflows.set_data(
            workflow_identity.workflow_id, key, value, self.app.client_data_store.serialize
        )

    @translate_errors
    def get_workflow_data(
        self, workflow_identity: WorkflowIdentity, key: str, default: Any = None
    ) -> Any:
        """The value stored under ``key``, or ``default`` when there is none.

        :raises TypeError: if ``key`` is not a string.
        """
        found, text = self._workflows.get_data(workflow_identity.workflow_id, key)
        return self.app.client_data_store.deserialize(text) if found else default

    @translate_errors
    def store_workflow_run(self, workflow_identity: WorkflowIdentity) -> None:
        """Record a workflow run (idempotent upsert)."""
        self._workflows.store_run(workflow_identity)

    @translate_errors
    def get_all_workflow_types(self) -> Iterator[TaskId]:
        """Distinct workflow types (task ids) that have runs."""
        return self._workflows.all_types()

    @translate_errors
    def get_all_workflow_runs(self) -> Iterator[WorkflowIdentity]:
        """Every workflow run of the app, newest first."""
        return self._workflows.runs()

    @translate_errors
    def get_workflow_runs(self, workflow_type: TaskId) -> Iterator[WorkflowIdentity]:
        """Workflow runs of one workflow type, newest first."""
        return self._workflows.runs(workflow_type.key)

    @translate_errors
    def store_workflow_sub_invocation(
        self, parent_workflow_id: InvocationId, sub_invocation_id: InvocationId
    ) -> None:
        """Record that ``sub_invocation_id`` runs inside ``parent_workflow_id`` (idempotent)."""
        self._workflows.store_sub_invocation(parent_workflow_id, sub_invocation_id)

    @translate_errors
    def get_workflow_sub_invocations(self, workflow_id: InvocationId) -> Iterator[InvocationId]:
        """Ids of the invocations that run inside ``workflow_id``."""
        return self._workflows.sub_invocations(workflow_id)

    # ------------------------------------------------------------------ app info
    @translate_errors
    def store_app_info(self, app_info: AppInfo) -> None:
        """Store the app's info for discovery, with secrets removed; sets, tuples and
        bytes in config values round-trip.

        pynenc calls this when it creates the backend. If the server cannot be
        reached then, the error is raised (naming the host) and the info is kept
        to be stored by the next operation that reaches the server, so an app
        that retries later is discoverable without restarting.

        :raises pynenc_mongo.errors.MongoUnavailableError: server unreachable.
        """
        self._app_infos.store_info(app_info)

    @translate_errors
    def get_app_info(self) -> AppInfo:
        """This app's stored info. :raises KeyError: if none is stored."""
        return self._app_infos.get()

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
        self._runners.store_context(runner_context)

    @translate_errors
    def _get_runner_context(self, runner_id: str) -> RunnerContext | None:
        """The stored runner context, or None."""
        return self._runners.get(runner_id)

    @translate_errors
    def _get_runner_contexts(self, runner_ids: list[str]) -> list[RunnerContext]:
        """The stored runner contexts among ``runner_ids`` (missing ones are skipped)."""
        return self._runners.get_many(runner_ids)

    @translate_errors
    def get_matching_runner_contexts(self, partial_id: str) -> Iterator[RunnerContext]:
        """Runner contexts whose runner id contains ``partial_id`` literally
        (see :meth:`RunnerContexts.matching`). :raises TypeError: for a non-str."""
        return iter(self._runners.matching(partial_id))

    # ------------------------------------------------------------------ async API
    async def aget_result(self, invocation_id: InvocationId) -> Any:
        """Awaitable ``get_result``: the deserialized result.

        :raises KeyError: if no result is stored.
        """
        text = await self._async.invocation_value(schema.RESULTS, invocation_id, "Result")
        return self.app.client_data_store.deserialize(text)

    async def aget_exception(self, invocation_id: InvocationId) -> Exception:
        """Awaitable ``get_exception``: the deserialized exception.

        :raises KeyError: if no exception is stored.
        """
        text = await self._async.invocation_value(schema.EXCEPTIONS, invocation_id, "Exception")
        return self.deserialize_exception(text)

    async def aget_history(self, invocation_id: InvocationId) -> list[InvocationHistory]:
        """Awaitable ``get_history`` (time order; waits without blocking the caller's
        loop for this process's pending writes of that invocation)."""
        return await self._async.history(invocation_id)

    async def aget_invocation(self, invocation_id: InvocationId) -> DistributedInvocation[Any, Any]:
        """Awaitable ``get_invocation``.

        :raises pynenc.exceptions.InvocationNotFoundError: if it is not stored.
        """
        from pynenc.call import LazyCall
        from pynenc.exceptions import InvocationNotFoundError
        from pynenc.invocation.dist_invocation import DistributedInvocation

        pair = await self._async.invocation(invocation_id)
        if pair is None:
            raise InvocationNotFoundError(invocation_id, "The invocation wasn't stored")
        inv_dto, call_dto = pair
        invocation: DistributedInvocation[Any, Any] = DistributedInvocation.from_dto(
            inv_dto, call=LazyCall.from_dto(self.app, call_dto)
        )
        return invocation

    async def aget_workflow_data(
        self, workflow_identity: WorkflowIdentity, key: str, default: Any = None
    ) -> Any:
        """Awaitable ``get_workflow_data``: the value under ``key`` or ``default``."""
        found, text = await self._async.workflow_data(workflow_identity.workflow_id, key)
        return self.app.client_data_store.deserialize(text) if found else default


__all__ = ["MongoStateBackend", "MongoUrlError"]
