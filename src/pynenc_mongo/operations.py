"""Idempotent write helpers shared by the sync backend and the async writer,
and a retry-safe way to read a whole query result."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from pynenc_mongo import errors, write_outcomes
from pynenc_mongo.errors import is_transient, with_retry

DUPLICATE_KEY = 11000

logger = logging.getLogger("pynenc_mongo")


def only_duplicates(exc: BulkWriteError) -> bool:
    """True when an unordered bulk insert left every document stored or already present.

    That is: every ``writeErrors`` entry is a duplicate key, and there is at least
    one of them or a write concern error. ``writeConcernErrors`` (code 64
    WriteConcernFailed on ``wtimeout``, 100 UnsatisfiableWriteConcern) come back
    *after* the primary applied the writes, so they do not make a document
    unwritten (MongoDB manual, "Write Concern"; "maybe applied" is not "not
    applied").
    """
    details = exc.details or {}
    errors_ = details.get("writeErrors") or []
    if not errors_ and not details.get("writeConcernErrors"):
        return False
    return all(err.get("code") == DUPLICATE_KEY for err in errors_)


def insert_if_absent(collection: Any, docs: list[dict[str, Any]]) -> list[int]:
    """Insert ``docs`` in one unordered ``insert_many``; existing ones are kept.

    Documents whose unique key (or client-made ``_id``) already exists are
    skipped, which makes the call idempotent: retrying it after a lost reply, or
    racing another process for the same invocation, leaves one document each.

    A bulk error holding only duplicates and write concern errors is no failure:
    every document is stored (the write concern failure is logged as a warning:
    replication is unconfirmed). Callers must not treat any other error as "none
    stored" either: :func:`surely_unwritten` tells which documents surely were not.

    :param collection: a PyMongo or mongomock ``Collection``.
    :param list[dict] docs: documents to insert (may be empty).
    :return: positions in ``docs`` of the documents skipped as duplicates (a
        document inserted by an earlier attempt of the same call counts too).
    :raises BulkWriteError: for any per-document error other than a duplicate key
        (the other documents of the batch may be stored).
    """
    if not docs:
        return []
    try:
        collection.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        if not only_duplicates(exc):
            raise
        details = exc.details or {}
        concern = details.get("writeConcernErrors") or []
        if concern:
            logger.warning(
                "pynenc-mongo: %d documents written to %s, but the write concern was not "
                "satisfied (%s); replication is unconfirmed",
                len(docs),
                getattr(collection, "name", "?"),
                "; ".join(f"code {e.get('code')}: {e.get('errmsg', '')}" for e in concern)[:300],
            )
        return sorted(int(err["index"]) for err in details.get("writeErrors") or [])
    except DuplicateKeyError:
        return list(range(len(docs)))
    return []


def surely_unwritten(exc: BaseException, count: int) -> list[int]:
    """Positions of the documents that a failed :func:`insert_if_absent` of ``count``
    documents surely did not store, and that no earlier attempt can have stored:
    the value pieces only they reference may be deleted.

    * a ``BulkWriteError``: the ``writeErrors`` positions rejected for a reason other
      than a duplicate key (:func:`~pynenc_mongo.errors.rejected_positions`); every
      other document may be stored;
    * one document (``count == 1``) refused before writing (e.g. ``DocumentTooLarge``,
      validation): ``[0]``;
    * anything else (connection lost, timeout, write concern error, a client-side
      error in a later batch after earlier ones were sent): ``[]``.

    :param BaseException exc: what :func:`insert_if_absent` raised.
    :param int count: how many documents it was given.
    :return: sorted positions.
    """
    if isinstance(exc, BulkWriteError):
        details = exc.details or {}
        duplicates = {
            int(err["index"])
            for err in details.get("writeErrors") or []
            if err.get("code") == DUPLICATE_KEY
        }
        return sorted(write_outcomes.rejected_positions(exc) - duplicates)
    if (
        count == 1
        and not isinstance(exc, DuplicateKeyError)
        and write_outcomes.is_surely_not_applied(exc)
    ):
        return [0]
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

    return with_retry(read_all, collection, filter_, projection, sort)


def read_all(
    collection: Any,
    filter_: dict[str, Any],
    projection: dict[str, Any] | None = None,
    sort: Sequence[tuple[str, int]] | None = None,
) -> list[dict[str, Any]]:
    """One attempt of :func:`find_all`: a new cursor, read to the end.

    :return: the documents matching ``filter_`` (sorted by ``sort`` when given).
    """
    cursor = collection.find(filter_, projection)
    if sort:
        cursor = cursor.sort(list(sort))
    return list(cursor)


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
