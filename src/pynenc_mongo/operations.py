"""Idempotent write helpers shared by the sync backend and the async writer."""

from __future__ import annotations

from typing import Any

from pymongo.errors import BulkWriteError, DuplicateKeyError

DUPLICATE_KEY = 11000


def only_duplicates(exc: BulkWriteError) -> bool:
    """True when every error of an unordered bulk insert is a duplicate key."""
    errors = exc.details.get("writeErrors", [])
    return bool(errors) and all(err.get("code") == DUPLICATE_KEY for err in errors)


def insert_if_absent(collection: Any, docs: list[dict[str, Any]]) -> None:
    """Insert ``docs`` in one unordered ``insert_many``; existing ones are kept.

    Documents whose unique key (or client-made ``_id``) already exists are
    skipped, which makes the call idempotent: retrying it after a lost reply, or
    racing another process for the same invocation, leaves one document each.

    :param collection: a PyMongo or mongomock ``Collection``.
    :param list[dict] docs: documents to insert (may be empty).
    :raises BulkWriteError: for any error other than a duplicate key.
    """
    if not docs:
        return
    try:
        collection.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        if not only_duplicates(exc):
            raise
    except DuplicateKeyError:
        pass
