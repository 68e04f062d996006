"""What every part of the state backend shares: the base of the parts and the id check.

Each part (:mod:`.invocations`, :mod:`.history`, :mod:`.results`, :mod:`.workflows`,
:mod:`.runners`, :mod:`.app_info`, :mod:`.async_reads`) is a plain object holding the
app's :class:`~pynenc_mongo.store.MongoStore`;
:class:`~pynenc_mongo.state_backend.MongoStateBackend` makes one of each and maps
pynenc's methods onto them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pymongo.collection import Collection

from pynenc_mongo.errors import translate
from pynenc_mongo.store import MongoStore

#: Documents per server batch when streaming a large result set.
PAGE_SIZE = 1000
#: Server-side deadline of one streamed query (``maxTimeMS``: the server's processing
#: time, cumulative over the cursor's batches), in milliseconds.
QUERY_MAX_TIME_MS = 60_000

if TYPE_CHECKING:
    from pynenc.models.call_dto import CallDTO
    from pynenc.models.invocation_dto import InvocationDTO

#: An invocation's two stored DTOs (both frozen: they never change once stored).
DTOPair = tuple["InvocationDTO", "CallDTO"]


def check_str(name: str, value: Any) -> str:
    """Return ``value`` if it is a ``str``; refuse anything else.

    Identifiers go into query filters as values: a dict such as ``{"$ne": None}``
    would be read by MongoDB as an operator and match other documents.

    :param str name: the argument's name, for the message.
    :param Any value: the value received.
    :return: ``value``.
    :raises TypeError: naming ``name`` and the type received.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a str, got {type(value).__name__}")
    return value


class StorePart:
    """Base of the state backend's parts: the store, the app id, the error target.

    :param MongoStore store: the app's store; every MongoDB operation goes through it.

    ``describe_target()`` lets :func:`~pynenc_mongo.errors.translate_errors` decorate
    a part's methods as it decorates the backend's.
    """

    def __init__(self, store: MongoStore) -> None:
        self.store = store
        self.app_id = store.app_id
        self._unique_checked: set[str] = set()

    def require_unique(self, logical: str) -> None:
        """:meth:`MongoStore.require_unique` for every unique index of ``logical``,
        before an upsert whose race-safety rests on it (issue 16, item 12).

        The first call per collection asks the store (which ensures the indexes, one
        ``listIndexes`` per process); once the indexes are known present (or could not
        be verified: one warning), later calls are a set lookup, no I/O and no lock.

        :raises pynenc_mongo.errors.MongoIndexMissingError: a unique index is missing
            (refused again on every call, so creating it later lets writes through).
        """
        if logical not in self._unique_checked:
            self.store.require_unique(logical)
            self._unique_checked.add(logical)

    def stream(
        self,
        collection: Collection[dict[str, Any]],
        filter_: dict[str, Any],
        projection: dict[str, Any] | None = None,
        sort: Sequence[tuple[str, int]] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The documents matching ``filter_``, streamed in server batches of
        :data:`PAGE_SIZE` with a ``maxTimeMS`` of :data:`QUERY_MAX_TIME_MS`, instead of
        loaded whole (issue 16, item 9).

        Opening the cursor and its first batch run under the retry policy
        (:meth:`MongoStore.retry`: a new cursor per attempt); an error after
        documents were yielded is raised (translated, naming the host): the caller
        has a partial result and may start over. Ordered results with a unique sort
        key use :func:`pynenc_mongo.operations.iter_resumable` instead, which resumes.

        :return: a lazy iterator; the query runs when iteration starts.
        """

        def first_batch() -> tuple[Any, list[dict[str, Any]]]:
            cursor = collection.find(
                filter_, projection, batch_size=PAGE_SIZE, max_time_ms=QUERY_MAX_TIME_MS
            )
            if sort:
                cursor = cursor.sort(list(sort))
            head: list[dict[str, Any]] = []
            for doc in cursor:
                head.append(doc)
                if len(head) >= PAGE_SIZE:
                    break
            return cursor, head

        def run() -> Iterator[dict[str, Any]]:
            try:
                cursor, head = self.store.retry(first_batch)
                yield from head
                if len(head) >= PAGE_SIZE:
                    yield from cursor
            except Exception as exc:
                mapped = translate(exc, self.describe_target())
                if mapped is exc:
                    raise
                raise mapped from None

        return run()

    def describe_target(self) -> str:
        """Where the store writes: redacted URL and database (for error messages)."""
        return self.store.describe_target()


__all__ = ["DTOPair", "StorePart", "check_str"]
