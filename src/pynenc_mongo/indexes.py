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

The backend never drops an index, and an index that could not be created or
listed (a role without the ``listIndexes`` or ``createIndex`` privilege action,
code 13) fails no read: it logs a warning once and works without it (queries
scan). The exception is below: writes that rest on a unique index known missing.

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
import time
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import NetworkTimeout, OperationFailure, PyMongoError

from pynenc_mongo.errors import AUTH_FAILED_CODES
from pynenc_mongo.index_report import (
    NAMESPACE_NOT_FOUND,
    CollectionReport,
    IndexState,
    IndexStatus,
    collection_collation,
    create_index,
    create_indexes,
    existing_indexes,
    index_models,
    inspect_collection,
    missing_indexes,
)
from pynenc_mongo.schema import (
    ALL_COLLECTIONS,
    CollectionNames,
    IndexSpec,
    indexes_for,
)

logger = logging.getLogger("pynenc_mongo")

#: The console script that creates the indexes (``scripts/setup_indexes`` in a clone).
SETUP_SCRIPT = "pynenc-mongo-setup-indexes"

#: MongoDB error codes (MongoDB manual, "Error Codes").
UNAUTHORIZED = 13
#: IndexAlreadyExists, IndexOptionsConflict, IndexKeySpecsConflict.
INDEX_CONFLICT_CODES = frozenset({68, 85, 86})


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


#: Shortest time, in seconds, between two re-checks of a collection whose unique index
#: was found missing (:func:`recheck_missing_unique`): a running worker sees the
#: index an operator created without a restart, at one ``listIndexes`` per interval.
RECHECK_MISSING_SECONDS = 10.0
_rechecked: dict[_CollectionKey, float] = {}


def recheck_missing_unique(collection: Collection[Any], logical: str, retention: bool) -> None:
    """Look again, at most once per :data:`RECHECK_MISSING_SECONDS` per collection,
    whether the unique indexes of ``collection`` recorded missing now exist (an
    operator ran :data:`SETUP_SCRIPT`), and record what is found.

    :param Collection collection: the physical collection.
    :param str logical: its logical name.
    :param bool retention: whether its TTL indexes are part of the layout.
    The states found are recorded; read them with :func:`unique_index_state`.

    :raises pymongo.errors.PyMongoError: the ``listIndexes`` failed; nothing recorded
        (a refusal, code 13, is recorded as unverified instead).
    """
    key = _collection_key(collection)
    now = time.monotonic()
    with _lock:
        last = _rechecked.get(key)
        if last is not None and now - last < RECHECK_MISSING_SECONDS:
            return
        _rechecked[key] = now
    try:
        report = inspect_collection(collection, logical, retention)
    except OperationFailure as exc:
        if exc.code != UNAUTHORIZED:
            raise
        _record_unique(collection, indexes_for(logical, retention), UniqueIndexState.UNVERIFIED)
        return
    _record_report(collection, report)


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
        _rechecked.clear()


def _after_fork_in_child() -> None:
    """A lock held by another thread at ``fork`` would stay held in the child."""
    global _lock
    _lock = threading.Lock()
    _key_locks.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


__all__ = [
    "CollectionReport",
    "IndexState",
    "IndexStatus",
    "NAMESPACE_NOT_FOUND",
    "SETUP_SCRIPT",
    "UniqueIndexState",
    "collection_collation",
    "create_index",
    "create_indexes",
    "ensure_collection_indexes",
    "existing_indexes",
    "forget_ensured",
    "index_models",
    "inspect_collection",
    "missing_indexes",
    "unique_index_state",
    "warn_once",
]
