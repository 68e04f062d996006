"""Idempotent write helpers shared by the sync backend and the async writer,
and a retry-safe way to read a whole query result."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from pynenc_mongo import errors
from pynenc_mongo.errors import is_transient, with_retry

DUPLICATE_KEY = 11000


def only_duplicates(exc: BulkWriteError) -> bool:
    """True when every error of an unordered bulk insert is a duplicate key."""
    errors = exc.details.get("writeErrors", [])
    return bool(errors) and all(err.get("code") == DUPLICATE_KEY for err in errors)


def insert_if_absent(collection: Any, docs: list[dict[str, Any]]) -> list[int]:
    """Insert ``docs`` in one unordered ``insert_many``; existing ones are kept.

    Documents whose unique key (or client-made ``_id``) already exists are
    skipped, which makes the call idempotent: retrying it after a lost reply, or
    racing another process for the same invocation, leaves one document each.

    :param collection: a PyMongo or mongomock ``Collection``.
    :param list[dict] docs: documents to insert (may be empty).
    :return: positions in ``docs`` of the documents skipped as duplicates (a
        document inserted by an earlier attempt of the same call counts too).
    :raises BulkWriteError: for any error other than a duplicate key.
    """
    if not docs:
        return []
    try:
        collection.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        if not only_duplicates(exc):
            raise
        return sorted(int(err["index"]) for err in exc.details.get("writeErrors", []))
    except DuplicateKeyError:
        return list(range(len(docs)))
    return []


def find_all(
    collection: Any,
    filter_: dict[str, Any],
    projection: dict[str, Any] | None = None,
    sort: Sequence[tuple[str, int]] | None = None,
) -> list[dict[str, Any]]:
    """Every document matching ``filter_``, read with retries (see ``with_retry``).

    Each attempt opens a new cursor: a PyMongo cursor that lost its connection
    is dead and would yield nothing more, so re-reading the same cursor would
    silently return a partial or empty result.

    :param collection: a PyMongo or mongomock ``Collection``.
    :param dict filter_: the query.
    :param dict | None projection: fields to return.
    :param sort: ``[(field, 1 | -1), ...]`` or None.
    :return: the documents.
    """

    def read() -> list[dict[str, Any]]:
        cursor = collection.find(filter_, projection)
        if sort:
            cursor = cursor.sort(list(sort))
        return list(cursor)

    return with_retry(read)


def upsert_retrying_duplicate[T](func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run an idempotent upsert, with retries, treating a duplicate-key race as retryable.

    Two writers upserting the same new document at once can both try to insert
    it; the loser gets ``DuplicateKeyError`` (MongoDB retries some of these cases
    itself, mongomock never does). Running the upsert again then matches the
    document the winner inserted.

    :param func: e.g. ``collection.update_one``; must be an upsert.
    :return: what ``func`` returns.
    :raises DuplicateKeyError: if the duplicate persists after three attempts.
    """
    for attempt in range(3):
        try:
            return with_retry(func, *args, **kwargs)
        except DuplicateKeyError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def iter_resumable(
    collection: Any,
    filter_: dict[str, Any],
    projection: dict[str, Any] | None,
    order: tuple[str, str],
    batch_size: int,
) -> Iterator[dict[str, Any]]:
    """Iterate documents sorted by ``order``, resuming where it stopped after a
    transient error instead of failing or starting over.

    PyMongo retries the first batch of a read once, but not the ``getMore``
    of a long cursor. Here a lost cursor is re-opened after the last document
    yielded: ``order`` must be two fields whose pair is unique and present in
    every returned document (for example ``("ts_us", "_id")``). At most
    :data:`~pynenc_mongo.errors.RETRY_ATTEMPTS` failures in a row, with backoff.

    :param collection: a PyMongo or mongomock ``Collection``.
    :param dict filter_: the query.
    :param dict | None projection: fields to return (must keep both ``order`` fields).
    :param tuple order: ``(first, second)`` sort fields, ascending.
    :param int batch_size: cursor batch size.
    :return: an iterator over the documents, each once, in order.
    """
    first, second = order
    last: tuple[Any, Any] | None = None
    failures = 0
    while True:
        query = filter_
        if last is not None:
            # Resume with a plain range on ``first`` (served by the same index as the
            # original query) and skip the few documents at ``last[0]`` already yielded.
            bounds = filter_.get(first)
            bounds = dict(bounds) if isinstance(bounds, dict) else {}
            bounds.pop("$gt", None)
            bounds["$gte"] = last[0]
            query = {**filter_, first: bounds}
        cursor = (
            collection.find(query, projection)
            .sort([(first, 1), (second, 1)])
            .batch_size(max(batch_size, 1))
        )
        try:
            for doc in cursor:
                if last is not None and (doc[first], doc[second]) <= last:
                    continue
                last = (doc[first], doc[second])
                failures = 0
                yield doc
            return
        except PyMongoError as exc:
            failures += 1
            if not is_transient(exc) or failures >= errors.RETRY_ATTEMPTS:
                raise
            time.sleep(
                min(errors.RETRY_WAIT_MIN_SECONDS * 2**failures, errors.RETRY_WAIT_MAX_SECONDS)
            )
