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
  (:mod:`pynenc_mongo.value_store`): pieces first, then the pointer, old pieces last;
* ``app_id`` scoping: every document carries it, and :meth:`purge` deletes only the
  app's own documents.

Atomicity never comes from here: a component states its precondition in the filter
of one MongoDB operation (``find_one_and_update``, a unique-index insert).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import bson
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from pynenc_mongo import schema
from pynenc_mongo.client import get_database
from pynenc_mongo.config import ConfigMongo, describe, effective_database
from pynenc_mongo.errors import (
    MAX_DOCUMENT_BYTES,
    MongoIndexMissingError,
    MongoLimitError,
    with_retry,
)
from pynenc_mongo.indexes import (
    SETUP_SCRIPT,
    UniqueIndexState,
    ensure_collection_indexes,
    recheck_missing_unique,
    unique_index_state,
    warn_once,
)
from pynenc_mongo.operations import read_all
from pynenc_mongo.schema import F_APP
from pynenc_mongo.value_store import STALE_READ_ATTEMPTS, ValueStore, at_path, is_expired

logger = logging.getLogger("pynenc_mongo")

#: Attempts of an upsert that lost a duplicate-key race (see :meth:`MongoStore.upsert`).
UPSERT_ATTEMPTS = 3


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


class MongoStore(ValueStore):
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
        this process; while an index is missing, one ``listIndexes`` per
        :data:`~pynenc_mongo.indexes.RECHECK_MISSING_SECONDS` looks again, so a
        worker serves the writes once an operator created it. An index that could
        not be verified (no ``listIndexes`` privilege) is not refused: one warning
        per process says so.

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
            if state is UniqueIndexState.MISSING:  # created since? (an operator's script)
                recheck_missing_unique(
                    self.physical_collection(logical), logical, self.conf.mongo_retention_days > 0
                )
                state = self.unique_state(logical, name)
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


__all__ = [
    "STALE_READ_ATTEMPTS",
    "UPSERT_ATTEMPTS",
    "MongoStore",
    "at_path",
    "check_document_size",
    "is_expired",
]
