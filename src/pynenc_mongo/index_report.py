"""Comparing a collection's indexes with the catalogue, and creating them.

:func:`inspect_collection` reads ``listIndexes`` and says, for each index the catalogue
(:data:`pynenc_mongo.schema.INDEXES`) defines, whether it is *present*, *missing*,
*different* (an index with its name exists with other keys or options) or *other_name*
(its keys are indexed under another name, which MongoDB refuses to duplicate).
:func:`create_indexes` creates the missing ones in one ``createIndexes`` command per
collection (one collection scan). Used by lazy creation (:mod:`pynenc_mongo.indexes`)
and by the setup script (:mod:`pynenc_mongo.cli`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pymongo import IndexModel
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from pynenc_mongo.schema import ID_INDEX_NAME, INDEXES, IndexSpec, format_keys, indexes_for

#: MongoDB error codes (MongoDB manual, "Error Codes").
NAMESPACE_NOT_FOUND = 26


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
        partial = [spec for spec in specs if spec.partial_filter is not None]
        plain = [spec for spec in specs if spec.partial_filter is None]
        names = list(collection.create_indexes(index_models(plain))) if plain else []
        return names + [create_index(collection, spec) for spec in partial]
    return list(collection.create_indexes(index_models(specs)))


def create_index(collection: Collection[Any], spec: IndexSpec) -> str:
    """Create one index (``createIndexes`` is a no-op if it already exists identically)."""
    return collection.create_index(list(spec.keys), **spec.options())
