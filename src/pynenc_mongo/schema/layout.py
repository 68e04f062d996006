"""Building blocks of the storage layout: index definitions and time encoding.

:class:`IndexSpec` declares one index; each component's module in this package
lists its collections and their indexes with it, and :mod:`pynenc_mongo.schema`
joins them into the one catalogue that lazy index creation, the index setup
script and the query audit read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

#: Index options that change what an index does, compared by :meth:`IndexSpec.differences`
#: (MongoDB manual, "Index Properties"); others (``v``, ``background``, ``ns``) are ignored.
COMPARED_INDEX_OPTIONS: Final = (
    "unique",
    "sparse",
    "expireAfterSeconds",
    "partialFilterExpression",
    "hidden",
    "collation",
)
#: The field every document of every component carries: the pynenc app it belongs to.
F_APP: Final = "app_id"
#: The date at which MongoDB's TTL monitor deletes a document (retention).
F_EXPIRE: Final = "expire_at"

#: Name of the index MongoDB creates on ``_id`` in every collection.
ID_INDEX_NAME: Final = "_id_"


def _direction(value: Any) -> int | str:
    """Normalize a key direction from ``listIndexes`` (``1``, ``1.0``, ``Int64(1)``,
    ``"text"``...) to an ``int`` when it is a number, else keep the string."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float) and float(value).is_integer():
        return int(value)
    return str(value)


def key_pairs(info: Mapping[str, Any]) -> tuple[tuple[str, int | str], ...]:
    """The ``key`` of a ``listIndexes`` entry as ``((field, direction), ...)`` in order.

    :param Mapping info: one document of ``Collection.list_indexes()`` (its ``key``
        is a document or a list of pairs, as PyMongo and mongomock return it).
    :return: the normalized key pattern.
    """
    key = info.get("key") or {}
    items = key.items() if isinstance(key, Mapping) else key
    return tuple((str(name), _direction(direction)) for name, direction in items)


def format_keys(keys: Iterable[tuple[str, Any]]) -> str:
    """``((a, 1), (b, -1))`` -> ``"{a: 1, b: -1}"`` (the mongosh spelling, for messages)."""
    return "{" + ", ".join(f"{name}: {direction}" for name, direction in keys) + "}"


@dataclass(frozen=True)
class IndexSpec:
    """One index the backend needs.

    :ivar str collection: logical collection name (without prefix).
    :ivar tuple keys: ``((field, 1 | -1), ...)`` in index order.
    :ivar str name: the index name created in MongoDB.
    :ivar bool unique: a unique index.
    :ivar int | None expire_after_seconds: set for TTL indexes (MongoDB manual,
        "TTL Indexes"); ``0`` means "expire at the date in the field".
    :ivar bool retention_only: created only when ``mongo_retention_days`` > 0.
    :ivar Mapping | None partial_filter: the index's ``partialFilterExpression``
        (MongoDB manual, "Partial Indexes"): only documents matching it are indexed,
        e.g. ``{"status": "running"}`` for a unique index that admits one running row.
    """

    collection: str
    keys: tuple[tuple[str, int], ...]
    name: str
    unique: bool = False
    expire_after_seconds: int | None = None
    retention_only: bool = False
    partial_filter: Mapping[str, Any] | None = field(default=None, hash=False)

    @property
    def fields(self) -> tuple[str, ...]:
        """The indexed field paths, in index order."""
        return tuple(name for name, _direction in self.keys)

    def options(self) -> dict[str, Any]:
        """Keyword options for ``Collection.create_index`` (besides the keys)."""
        opts: dict[str, Any] = {"name": self.name}
        if self.unique:
            opts["unique"] = True
        if self.expire_after_seconds is not None:
            opts["expireAfterSeconds"] = self.expire_after_seconds
        if self.partial_filter is not None:
            opts["partialFilterExpression"] = dict(self.partial_filter)
        return opts

    def describe(self) -> str:
        """Keys and options as a short text, e.g. ``{app_id: 1, invocation_id: 1} unique``."""
        text = format_keys(self.keys)
        if self.unique:
            text += " unique"
        if self.expire_after_seconds is not None:
            text += f" TTL (expireAfterSeconds: {self.expire_after_seconds})"
        if self.partial_filter is not None:
            text += f" partial {dict(self.partial_filter)}"
        return text

    def same_keys(self, info: Mapping[str, Any]) -> bool:
        """True when the ``listIndexes`` entry ``info`` has exactly this key pattern."""
        return key_pairs(info) == tuple((name, _direction(d)) for name, d in self.keys)

    def expected_options(
        self, collection_collation: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The value of each of :data:`COMPARED_INDEX_OPTIONS` an index built from this
        spec has: options not set are ``False``/``None``, and ``collation`` is the
        collection's default collation (an index created without one inherits it;
        MongoDB manual, "Collation").

        :param Mapping | None collection_collation: the collection's default collation
            as ``listCollections`` reports it, or None.
        :return: ``{option: value}`` for every compared option.
        """
        return {
            "unique": self.unique,
            "sparse": False,
            "expireAfterSeconds": self.expire_after_seconds,
            "partialFilterExpression": (
                dict(self.partial_filter) if self.partial_filter is not None else None
            ),
            "hidden": False,
            "collation": dict(collection_collation) if collection_collation else None,
        }

    def differences(
        self, info: Mapping[str, Any], collection_collation: Mapping[str, Any] | None = None
    ) -> list[str]:
        """How an existing index differs from this definition, one text per difference.

        :param Mapping info: one document of ``Collection.list_indexes()``.
        :param Mapping | None collection_collation: see :meth:`expected_options`.
        :return: e.g. ``["keys: expected {a: 1}, found {b: 1}", "unique: expected
            True, found False"]``; empty when the index is what this spec defines
            (the name is not compared).
        """
        found_keys = key_pairs(info)
        out = []
        if not self.same_keys(info):
            out.append(f"keys: expected {format_keys(self.keys)}, found {format_keys(found_keys)}")
        for option, expected in self.expected_options(collection_collation).items():
            found = info.get(option)
            if option in ("unique", "sparse", "hidden"):
                found = bool(found)
            elif option == "expireAfterSeconds" and found is not None:
                found = _direction(found)
            elif isinstance(found, Mapping):
                found = dict(found)
            if found != expected:
                out.append(f"{option}: expected {expected!r}, found {found!r}")
        return out


# ---------------------------------------------------------------------------
# Time
# ---------------------------------------------------------------------------
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(moment: datetime) -> int:
    """Microseconds since the Unix epoch, exact (no float rounding).

    Naive datetimes are taken as UTC (pynenc's timestamps are UTC-aware).
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(micros: int) -> datetime:
    """Inverse of :func:`to_us`: a UTC-aware datetime."""
    return _EPOCH + timedelta(microseconds=int(micros))


def ttl_index(
    collection: str, field_name: str = F_EXPIRE, *, retention_only: bool = True
) -> IndexSpec:
    """The TTL index of ``collection``: documents go once the date in ``field_name``
    passes (``expireAfterSeconds: 0``; MongoDB manual, "Expire Data from Collections by
    Setting TTL"). The TTL monitor runs about every 60 s, so expiry is never exact.

    :param str collection: logical collection name.
    :param str field_name: the Date field (default ``expire_at``).
    :param bool retention_only: created only when ``mongo_retention_days`` > 0
        (default); False for TTL indexes a component always needs (claims).
    :return: the index definition, named ``<collection>_ttl``.
    """
    return IndexSpec(
        collection,
        ((field_name, 1),),
        f"{collection}_ttl",
        expire_after_seconds=0,
        retention_only=retention_only,
    )
