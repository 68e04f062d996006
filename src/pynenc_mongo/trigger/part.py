"""What every part of ``MongoTrigger`` shares: the app, the store, helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pymongo.collection import Collection

from pynenc_mongo.schema import F_APP
from pynenc_mongo.schema import trigger as layout
from pynenc_mongo.store import MongoStore

if TYPE_CHECKING:
    from pynenc.app import Pynenc

    from pynenc_mongo.trigger.config import ConfigTriggerMongo

#: Ids per ``$in`` list and documents per purge batch (bounded queries).
BATCH_SIZE = 500


def aware_utc(value: Any) -> datetime | None:
    """A stored date as a UTC-aware ``datetime`` with ``tzinfo is datetime.UTC``.

    PyMongo returns its own fixed-offset ``tzinfo`` (or a naive datetime without
    ``tz_aware``), which does not compare equal to ``datetime.UTC``.

    :param Any value: a ``datetime`` (naive means UTC) or None.
    :return: the datetime in UTC, or None.
    """
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def to_millis(moment: datetime) -> datetime:
    """``moment`` in UTC truncated to milliseconds (BSON dates' precision), so a value
    read back compares equal to the one written. Naive means UTC."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def batch_size() -> int:
    """:data:`BATCH_SIZE`, read at each use (tests make it smaller)."""
    return BATCH_SIZE


def chunks[T](items: Sequence[T], size: int | None = None) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size`` (default :data:`BATCH_SIZE`)."""
    size = size or batch_size()
    for start in range(0, len(items), size):
        yield items[start : start + size]


def unique(items: Iterable[str | None]) -> list[str]:
    """The non-None strings of ``items``, first occurrence order, without repeats."""
    return list(dict.fromkeys(item for item in items if item is not None))


class TriggerPart:
    """Base of the parts of :class:`~pynenc_mongo.trigger.MongoTrigger`.

    :ivar Pynenc app: the pynenc app (set by ``BaseTrigger.__init__``).
    :ivar MongoStore _store: the app's store; every operation goes through it.
    """

    app: Pynenc
    _store: MongoStore

    def _settings(self) -> ConfigTriggerMongo:
        """The trigger's resolved settings (``MongoTrigger.conf``; read at each use, since
        pynenc's tests change them on the cached object)."""
        raise NotImplementedError  # pragma: no cover (MongoTrigger overrides it)

    def describe_target(self) -> str:
        """Where this trigger writes: redacted URL and database (for messages)."""
        return self._store.describe_target()

    def _by_id(self, id_: str, **fields: Any) -> dict[str, Any]:
        """The filter of the document keyed by (app id, ``id_``) (conditions, claims),
        with ``fields`` as further conditions: a point lookup on the ``_id`` index.
        See :func:`pynenc_mongo.schema.trigger.document_id`."""
        return {
            "_id": layout.document_id(self._store.app_id, id_),
            F_APP: self._store.app_id,
            **fields,
        }

    def _collection(self, logical: str) -> Collection[dict[str, Any]]:
        """The physical collection of ``logical`` (indexes ensured)."""
        return self._store.collection(logical)

    def _find(
        self,
        logical: str,
        filter_: dict[str, Any],
        projection: dict[str, Any] | None = None,
        sort: list[tuple[str, int]] | None = None,
        skip: int = 0,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Read every matching document (retried: a read is idempotent; each attempt
        opens a new cursor).

        :param str logical: logical collection name.
        :param dict filter_: the query (starts with ``app_id``).
        :param dict | None projection: fields to return.
        :param list | None sort: ``[(field, 1 | -1), ...]``.
        :param int skip: documents to skip (after sorting).
        :param int | None limit: at most this many (None: all; 0 returns none).
        :return: the documents.
        """
        if limit is not None and limit <= 0:
            return []
        collection = self._collection(logical)

        def read() -> list[dict[str, Any]]:
            cursor = collection.find(filter_, projection)
            if sort:
                cursor = cursor.sort(sort)
            if skip:
                cursor = cursor.skip(skip)
            if limit is not None:
                cursor = cursor.limit(limit)
            return list(cursor)

        return self._store.retry(read)

    def _retry[R](self, func: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """:meth:`MongoStore.retry`: for idempotent operations only."""
        return self._store.retry(func, *args, **kwargs)
