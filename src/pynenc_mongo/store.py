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
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import bson
from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, PyMongoError

from pynenc_mongo import schema, values
from pynenc_mongo.client import get_database
from pynenc_mongo.config import ConfigMongo, describe, effective_database
from pynenc_mongo.errors import (
    MAX_DOCUMENT_BYTES,
    MongoIndexMissingError,
    MongoLimitError,
    is_document_too_large,
    with_retry,
)
from pynenc_mongo.indexes import (
    SETUP_SCRIPT,
    UniqueIndexState,
    ensure_collection_indexes,
    unique_index_state,
    warn_once,
)
from pynenc_mongo.operations import insert_if_absent, read_all
from pynenc_mongo.schema import F_APP
from pynenc_mongo.write_outcomes import WriteOutcome, write_outcome

logger = logging.getLogger("pynenc_mongo")

#: Re-reads of a large value whose pieces were replaced while reading.
STALE_READ_ATTEMPTS = 5
#: Attempts of an upsert that lost a duplicate-key race (see :meth:`MongoStore.upsert`).
UPSERT_ATTEMPTS = 3


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
            conf.mongo_url,
            self.database_name,
            conf.mongo_server_selection_timeout_seconds,
            conf.mongo_socket_timeout_seconds,
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

    def unique_state(self, logical: str, index: str) -> UniqueIndexState:
        """Whether the unique index ``index`` of ``logical`` is known to exist.

        Ensures the collection's indexes first (see :meth:`collection`), which with
        ``mongo_create_indexes`` on creates it if it can.

        :param str logical: a logical collection name.
        :param str index: the name of one of its unique indexes in the catalogue.
        :return: PRESENT, MISSING or UNVERIFIED (``listIndexes`` refused).
        :raises KeyError: ``index`` is not a unique index of ``logical``.
        """
        specs = [
            spec
            for spec in schema.indexes_for(logical, retention=True)
            if spec.unique and spec.name == index
        ]
        if not specs:
            raise KeyError(f"{index!r} is not a unique index of collection {logical!r}")
        collection = self.physical_collection(logical)
        state = unique_index_state(collection, index)
        return state if state is not None else UniqueIndexState.UNVERIFIED

    def require_unique(self, logical: str, index: str | None = None) -> None:
        """Refuse a write whose race-safety rests on a unique index that is missing.

        Call it before an upsert or insert that relies on the unique index to keep
        one document per key (two writers upserting the same new key both insert
        without it). Costs no I/O once the collection's indexes were ensured in
        this process. An index that could not be verified (no ``listIndexes``
        privilege) is not refused: one warning per process says so.

        :param str logical: a logical collection name.
        :param str | None index: the unique index the write relies on; None for
            every unique index of ``logical``.
        :raises pynenc_mongo.errors.MongoIndexMissingError: naming the collection, the
            index, its keys and :data:`~pynenc_mongo.indexes.SETUP_SCRIPT`.
        :raises KeyError: ``index`` is not a unique index of ``logical``.
        """
        names = (
            [index]
            if index is not None
            else [s.name for s in schema.indexes_for(logical, retention=True) if s.unique]
        )
        for name in names:
            state = self.unique_state(logical, name)
            physical = self.names[logical]
            if state is UniqueIndexState.MISSING:
                spec = next(s for s in schema.INDEXES if s.collection == logical and s.name == name)
                raise MongoIndexMissingError(
                    f"the unique index {name!r} {spec.describe()} on collection {physical!r} "
                    f"({self.describe_target()}) is missing, and this write is race-safe only "
                    f"with it; run `{SETUP_SCRIPT}` (or let mongo_create_indexes create it)",
                    physical,
                    name,
                )
            if state is UniqueIndexState.UNVERIFIED:
                warn_once(
                    f"unverified:{self.database_name}.{physical}.{name}",
                    "pynenc-mongo: the unique index %s on %s could not be verified (no "
                    "listIndexes privilege?); writes that rely on it proceed. Run `%s --check`.",
                    name,
                    physical,
                    SETUP_SCRIPT,
                )

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

    def find_all(
        self,
        collection: Collection[dict[str, Any]],
        filter_: dict[str, Any],
        projection: dict[str, Any] | None = None,
        sort: Sequence[tuple[str, int]] | None = None,
    ) -> list[dict[str, Any]]:
        """Every document of ``collection`` matching ``filter_``, read under :meth:`retry`.

        Each attempt opens a new cursor (a PyMongo cursor that lost its connection is
        dead: re-reading it would return a partial result), as
        :func:`pynenc_mongo.operations.find_all` does.

        :param Collection collection: from :meth:`collection` or :meth:`physical_collection`.
        :param dict filter_: the query (starts with :meth:`app_filter`).
        :param dict | None projection: fields to return.
        :param sort: ``[(field, 1 | -1), ...]`` or None.
        :return: the documents.
        """

        return self.retry(read_all, collection, filter_, projection, sort)

    def upsert[T](self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run an idempotent upsert under :meth:`retry`, a duplicate-key race retried too.

        Two writers upserting the same new document at once can both try to insert
        it; the loser gets ``DuplicateKeyError`` (MongoDB retries some of these cases
        itself, mongomock never does). Running the upsert again then matches the
        document the winner inserted (as :func:`pynenc_mongo.operations.upsert_retrying_duplicate`).

        :param func: e.g. ``collection.update_one``; must be an upsert.
        :return: what ``func`` returns.
        :raises DuplicateKeyError: if the duplicate persists after three attempts.
        """
        for attempt in range(UPSERT_ATTEMPTS):
            try:
                return self.retry(func, *args, **kwargs)
            except DuplicateKeyError:
                if attempt == UPSERT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

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
        pieces = self.find_all(
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
            if not is_document_too_large(exc) or write_outcome(exc) is not WriteOutcome.REJECTED:
                self._forget_unless_pointed_at(logical, filter_, path, prepared, exc)
                raise
            if prepared.pieces:
                self.delete_pieces(prepared.stored)
                raise
            logger.debug("document full at %s: storing the value as pieces", path[:80])
            prepared = self.prepare_value(owner, text, limit, force_pieces=True)
            try:
                before = self._switch_pointer(logical, filter_, path, prepared)
            except PyMongoError as again:
                self._forget_unless_pointed_at(logical, filter_, path, prepared, again)
                raise
        old = at_path(before, path)
        if values.reference_id(old) not in (None, values.reference_id(prepared.stored)):
            self.delete_pieces(old)

    def _forget_unless_pointed_at(
        self,
        logical: str,
        filter_: dict[str, Any],
        path: str,
        prepared: values.PreparedValue,
        exc: PyMongoError,
    ) -> None:
        """After a failed pointer switch: delete the new pieces only when no stored
        pointer can reference them.

        * surely not applied (:func:`~pynenc_mongo.errors.write_outcome` REJECTED):
          delete them;
        * applied but the write concern failed (APPLIED; the server has finished
          the write, it replied): re-read the pointer and delete them only if it
          points elsewhere (then the write did not land, or a later writer replaced
          it and deletes what it replaced); if the re-read fails, keep them;
        * unknown (connection lost, timeout: the write may still be running on the
          server): keep them. An unreferenced piece costs space; a deleted
          referenced one makes the value unreadable for good.

        The pieces of the value replaced by an applied write are not known here
        (the reply was lost) and stay (README, "known gaps").
        """
        value_id = values.reference_id(prepared.stored)
        if value_id is None:
            return
        outcome = write_outcome(exc)
        if outcome is WriteOutcome.REJECTED:
            self.delete_pieces(prepared.stored)
            return
        if outcome is WriteOutcome.UNKNOWN:
            return
        try:
            doc = self.retry(
                self.physical_collection(logical).find_one, filter_, {path: 1, "_id": 0}
            )
        except PyMongoError:
            return
        if values.reference_id(at_path(doc, path)) != value_id:
            self.delete_pieces(prepared.stored)

    def _switch_pointer(
        self,
        logical: str,
        filter_: dict[str, Any],
        path: str,
        prepared: values.PreparedValue,
    ) -> dict[str, Any] | None:
        """``$set`` ``path`` to the prepared value (upsert); return the document before."""
        before: dict[str, Any] | None = self.upsert(
            self.collection(logical).find_one_and_update,
            filter_,
            {"$set": {path: prepared.stored}},
            projection={path: 1, "_id": 0},
            upsert=True,
            return_document=ReturnDocument.BEFORE,
        )
        return before


__all__ = [
    "STALE_READ_ATTEMPTS",
    "UPSERT_ATTEMPTS",
    "MongoStore",
    "at_path",
    "check_document_size",
    "is_expired",
]
