"""The async read API: awaitable counterparts of the reads an async task needs.

The queries run on the background loop's asynchronous client
(:mod:`pynenc_mongo.aio`); the caller's event loop only awaits a future and is
never blocked by MongoDB. Indexes are ensured, and the calling thread's deferred
invocation inserts written, through the same :class:`~pynenc_mongo.store.MongoStore`
as the synchronous reads.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

from pynenc_mongo import aio, schema, values
from pynenc_mongo.config import ConfigStateBackendMongo
from pynenc_mongo.errors import translate, with_retry_async
from pynenc_mongo.schema import F_APP, F_INV, F_TS_US
from pynenc_mongo.state_backend.common import DTOPair, StorePart, check_str
from pynenc_mongo.state_backend.history import History
from pynenc_mongo.state_backend.invocations import Invocations
from pynenc_mongo.state_backend.workflows import data_field, data_filter
from pynenc_mongo.store import STALE_READ_ATTEMPTS, MongoStore, at_path, is_expired

#: Server-side deadline of each async read (``maxTimeMS``), in milliseconds.
MAX_TIME_MS = 30_000

if TYPE_CHECKING:
    from pynenc.state_backend.base_state_backend import InvocationHistory


class AsyncReads(StorePart):
    """Awaitable reads of results, exceptions, history, invocations and workflow data.

    :param MongoStore store: the app's store.
    :param ConfigStateBackendMongo conf: ``mongo_async_driver`` and timeouts.
    :param Invocations invocations: the DTO cache and this thread's deferred inserts.
    :param History history: this process's pending history writes.
    """

    def __init__(
        self,
        store: MongoStore,
        conf: ConfigStateBackendMongo,
        invocations: Invocations,
        history: History,
    ) -> None:
        super().__init__(store)
        self.conf = conf
        self._invocations = invocations
        self._history = history

    async def query(
        self,
        logical: str,
        filter_: dict[str, Any],
        projection: dict[str, Any] | None = None,
        sort: list[tuple[str, int]] | None = None,
        one: bool = False,
    ) -> Any:
        """Run ``find`` (or ``find_one`` with ``one``) on the background loop.

        :return: a document or None with ``one``, else the list of documents.
        :raises pynenc_mongo.errors.MongoUnavailableError: (and the other mapped
            errors of :func:`~pynenc_mongo.errors.translate`) naming the host.
        """
        conf = self.conf
        store = self.store
        owner = threading.get_ident()
        # Blocking work happens on a worker thread, never on the shared loop thread
        # (issue 16, item 3): this thread's deferred inserts, a pending app info and
        # the first-use index build (all done by ``store.collection``).
        client = await asyncio.to_thread(self._prepare, logical, owner)
        physical = store.collection_name(logical)

        async def run() -> Any:
            collection = client[store.database_name][physical]
            if one:
                return await collection.find_one(filter_, projection, max_time_ms=MAX_TIME_MS)
            cursor = collection.find(filter_, projection, max_time_ms=MAX_TIME_MS)
            if sort:
                cursor = cursor.sort(sort)
            return await cursor.to_list(None)

        try:
            return await aio.run_async(with_retry_async(run, conf.mongo_outage_tolerance_seconds))
        except Exception as exc:
            mapped = translate(exc, self.describe_target())
            if mapped is exc:
                raise
            raise mapped from None

    def _prepare(self, logical: str, owner: int) -> Any:
        """On a worker thread: thread ``owner``'s deferred inserts, then
        :meth:`MongoStore.collection` (pending app info, indexes ensured).

        :return: the loop's asynchronous client for this backend, created here if it
            is new (:meth:`pynenc_mongo.aio.LoopThread.client`).
        """
        if self._invocations.has_deferred(owner):
            self._invocations.flush_deferred(owner=owner)
        self.store.collection(logical)
        conf = self.conf
        return aio.loop_thread().client(
            conf.mongo_url,
            self.store.database_name,
            conf.mongo_async_driver,
            conf.mongo_server_selection_timeout_seconds,
            conf.mongo_socket_timeout_seconds,
        )

    async def load_value(self, stored: Any) -> str:
        """Awaitable :meth:`MongoStore.load_value`."""
        if isinstance(stored, str):
            return stored
        pieces = await self.query(
            schema.VALUE_PIECES,
            {F_APP: self.app_id, "value_id": stored["value_id"]},
            sort=[("n", 1)],
        )
        return values.assemble(stored, pieces)

    async def read_value(
        self, logical: str, filter_: dict[str, Any], path: str
    ) -> tuple[bool, str]:
        """Awaitable :meth:`MongoStore.read_value`: ``(found, text)``."""
        for attempt in range(STALE_READ_ATTEMPTS):
            doc = await self.query(
                logical, filter_, {path: 1, schema.F_EXPIRE: 1, "_id": 0}, one=True
            )
            stored = at_path(doc, path)
            if stored is None:
                return False, ""
            try:
                return True, await self.load_value(stored)
            except values.StaleValueError:
                if is_expired(doc):
                    return False, ""
                if attempt == STALE_READ_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def invocation_value(self, logical: str, invocation_id: str, what: str) -> str:
        """Awaitable ``InvocationValues.get``: the serialized result or exception.

        :raises KeyError: ``"<what> for invocation <id> not found"``.
        :raises TypeError: if ``invocation_id`` is not a str.
        """
        check_str("invocation_id", invocation_id)
        filter_ = {F_APP: self.app_id, F_INV: invocation_id}
        found, text = await self.read_value(logical, filter_, "value")
        if not found:
            raise KeyError(f"{what} for invocation {invocation_id} not found")
        return text

    async def history(self, invocation_id: str) -> list[InvocationHistory]:
        """Awaitable ``History.get`` (time order, exact to the microsecond).

        Waits first, without blocking the caller's loop, for this process's
        pending writes of that invocation.
        """
        check_str("invocation_id", invocation_id)
        writer = self._history.live_writer()
        if writer is not None and writer.pending(invocation_id):
            await asyncio.to_thread(writer.wait, invocation_id)
        docs = await self.query(
            schema.HISTORY,
            {F_APP: self.app_id, F_INV: invocation_id},
            sort=[(F_TS_US, 1), ("_id", 1)],
        )
        return [schema.history_from(doc) for doc in docs]

    async def invocation(self, invocation_id: str) -> DTOPair | None:
        """Awaitable ``Invocations.get``: the DTO pair (cached when known), or None.

        As the sync read: another thread's deferred insert of the id is written
        first, and an invocation whose retention expired while its pieces are being
        deleted reads as None (not a ``StaleValueError``).
        """
        check_str("invocation_id", invocation_id)
        pair = self._invocations.cached(invocation_id)
        if pair is not None:
            return pair
        if invocation_id in self._invocations.unwritten:
            await asyncio.to_thread(self._invocations.flush_deferred, [invocation_id])
        for attempt in range(STALE_READ_ATTEMPTS):
            doc = await self.query(
                schema.INVOCATIONS,
                {F_APP: self.app_id, F_INV: invocation_id},
                {"_id": 0, "invocation": 1, "call": 1, schema.F_EXPIRE: 1},
                one=True,
            )
            if doc is None:
                return None
            try:
                pair = await self._pair_from_doc(doc)
            except values.StaleValueError:
                if is_expired(doc):
                    return None
                if attempt == STALE_READ_ATTEMPTS - 1:
                    raise
                continue
            self._invocations.remember(
                {invocation_id: pair}, {invocation_id: doc.get(schema.F_EXPIRE)}
            )
            return pair
        return None  # pragma: no cover

    async def _pair_from_doc(self, doc: dict[str, Any]) -> DTOPair:
        from pynenc.models.call_dto import CallDTO

        call = doc["call"]
        arguments = {
            arg["name"]: await self.load_value(arg["value"]) for arg in call["serialized_arguments"]
        }
        return schema.invocation_dto_from(doc), CallDTO(
            call_id=schema.call_id_from(call["call_id"]), serialized_arguments=arguments
        )

    async def workflow_data(self, workflow_id: str, key: str) -> tuple[bool, str]:
        """Awaitable ``Workflows.get_data``: ``(found, text)``.

        :raises TypeError: if ``key`` or ``workflow_id`` is not a string (a dict
            would act as a query operator).
        """
        field = data_field(key)
        check_str("workflow_id", workflow_id)
        return await self.read_value(
            schema.WORKFLOW_DATA, data_filter(self.app_id, workflow_id, field), field
        )


__all__ = ["AsyncReads"]
