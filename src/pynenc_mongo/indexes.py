"""Index management: lazy creation by the backend, planning for the setup script.

The index definitions themselves live in :data:`pynenc_mongo.schema.INDEXES`.
The backend calls :func:`ensure_collection_indexes` on first use of each
collection, once per process; with ``mongo_create_indexes`` off it only checks
and logs one warning naming the setup script when indexes are missing.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from pynenc_mongo.schema import IndexSpec, indexes_for

logger = logging.getLogger("pynenc_mongo")

SETUP_SCRIPT = "pynenc-mongo-setup-indexes"

_lock = threading.Lock()
_done: set[tuple[int, str, str]] = set()
_warned = False


def _key(collection: Collection[Any]) -> tuple[int, str, str]:
    return (id(collection.database.client), collection.database.name, collection.name)


def existing_indexes(collection: Collection[Any]) -> dict[str, dict[str, Any]]:
    """Name -> index info (``key`` as a list of pairs, plus options) of a collection."""
    found: dict[str, dict[str, Any]] = {}
    try:
        for info in collection.list_indexes():
            found[info["name"]] = dict(info)
    except OperationFailure as exc:  # namespace does not exist yet (code 26)
        if exc.code != 26:
            raise
    return found


def missing_indexes(collection: Collection[Any], logical: str, retention: bool) -> list[IndexSpec]:
    """The :class:`IndexSpec` of ``logical`` that ``collection`` lacks (compared by name)."""
    present = existing_indexes(collection)
    return [spec for spec in indexes_for(logical, retention) if spec.name not in present]


def create_index(collection: Collection[Any], spec: IndexSpec) -> str:
    """Create one index (``createIndexes`` is a no-op if it already exists identically)."""
    return collection.create_index(list(spec.keys), **spec.options())


def ensure_collection_indexes(
    collection: Collection[Any], logical: str, *, create: bool, retention: bool
) -> None:
    """Make sure ``collection`` has its indexes, once per process and collection.

    :param Collection collection: the physical collection.
    :param str logical: its logical name (see :mod:`pynenc_mongo.schema`).
    :param bool create: create missing indexes (``mongo_create_indexes``); when
        False, only check and log one warning naming :data:`SETUP_SCRIPT`.
    :param bool retention: include the TTL indexes.
    """
    global _warned
    key = _key(collection)
    if key in _done:
        return
    with _lock:
        if key in _done:
            return
        if create:
            for spec in indexes_for(logical, retention):
                create_index(collection, spec)
        else:
            missing = missing_indexes(collection, logical, retention)
            if missing and not _warned:
                _warned = True
                logger.warning(
                    "pynenc-mongo: indexes missing on %s (%s) and mongo_create_indexes is off; "
                    "queries will scan. Run `%s` to create them.",
                    collection.name,
                    ", ".join(spec.name for spec in missing),
                    SETUP_SCRIPT,
                )
        _done.add(key)


def forget_ensured() -> None:
    """Forget which collections were checked (tests; after dropping a database)."""
    global _warned
    with _lock:
        _done.clear()
        _warned = False
