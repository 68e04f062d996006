"""``MongoStore``: one pynenc app's view of the database, shared by every component.

Every pynenc-mongo component (state backend, orchestrator, broker, trigger, client
data store) reaches MongoDB through a :class:`MongoStore` and never around it. The
store owns what they have in common:

* the database handle, from the per-process client registry
  (:mod:`pynenc_mongo.client`: one client per process and settings, forgotten after
  ``fork``; every command counted by :mod:`pynenc_mongo.monitoring`);
* collection names (``<mongo_collection_prefix><logical name>``, the logical names
  declared in the catalogue :mod:`pynenc_mongo.schema`) and lazy index creation,
  once per process and collection (:mod:`pynenc_mongo.indexes`);
* the retry policy for idempotent operations (:func:`pynenc_mongo.errors.with_retry`)
  and the error mapping (:meth:`describe_target` names the host, password redacted);
* large values stored as compressed pieces in ``value_pieces``
  (:mod:`pynenc_mongo.values`): pieces first, then the pointer, old pieces last;
* ``app_id`` scoping: every document carries it, and :meth:`purge` deletes only the
  app's own documents.

Atomicity never comes from here: a component states its precondition in the filter
of one MongoDB operation (``find_one_and_update``, a unique-index insert).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import bson
from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import PyMongoError

from pynenc_mongo import schema, values
from pynenc_mongo.client import get_database
from pynenc_mongo.config import ConfigMongo, describe, effective_database
from pynenc_mongo.errors import (
    MAX_DOCUMENT_BYTES,
    MongoLimitError,
    is_document_too_large,
    is_transient,
    with_retry,
)
from pynenc_mongo.indexes import ensure_collection_indexes
from pynenc_mongo.operations import find_all, insert_if_absent, upsert_retrying_duplicate
from pynenc_mongo.schema import F_APP

logger = logging.getLogger("pynenc_mongo")

#: Re-reads of a large value whose pieces were replaced while reading.
STALE_READ_ATTEMPTS = 5


def at_path(doc: dict[str, Any] | None, path: str) -> Any:
    """The value at dotted ``path`` of ``doc``, or None.

    :param dict | None doc: a document (or None).
    :param str path: e.g. ``"data.kfoo"``.
    :return: the value, or None when any part of the path is missing.
    """
    value: Any = doc
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def is_expired(doc: dict[str, Any] | None) -> bool:
    """True if ``doc`` carries an ``expire_at`` in the past: MongoDB's TTL monitor is
    deleting it and its pieces, in no particular order (MongoDB manual, "TTL Indexes")."""
    expire_at = (doc or {}).get(schema.F_EXPIRE)
    if not isinstance(expire_at, datetime):
        return False
    if expire_at.tzinfo is None:
        expire_at = expire_at.replace(tzinfo=UTC)
    return expire_at <= datetime.now(UTC)


def check_document_size(doc: dict[str, Any], what: str) -> None:
    """Refuse ``doc`` clearly when it passes MongoDB's 16 MiB document limit.

    :param dict doc: the document about to be written.
    :param str what: what it stores, for the message (e.g. ``"invocation 'abc'"``).
    :raises pynenc_mongo.errors.MongoLimitError: naming ``what`` and the limit, or
        the text that is not valid UTF-8.
    """
    try:
        size = len(bson.encode(doc))
    except UnicodeEncodeError as exc:
        raise MongoLimitError(
            f"{what} holds text that is not valid UTF-8 ({exc.reason}: "
            f"{exc.object[exc.start : exc.end]!r}); MongoDB stores only UTF-8 strings"
        ) from None
    if size > MAX_DOCUMENT_BYTES:
        raise MongoLimitError(
            f"{what} needs a document of {size} bytes, more than MongoDB's limit of "
            f"{MAX_DOCUMENT_BYTES} bytes (16 MiB); shorten the identifiers or names in it"
        )


class MongoStore:
    """The database, collections, retries and value pieces of one pynenc app.

    :param ConfigMongo conf: resolved settings (any pynenc-mongo component config:
        they all derive from :class:`~pynenc_mongo.config.ConfigMongo`).
    :param str app_id: the app whose documents this store reads and writes.
    :param Callable | None before_operation: called before every :meth:`collection`
        lookup (the state backend writes its deferred inserts there); None for none.

    Creating a store does no I/O: the client connects on first use.
    """

    def __init__(
        self,
        conf: ConfigMongo,
        app_id: str,
        before_operation: Callable[[], None] | None = None,
    ) -> None:
        if not isinstance(app_id, str):
            raise TypeError(f"app_id: expected a str, got {type(app_id).__name__}")
        self.conf = conf
        self.app_id = app_id
        self.names = schema.CollectionNames(conf.mongo_collection_prefix)
        self.database_name = effective_database(conf)
        self._before_operation = before_operation

    # ------------------------------------------------------------------ plumbing
    def describe_target(self) -> str:
        """Where this store writes: redacted URL and database (for messages and reprs)."""
        return describe(self.conf)

    def __repr__(self) -> str:
        return f"<MongoStore app_id={self.app_id!r} {self.describe_target()}>"

    @property
    def database(self) -> Database[dict[str, Any]]:
        """The database handle (the process's shared client; made on first use)."""
        conf = self.conf
        return get_database(
            conf.mongo_url, self.database_name, conf.mongo_server_selection_timeout_seconds
        )

    def collection(self, logical: str) -> Collection[dict[str, Any]]:
        """The physical collection of ``logical``, with its indexes ensured.

        Runs the ``before_operation`` hook first.

        :param str logical: a logical name from :data:`pynenc_mongo.schema.ALL_COLLECTIONS`.
        :return: the PyMongo collection (tz-aware UTC dates).
        :raises KeyError: for a name the catalogue does not declare.
        """
        if self._before_operation is not None:
            self._before_operation()
        return self.physical_collection(logical)

    def physical_collection(self, logical: str) -> Collection[dict[str, Any]]:
        """:meth:`collection` without the ``before_operation`` hook."""
        collection = self.database[self.names[logical]]
        ensure_collection_indexes(
            collection,
            logical,
            create=self.conf.mongo_create_indexes,
            retention=self.conf.mongo_retention_days > 0,
        )
        return collection

    def collection_name(self, logical: str) -> str:
        """The physical name of a logical collection (prefix applied)."""
        return self.names[logical]

    def app_filter(self, **fields: Any) -> dict[str, Any]:
        """``{"app_id": <this app>, **fields}``: the start of every query's filter."""
        return {F_APP: self.app_id, **fields}

    def retry[T](self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run an **idempotent** operation under the retry policy
        (:func:`pynenc_mongo.errors.with_retry`) with this store's
        ``mongo_outage_tolerance_seconds``: transient errors and an unreachable server
        are retried with backoff for up to that many seconds, each attempt bounded by
        ``pymongo.timeout(<time left>)``; past it the last error is raised, marked with
        how long it waited (``translate_errors`` makes it a
        :class:`~pynenc_mongo.errors.MongoUnavailableError` naming the host).

        Never pass a non-idempotent operation (``$inc``, ``find_one_and_delete``): the
        driver's own retryable writes already retry those once, safely.

        :param func: the operation; ``args``/``kwargs`` are passed to it.
        :return: what ``func`` returns.
        """
        return with_retry(
            func,
            *args,
            outage_tolerance_seconds=self.conf.mongo_outage_tolerance_seconds,
            **kwargs,
        )

    def purge(self, collections: Iterable[str]) -> None:
        """Delete every document of this app (and only this app) in ``collections``.

        :param Iterable[str] collections: logical names.
        """
        for logical in collections:
            self.retry(self.collection(logical).delete_many, {F_APP: self.app_id})

    # ------------------------------------------------------------------ values
    def prepare_only(
        self, owner: str, text: str, limit: int | None = None, force_pieces: bool = False
    ) -> values.PreparedValue:
        """Decide inline or pieces for ``text`` (nothing written).

        :param str owner: what owns the value (an invocation id, ``workflow:<id>``, a key).
        :param str text: the serialized value.
        :param int | None limit: inline at most this many bytes (and at most
            ``mongo_inline_value_max_bytes``); None for the setting alone.
        :param bool force_pieces: store as pieces whatever the size.
        :return: the prepared value.
        """
        inline_max = self.conf.mongo_inline_value_max_bytes
        return values.prepare(
            self.app_id,
            owner,
            text,
            min(inline_max, limit) if limit else inline_max,
            force_pieces=force_pieces,
        )

    def prepare_value(
        self, owner: str, text: str, limit: int | None = None, force_pieces: bool = False
    ) -> values.PreparedValue:
        """:meth:`prepare_only`, then insert the pieces, if any (before any pointer)."""
        prepared = self.prepare_only(owner, text, limit, force_pieces)
        if prepared.pieces:
            self.insert_pieces(prepared.pieces)
        return prepared

    def insert_pieces(self, pieces: list[dict[str, Any]]) -> None:
        """Insert ``value_pieces`` documents (idempotent: unique ``(value_id, n)``)."""
        if pieces:
            self.retry(insert_if_absent, self.collection(schema.VALUE_PIECES), pieces)

    def delete_pieces(self, stored: Any) -> None:
        """Delete the pieces of a stored reference (nothing for inline values)."""
        self.delete_value_ids([values.reference_id(stored)])

    def delete_value_ids(self, value_ids: list[str | None]) -> None:
        """Delete the pieces of these values (``None`` entries are skipped)."""
        ids = sorted({v for v in value_ids if v is not None})
        if ids:
            self.retry(
                self.collection(schema.VALUE_PIECES).delete_many,
                {F_APP: self.app_id, "value_id": {"$in": ids}},
            )

    def load_value(self, stored: Any) -> str:
        """The text of a stored value: inline, or assembled from its pieces.

        :raises pynenc_mongo.values.StaleValueError: pieces missing (replaced meanwhile).
        """
        if isinstance(stored, str):
            return stored
        pieces = find_all(
            self.collection(schema.VALUE_PIECES),
            {F_APP: self.app_id, "value_id": stored["value_id"]},
            None,
            [("n", 1)],
        )
        return values.assemble(stored, pieces)

    def read_value(self, logical: str, filter_: dict[str, Any], path: str) -> tuple[bool, str]:
        """Read the value at ``path`` of the document matching ``filter_``.

        :return: ``(found, text)``; re-reads when large-value pieces were replaced
            concurrently (see :mod:`pynenc_mongo.values`). A value whose document
            has expired (retention) and whose pieces are already gone is not found.
        :raises pynenc_mongo.values.StaleValueError: if pieces stay missing.
        """
        for attempt in range(STALE_READ_ATTEMPTS):
            doc = self.retry(
                self.collection(logical).find_one,
                filter_,
                {path: 1, schema.F_EXPIRE: 1, "_id": 0},
            )
            stored = at_path(doc, path)
            if stored is None:
                return False, ""
            try:
                return True, self.load_value(stored)
            except values.StaleValueError:
                if is_expired(doc):
                    return False, ""
                if attempt == STALE_READ_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def write_value(
        self,
        logical: str,
        filter_: dict[str, Any],
        path: str,
        owner: str,
        text: str,
        limit: int | None = None,
    ) -> None:
        """Point ``path`` of the (upserted) document matching ``filter_`` at ``text``.

        New pieces are inserted before the pointer switches; the pieces of the
        value it replaced are deleted after, so readers see the old or the new
        value, never a mix. If the document has no room left for the value
        inline (MongoDB's 16 MiB limit), the value is stored as pieces instead.

        :raises pynenc_mongo.errors.MongoLimitError: if even a reference does not fit.
        """
        prepared = self.prepare_value(owner, text, limit)
        try:
            before = self._switch_pointer(logical, filter_, path, prepared)
        except PyMongoError as exc:
            if not is_document_too_large(exc):
                if not is_transient(exc):  # surely not applied: the new pieces are unused
                    self.delete_pieces(prepared.stored)
                raise
            if prepared.pieces:
                self.delete_pieces(prepared.stored)
                raise
            logger.debug("document full at %s: storing the value as pieces", path[:80])
            prepared = self.prepare_value(owner, text, limit, force_pieces=True)
            try:
                before = self._switch_pointer(logical, filter_, path, prepared)
            except PyMongoError:
                self.delete_pieces(prepared.stored)
                raise
        old = at_path(before, path)
        if values.reference_id(old) not in (None, values.reference_id(prepared.stored)):
            self.delete_pieces(old)

    def _switch_pointer(
        self,
        logical: str,
        filter_: dict[str, Any],
        path: str,
        prepared: values.PreparedValue,
    ) -> dict[str, Any] | None:
        """``$set`` ``path`` to the prepared value (upsert); return the document before."""
        before: dict[str, Any] | None = upsert_retrying_duplicate(
            self.collection(logical).find_one_and_update,
            filter_,
            {"$set": {path: prepared.stored}},
            projection={path: 1, "_id": 0},
            upsert=True,
            return_document=ReturnDocument.BEFORE,
        )
        return before


__all__ = ["STALE_READ_ATTEMPTS", "MongoStore", "at_path", "check_document_size", "is_expired"]
