"""Index management: comparing what exists with the definitions, lazy creation.

The index definitions themselves live in :data:`pynenc_mongo.schema.INDEXES`
(one :class:`~pynenc_mongo.schema.IndexSpec` per index). This module:

* compares a collection's indexes (``listIndexes``) with the definitions
  (:func:`inspect_collection`): each defined index is *present*, *missing*,
  *different* (an index with its name exists with other keys or options) or
  *other_name* (its keys are indexed under another name, which MongoDB refuses
  to duplicate);
* creates missing indexes in one ``createIndexes`` command per collection
  (:func:`create_indexes`), which MongoDB builds with one collection scan;
* lets the backend create missing indexes lazily, once per process and
  collection (:func:`ensure_collection_indexes`). With ``mongo_create_indexes``
  off it only checks, and logs one warning naming the setup script
  (:data:`SETUP_SCRIPT`, :mod:`pynenc_mongo.cli`) when indexes are missing.

The backend never drops an index and never fails an operation because an index
could not be created or listed (a role without the ``listIndexes`` or
``createIndex`` privilege action, code 13): it logs a warning once and works
without it (queries scan).

Unique indexes are correctness gates, not only speed: an upsert or an insert
whose race-safety rests on one (two writers of the same new result, the
invocation dedup) stores duplicates without it. This module remembers, per
process and collection, whether each unique index is present
(:func:`unique_index_state`), warns once per process naming every missing one and
:data:`SETUP_SCRIPT`, and :meth:`pynenc_mongo.store.MongoStore.require_unique`
lets a component refuse such a write instead.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pymongo import IndexModel
from pymongo.collection import Collection
from pymongo.errors import NetworkTimeout, OperationFailure, PyMongoError

from pynenc_mongo.errors import AUTH_FAILED_CODES
from pynenc_mongo.schema import (
    ALL_COLLECTIONS,
    ID_INDEX_NAME,
    INDEXES,
    CollectionNames,
    IndexSpec,
    format_keys,
    indexes_for,
)

logger = logging.getLogger("pynenc_mongo")

#: The console script that creates the indexes (``scripts/setup_indexes`` in a clone).
SETUP_SCRIPT = "pynenc-mongo-setup-indexes"

#: MongoDB error codes (MongoDB manual, "Error Codes").
UNAUTHORIZED = 13
NAMESPACE_NOT_FOUND = 26
#: IndexAlreadyExists, IndexOptionsConflict, IndexKeySpecsConflict.
INDEX_CONFLICT_CODES = frozenset({68, 85, 86})


class IndexState(StrEnum):
    """How a defined index compares with what a collection holds."""

    PRESENT = "present"
    """An index with the defined name, keys and options exists."""
    MISSING = "missing"
    """No index with the defined name or keys exists."""
    DIFFERENT = "different"
    """An index with the defined name exists with other keys or options."""
    OTHER_NAME = "other_name"
    """The defined keys are indexed under another name."""


@dataclass(frozen=True)
class IndexStatus:
    """One defined index and its state in one collection.

    :ivar IndexSpec spec: the definition.
    :ivar IndexState state: what the collection holds.
    :ivar str | None existing_name: for ``DIFFERENT`` and ``OTHER_NAME``, the name
        of the existing index in the way.
    :ivar tuple[str, ...] differences: for those two states, how the existing
        index differs (see :meth:`IndexSpec.differences`); may be empty for
        ``OTHER_NAME`` (same keys and options, only the name differs).
    """

    spec: IndexSpec
    state: IndexState
    existing_name: str | None = None
    differences: tuple[str, ...] = ()

    @property
    def is_conflict(self) -> bool:
        """True for ``DIFFERENT`` and ``OTHER_NAME``: creating the index would fail."""
        return self.state in (IndexState.DIFFERENT, IndexState.OTHER_NAME)

    def explain(self) -> str:
        """One line saying what is in the way (for ``DIFFERENT`` / ``OTHER_NAME``).

        :return: e.g. ``"an index named 'app_task' exists with other options:
            unique: expected True, found False"``; ``""`` for other states.
        """
        diffs = "; ".join(self.differences)
        if self.state is IndexState.DIFFERENT:
            return f"an index named {self.existing_name!r} exists with another definition: {diffs}"
        if self.state is IndexState.OTHER_NAME:
            text = (
                f"the same keys {format_keys(self.spec.keys)} are indexed under the name "
                f"{self.existing_name!r}"
            )
            return text + (f" ({diffs})" if diffs else " (same options, so queries are served)")
        return ""


@dataclass(frozen=True)
class CollectionReport:
    """The defined indexes of one collection and their states.

    :ivar str logical: logical collection name (:mod:`pynenc_mongo.schema`).
    :ivar str name: physical collection name (prefix applied).
    :ivar tuple[IndexStatus, ...] statuses: one per defined index, in definition order.
    :ivar tuple[str, ...] other_indexes: names of existing indexes that are not
        definitions of this collection (left alone; ``_id_`` and the TTL indexes
        not requested this time are not listed).
    """

    logical: str
    name: str
    statuses: tuple[IndexStatus, ...]
    other_indexes: tuple[str, ...] = ()

    def _in(self, *states: IndexState) -> list[IndexStatus]:
        return [status for status in self.statuses if status.state in states]

    @property
    def present(self) -> list[IndexStatus]:
        """Statuses of indexes that exist as defined."""
        return self._in(IndexState.PRESENT)

    @property
    def missing(self) -> list[IndexStatus]:
        """Statuses of indexes that do not exist at all."""
        return self._in(IndexState.MISSING)

    @property
    def conflicts(self) -> list[IndexStatus]:
        """Statuses of indexes with an existing index in the way."""
        return self._in(IndexState.DIFFERENT, IndexState.OTHER_NAME)


def existing_indexes(collection: Collection[Any]) -> dict[str, dict[str, Any]]:
    """Name -> index document (``listIndexes``) of a collection; ``{}`` when it does
    not exist yet.

    :param Collection collection: a PyMongo or mongomock collection.
    :return: ``{name: {"key": ..., "name": ..., options...}}``.
    :raises pymongo.errors.OperationFailure: e.g. code 13 without the
        ``listIndexes`` privilege action.
    """
    found: dict[str, dict[str, Any]] = {}
    try:
        for info in collection.list_indexes():
            found[str(info["name"])] = dict(info)
    except OperationFailure as exc:  # PyMongo maps NamespaceNotFound to empty already
        if exc.code != NAMESPACE_NOT_FOUND:
            raise
    return found


def collection_collation(collection: Collection[Any]) -> dict[str, Any] | None:
    """The default collation of a collection (``listCollections`` options), or None.

    Indexes created without a collation inherit it (MongoDB manual, "Collation").
    Returns None when the collection does not exist, has none, or it cannot be
    read (no ``listCollections`` privilege; mongomock does not implement it).
    """
    try:
        for info in collection.database.list_collections(filter={"name": collection.name}):
            collation = (info.get("options") or {}).get("collation")
            return dict(collation) if collation else None
    except (NotImplementedError, OperationFailure):
        return None
    return None


def inspect_collection(
    collection: Collection[Any], logical: str, retention: bool
) -> CollectionReport:
    """Compare a collection's indexes with the definitions of ``logical``.

    One ``listIndexes`` command (plus one ``listCollections`` only when an existing
    index has a collation). Changes nothing.

    :param Collection collection: the physical collection.
    :param str logical: its logical name (see :mod:`pynenc_mongo.schema`).
    :param bool retention: include the TTL indexes.
    :return: a :class:`CollectionReport`.
    :raises pymongo.errors.OperationFailure: without the ``listIndexes`` privilege.
    """
    existing = existing_indexes(collection)
    collation = None
    if any("collation" in info for info in existing.values()):
        collation = collection_collation(collection)
    wanted = indexes_for(logical, retention)
    statuses = []
    for spec in wanted:
        info = existing.get(spec.name)
        if info is not None:
            diffs = spec.differences(info, collation)
            if diffs:
                statuses.append(IndexStatus(spec, IndexState.DIFFERENT, spec.name, tuple(diffs)))
            else:
                statuses.append(IndexStatus(spec, IndexState.PRESENT))
            continue
        twin = next(
            (name for name, other in existing.items() if spec.same_keys(other)),
            None,
        )
        if twin is not None:
            diffs = spec.differences(existing[twin], collation)
            statuses.append(IndexStatus(spec, IndexState.OTHER_NAME, twin, tuple(diffs)))
        else:
            statuses.append(IndexStatus(spec, IndexState.MISSING))
    ours = {spec.name for spec in INDEXES if spec.collection == logical}
    in_the_way = {status.existing_name for status in statuses if status.existing_name}
    others = tuple(
        sorted(
            name
            for name in existing
            if name != ID_INDEX_NAME and name not in ours and name not in in_the_way
        )
    )
    return CollectionReport(logical, collection.name, tuple(statuses), others)


def missing_indexes(collection: Collection[Any], logical: str, retention: bool) -> list[IndexSpec]:
    """The definitions of ``logical`` that ``collection`` lacks entirely (no index with
    their name or keys); see :func:`inspect_collection` for the full picture."""
    return [status.spec for status in inspect_collection(collection, logical, retention).missing]


def index_models(specs: Iterable[IndexSpec]) -> list[IndexModel]:
    """PyMongo ``IndexModel`` objects for ``Collection.create_indexes``."""
    return [IndexModel(list(spec.keys), **spec.options()) for spec in specs]


def create_indexes(collection: Collection[Any], specs: Iterable[IndexSpec]) -> list[str]:
    """Create indexes in one ``createIndexes`` command (MongoDB builds them together,
    scanning the collection once; an index that already exists identically is a
    no-op). Creates the collection if needed.

    :param Collection collection: the physical collection.
    :param Iterable[IndexSpec] specs: the definitions to create.
    :return: the names created (or already present).
    :raises pymongo.errors.OperationFailure: code 13 without the ``createIndex``
        privilege action; 85/86 when an index in the way conflicts; 11000 when a
        unique index meets duplicate documents. None of the indexes is created then.
    """
    specs = list(specs)
    if not specs:
        return []
    if type(collection).__module__.startswith("mongomock"):
        # mongomock's ``create_indexes`` passes only unique, sparse, expireAfterSeconds
        # and name on and drops ``partialFilterExpression`` (a partial unique gate would
        # then admit one document per app, ever); its ``create_index`` keeps it.
        return [create_index(collection, spec) for spec in specs]
    return list(collection.create_indexes(index_models(specs)))


def create_index(collection: Collection[Any], spec: IndexSpec) -> str:
    """Create one index (``createIndexes`` is a no-op if it already exists identically)."""
    return collection.create_index(list(spec.keys), **spec.options())


# ---------------------------------------------------------------------------
# Lazy creation by the backend
# ---------------------------------------------------------------------------
_EnsureKey = tuple[int, str, str, bool]

_lock = threading.Lock()
_key_locks: dict[_EnsureKey, threading.Lock] = {}
_done: set[_EnsureKey] = set()
_warned: set[str] = set()


def _key(collection: Collection[Any], retention: bool) -> _EnsureKey:
    return (id(collection.database.client), collection.database.name, collection.name, retention)


def _key_lock(key: _EnsureKey) -> threading.Lock:
    with _lock:
        lock = _key_locks.get(key)
        if lock is None:
            lock = _key_locks[key] = threading.Lock()
        return lock


def _warn_once(topic: str, message: str, *args: Any) -> None:
    with _lock:
        if topic in _warned:
            return
        _warned.add(topic)
    logger.warning(message, *args)


def warn_once(topic: str, message: str, *args: Any) -> None:
    """Log ``message % args`` as a warning once per process and ``topic`` (forgotten by
    :func:`forget_ensured`)."""
    _warn_once(topic, message, *args)


def _problem_list(problems: Iterable[tuple[str, IndexStatus]], limit: int = 6) -> str:
    items = [f"{coll}.{status.spec.name} ({status.state.value})" for coll, status in problems]
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


class UniqueIndexState(StrEnum):
    """What this process knows of one unique index (see :func:`unique_index_state`)."""

    PRESENT = "present"
    """It exists as defined (or under another name with the same keys and options)."""
    MISSING = "missing"
    """It does not exist: not created (setting off, creation refused or failed), or
    an index in the way differs from it."""
    UNVERIFIED = "unverified"
    """Its existence could not be checked (no ``listIndexes`` privilege, or a build
    that did not finish in time)."""


_CollectionKey = tuple[int, str, str]
_unique: dict[_CollectionKey, dict[str, UniqueIndexState]] = {}


def _collection_key(collection: Collection[Any]) -> _CollectionKey:
    return (id(collection.database.client), collection.database.name, collection.name)


def _record_unique(
    collection: Collection[Any], specs: Iterable[IndexSpec], state: UniqueIndexState
) -> None:
    names = [spec.name for spec in specs if spec.unique]
    if names:
        with _lock:
            states = _unique.setdefault(_collection_key(collection), {})
            states.update(dict.fromkeys(names, state))


def _record_report(collection: Collection[Any], report: CollectionReport) -> None:
    """Record the unique indexes of ``report``: present, or missing (also when an
    index in the way differs: it does not enforce what the definition enforces)."""
    for status in report.statuses:
        same = status.state is IndexState.PRESENT or (
            status.state is IndexState.OTHER_NAME and not status.differences
        )
        state = UniqueIndexState.PRESENT if same else UniqueIndexState.MISSING
        _record_unique(collection, [status.spec], state)


def unique_index_state(collection: Collection[Any], name: str) -> UniqueIndexState | None:
    """What this process knows of the unique index ``name`` of ``collection``.

    :param Collection collection: the physical collection (after
        :func:`ensure_collection_indexes`).
    :param str name: the index name of a unique :class:`IndexSpec`.
    :return: the state, or None when the collection was not checked yet in this
        process (or ``name`` is not a unique index of it).
    """
    with _lock:
        return _unique.get(_collection_key(collection), {}).get(name)


def _warn_unique_missing(database: str, missing: list[tuple[str, IndexSpec]]) -> None:
    """One warning per process and index set, naming each missing unique index."""
    if not missing:
        return
    names = ", ".join(f"{coll}.{spec.name} {spec.describe()}" for coll, spec in missing)
    _warn_once(
        f"unique:{database}:{names}",
        "pynenc-mongo: unique indexes missing in database %r: %s. Writes whose race-safety "
        "rests on them can store duplicates (components that require them refuse those "
        "writes). Run `%s` to create them.",
        database,
        names,
        SETUP_SCRIPT,
    )


def _error_text(exc: PyMongoError) -> Any:
    details = getattr(exc, "details", None)
    return details.get("errmsg", exc) if isinstance(details, dict) else exc


def _create_missing(collection: Collection[Any], logical: str, retention: bool) -> None:
    """``mongo_create_indexes`` on: create what is missing, warn about conflicts.

    A refused ``listIndexes`` (code 13) is warned about once; the indexes then stay
    unverified and nothing is created (creating blind could fail on an index in the
    way, and a role without ``listIndexes`` rarely has ``createIndex``).
    """
    try:
        report = inspect_collection(collection, logical, retention)
    except OperationFailure as exc:
        if exc.code != UNAUTHORIZED:
            raise
        _warn_not_listed(collection, exc)
        _record_unique(collection, indexes_for(logical, retention), UniqueIndexState.UNVERIFIED)
        return
    _record_report(collection, report)
    unique_conflicts = [
        (collection.name, status.spec)
        for status in report.conflicts
        if status.spec.unique and (status.state is IndexState.DIFFERENT or status.differences)
    ]
    for status in report.conflicts:
        _warn_once(
            f"conflict:{collection.database.name}.{collection.name}.{status.spec.name}",
            "pynenc-mongo: index %s on %s not created: %s. Left as is; run `%s --check` "
            "for what to do.",
            status.spec.name,
            collection.name,
            status.explain(),
            SETUP_SCRIPT,
        )
    missing = [status.spec for status in report.missing]
    if not missing:
        _warn_unique_missing(collection.database.name, unique_conflicts)
        return
    try:
        create_indexes(collection, missing)
    except PyMongoError as exc:
        if not isinstance(exc, OperationFailure) or exc.code in AUTH_FAILED_CODES:
            if not isinstance(exc, NetworkTimeout):  # lost connection, no server: retry later
                raise
            # No reply within the socket timeout (mongo_socket_timeout_seconds): the
            # build goes on in the server (it is not aborted); asking again before
            # every operation would only wait again. The next process checks again.
            _record_unique(collection, missing, UniqueIndexState.UNVERIFIED)
            _warn_once(
                f"slow:{collection.database.name}.{collection.name}",
                "pynenc-mongo: building indexes %s on %s did not finish within the "
                "operation timeout (%s); the server goes on building them. Run `%s` "
                "for large collections.",
                ", ".join(spec.name for spec in missing),
                collection.name,
                exc,
                SETUP_SCRIPT,
            )
            return
        assert isinstance(exc, OperationFailure)
        _record_unique(collection, missing, UniqueIndexState.MISSING)
        _warn_unique_missing(
            collection.database.name,
            unique_conflicts + [(collection.name, spec) for spec in missing if spec.unique],
        )
        if exc.code == UNAUTHORIZED:
            _warn_once(
                "unauthorized",
                "pynenc-mongo: not authorized to create indexes on %s (%s); queries may scan "
                "collections. Have an operator run `%s` and set mongo_create_indexes=false "
                "(PYNENC__MONGO_CREATE_INDEXES=false).",
                collection.name,
                exc.details.get("errmsg", exc) if exc.details else exc,
                SETUP_SCRIPT,
            )
        else:
            _warn_once(
                f"failed:{collection.database.name}.{collection.name}",
                "pynenc-mongo: creating indexes %s on %s failed (code %s: %s); queries may "
                "scan the collection. Run `%s --check` for details.",
                ", ".join(spec.name for spec in missing),
                collection.name,
                exc.code,
                exc.details.get("errmsg", exc) if exc.details else exc,
                SETUP_SCRIPT,
            )
    else:
        _record_unique(collection, missing, UniqueIndexState.PRESENT)
        _warn_unique_missing(collection.database.name, unique_conflicts)


def _warn_not_listed(collection: Collection[Any], exc: OperationFailure) -> None:
    """``listIndexes`` refused (code 13): warn once per process, then work without."""
    _warn_once(
        "unauthorized-list",
        "pynenc-mongo: not authorized to list the indexes of %s (%s); indexes are neither "
        "checked nor created, so queries may scan and the unique indexes that make some "
        "writes race-safe are unverified. Have an operator run `%s`, then grant the "
        "listIndexes action or set mongo_create_indexes=false.",
        collection.name,
        _error_text(exc),
        SETUP_SCRIPT,
    )


def _check_layout(collection: Collection[Any], logical: str, retention: bool) -> None:
    """``mongo_create_indexes`` off: check every collection of the layout once and
    log one warning naming :data:`SETUP_SCRIPT` if any index is missing or different."""
    prefix = collection.name[: -len(logical)] if collection.name.endswith(logical) else ""
    names = CollectionNames(prefix)
    database = collection.database
    problems: list[tuple[str, IndexStatus]] = []
    unique_missing: list[tuple[str, IndexSpec]] = []
    try:
        for other in ALL_COLLECTIONS:
            physical = database[names[other]]
            report = inspect_collection(physical, other, retention)
            _record_report(physical, report)
            for st in report.missing + report.conflicts:
                problems.append((physical.name, st))
                if st.spec.unique and (st.state is not IndexState.OTHER_NAME or st.differences):
                    unique_missing.append((physical.name, st.spec))
    except OperationFailure as exc:
        if exc.code in AUTH_FAILED_CODES:
            raise
        for other in ALL_COLLECTIONS:
            _record_unique(
                database[names[other]], indexes_for(other, retention), UniqueIndexState.UNVERIFIED
            )
        if exc.code == UNAUTHORIZED:  # the privilege will not appear: do not ask again
            _warn_not_listed(collection, exc)
            with _lock:
                for other in ALL_COLLECTIONS:
                    _done.add(_key(database[names[other]], retention))
            return
        _warn_once(
            "check-failed",
            "pynenc-mongo: could not check the indexes in database %r (code %s: %s); "
            "mongo_create_indexes is off. Run `%s --check` to verify them.",
            database.name,
            exc.code,
            exc.details.get("errmsg", exc) if exc.details else exc,
            SETUP_SCRIPT,
        )
        return
    with _lock:
        for other in ALL_COLLECTIONS:
            _done.add(_key(database[names[other]], retention))
    if problems:
        unique_text = ""
        if unique_missing:
            unique_text = (
                " Unique indexes among them (writes whose race-safety rests on them can "
                "store duplicates; components that require them refuse those writes): "
                + ", ".join(f"{coll}.{spec.name}" for coll, spec in unique_missing)
                + "."
            )
        _warn_once(
            "missing",
            "pynenc-mongo: %d indexes missing or different in database %r and "
            "mongo_create_indexes is off: %s. Queries on those collections scan documents "
            "until `%s` creates them.%s",
            len(problems),
            database.name,
            _problem_list(problems),
            SETUP_SCRIPT,
            unique_text,
        )


def ensure_collection_indexes(
    collection: Collection[Any], logical: str, *, create: bool, retention: bool
) -> None:
    """Make sure ``collection`` has its indexes, once per process and collection.

    With ``create`` (``mongo_create_indexes``, default on): one ``listIndexes``,
    then one ``createIndexes`` with the missing ones only. Without it: the first
    call in the process checks every collection of the layout and logs one
    warning naming :data:`SETUP_SCRIPT` if any index is missing or different.

    Never drops an index. An index that cannot be listed or created (not
    authorized, code 13; conflicting index in the way; duplicates under a unique
    index) is logged once as a warning and the backend works without it. What is
    learnt of the unique indexes is kept for :func:`unique_index_state`.

    :param Collection collection: the physical collection.
    :param str logical: its logical name (see :mod:`pynenc_mongo.schema`).
    :param bool create: create missing indexes; when False only check and warn.
    :param bool retention: include the TTL indexes (``mongo_retention_days`` > 0).
    :raises pymongo.errors.PyMongoError: connection failures and refused
        credentials (the backend translates them); the check is then retried on
        the next call.
    """
    key = _key(collection, retention)
    if key in _done:
        return
    with _key_lock(key):
        if key in _done:
            return
        if create:
            _create_missing(collection, logical, retention)
        else:
            _check_layout(collection, logical, retention)
        with _lock:
            _done.add(key)


def forget_ensured() -> None:
    """Forget which collections were checked and which warnings were logged (tests;
    after dropping a database)."""
    with _lock:
        _done.clear()
        _warned.clear()
        _unique.clear()


def _after_fork_in_child() -> None:
    """A lock held by another thread at ``fork`` would stay held in the child."""
    global _lock
    _lock = threading.Lock()
    _key_locks.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


__all__ = [
    "SETUP_SCRIPT",
    "CollectionReport",
    "UniqueIndexState",
    "IndexState",
    "IndexStatus",
    "create_index",
    "create_indexes",
    "ensure_collection_indexes",
    "existing_indexes",
    "forget_ensured",
    "inspect_collection",
    "missing_indexes",
    "unique_index_state",
    "warn_once",
]
