"""Values inline or as pieces: the part of :class:`~pynenc_mongo.store.MongoStore` that
stores a serialized value (a result, an exception, an argument, a workflow-data value)
in its owning document, or above ``mongo_inline_value_max_bytes`` as compressed pieces
in ``value_pieces`` (:mod:`pynenc_mongo.values`).

The order that keeps readers safe: pieces first, then the pointer, the replaced
value's pieces last; after a failed pointer switch, new pieces are deleted only when
no stored pointer can reference them (:mod:`pynenc_mongo.write_outcomes`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pymongo import ReturnDocument
from pymongo.errors import PyMongoError

from pynenc_mongo import schema, values
from pynenc_mongo.errors import is_document_too_large
from pynenc_mongo.operations import insert_if_absent
from pynenc_mongo.schema import F_APP
from pynenc_mongo.write_outcomes import WriteOutcome, write_outcome

if TYPE_CHECKING:
    from pymongo.collection import Collection

    from pynenc_mongo.config import ConfigMongo

logger = logging.getLogger("pynenc_mongo")

#: Re-reads of a large value whose pieces were replaced while reading.
STALE_READ_ATTEMPTS = 5


def at_path(doc: dict[str, Any] | None, path: str) -> Any:
    """The value at dotted ``path`` of ``doc``, or None.

    :param dict | None doc: a document (or None).
    :param str path: e.g. ``"data.kfoo"``.
    :return: the value, or None when any part of the path is missing.
    """
    value: Any = doc
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def is_expired(doc: dict[str, Any] | None) -> bool:
    """True if ``doc`` carries an ``expire_at`` in the past: MongoDB's TTL monitor is
    deleting it and its pieces, in no particular order (MongoDB manual, "TTL Indexes")."""
    expire_at = (doc or {}).get(schema.F_EXPIRE)
    if not isinstance(expire_at, datetime):
        return False
    if expire_at.tzinfo is None:
        expire_at = expire_at.replace(tzinfo=UTC)
    return expire_at <= datetime.now(UTC)


class ValueStore:
    """Mixin of :class:`~pynenc_mongo.store.MongoStore`: reads and writes values.

    Uses the store's ``app_id``, ``conf``, :meth:`retry`, :meth:`upsert`,
    :meth:`find_all`, :meth:`collection` and :meth:`physical_collection`.
    """

    app_id: str
    conf: ConfigMongo

    if TYPE_CHECKING:

        def retry[T](self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...
        def upsert[T](self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...
        def collection(self, logical: str) -> Collection[dict[str, Any]]: ...
        def physical_collection(self, logical: str) -> Collection[dict[str, Any]]: ...
        def find_all(
            self,
            collection: Collection[dict[str, Any]],
            filter_: dict[str, Any],
            projection: dict[str, Any] | None = None,
            sort: Sequence[tuple[str, int]] | None = None,
        ) -> list[dict[str, Any]]: ...

    def prepare_only(
        self, owner: str, text: str, limit: int | None = None, force_pieces: bool = False
    ) -> values.PreparedValue:
        """Decide inline or pieces for ``text`` (nothing written).

        :param str owner: what owns the value (an invocation id, ``workflow:<id>``, a key).
        :param str text: the serialized value.
        :param int | None limit: inline at most this many bytes (and at most
            ``mongo_inline_value_max_bytes``); None for the setting alone.
        :param bool force_pieces: store as pieces whatever the size.
        :return: the prepared value.
        """
        inline_max = self.conf.mongo_inline_value_max_bytes
        return values.prepare(
            self.app_id,
            owner,
            text,
            min(inline_max, limit) if limit else inline_max,
            force_pieces=force_pieces,
        )

    def prepare_value(
        self, owner: str, text: str, limit: int | None = None, force_pieces: bool = False
    ) -> values.PreparedValue:
        """:meth:`prepare_only`, then insert the pieces, if any (before any pointer)."""
        prepared = self.prepare_only(owner, text, limit, force_pieces)
        if prepared.pieces:
            self.insert_pieces(prepared.pieces)
        return prepared

    def insert_pieces(self, pieces: list[dict[str, Any]]) -> None:
        """Insert ``value_pieces`` documents (idempotent: unique ``(value_id, n)``)."""
        if pieces:
            self.retry(insert_if_absent, self.collection(schema.VALUE_PIECES), pieces)

    def delete_pieces(self, stored: Any) -> None:
        """Delete the pieces of a stored reference (nothing for inline values)."""
        self.delete_value_ids([values.reference_id(stored)])

    def delete_value_ids(self, value_ids: list[str | None]) -> None:
        """Delete the pieces of these values (``None`` entries are skipped)."""
        ids = sorted({v for v in value_ids if v is not None})
        if ids:
            self.retry(
                self.collection(schema.VALUE_PIECES).delete_many,
                {F_APP: self.app_id, "value_id": {"$in": ids}},
            )

    def load_value(self, stored: Any) -> str:
        """The text of a stored value: inline, or assembled from its pieces.

        :raises pynenc_mongo.values.StaleValueError: pieces missing (replaced meanwhile).
        """
        if isinstance(stored, str):
            return stored
        pieces = self.find_all(
            self.collection(schema.VALUE_PIECES),
            {F_APP: self.app_id, "value_id": stored["value_id"]},
            None,
            [("n", 1)],
        )
        return values.assemble(stored, pieces)

    def read_value(self, logical: str, filter_: dict[str, Any], path: str) -> tuple[bool, str]:
        """Read the value at ``path`` of the document matching ``filter_``.

        :return: ``(found, text)``; re-reads when large-value pieces were replaced
            concurrently (see :mod:`pynenc_mongo.values`). A value whose document
            has expired (retention) and whose pieces are already gone is not found.
        :raises pynenc_mongo.values.StaleValueError: if pieces stay missing.
        """
        for attempt in range(STALE_READ_ATTEMPTS):
            doc = self.retry(
                self.collection(logical).find_one,
                filter_,
                {path: 1, schema.F_EXPIRE: 1, "_id": 0},
            )
            stored = at_path(doc, path)
            if stored is None:
                return False, ""
            try:
                return True, self.load_value(stored)
            except values.StaleValueError:
                if is_expired(doc):
                    return False, ""
                if attempt == STALE_READ_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def write_value(
        self,
        logical: str,
        filter_: dict[str, Any],
        path: str,
        owner: str,
        text: str,
        limit: int | None = None,
        switch: Callable[[values.PreparedValue], dict[str, Any] | None] | None = None,
    ) -> None:
        """Point ``path`` of the (upserted) document matching ``filter_`` at ``text``.

        New pieces are inserted before the pointer switches; the pieces of the
        value it replaced are deleted after, so readers see the old or the new
        value, never a mix. If the document has no room left for the value
        inline (MongoDB's 16 MiB limit), the value is stored as pieces instead.

        :param switch: the write that points ``path`` at the prepared value and
            returns the document before (at least ``path``), or None when there was
            none; default: one ``find_one_and_update`` ``$set`` upsert on ``filter_``.
            After a failed switch, ``filter_`` must find the document that holds
            ``path`` (to re-read the pointer).
        :raises pynenc_mongo.errors.MongoLimitError: if even a reference does not fit.
        """
        prepared = self.prepare_value(owner, text, limit)
        if switch is None:

            def switch(ready: values.PreparedValue) -> dict[str, Any] | None:
                return self._switch_pointer(logical, filter_, path, ready)

        try:
            before = switch(prepared)
        except PyMongoError as exc:
            if not is_document_too_large(exc) or write_outcome(exc) is not WriteOutcome.REJECTED:
                self._forget_unless_pointed_at(logical, filter_, path, prepared, exc)
                raise
            if prepared.pieces:
                self.delete_pieces(prepared.stored)
                raise
            logger.debug("document full at %s: storing the value as pieces", path[:80])
            prepared = self.prepare_value(owner, text, limit, force_pieces=True)
            try:
                before = switch(prepared)
            except PyMongoError as again:
                self._forget_unless_pointed_at(logical, filter_, path, prepared, again)
                raise
        old = at_path(before, path)
        if values.reference_id(old) not in (None, values.reference_id(prepared.stored)):
            self.delete_pieces(old)

    def _forget_unless_pointed_at(
        self,
        logical: str,
        filter_: dict[str, Any],
        path: str,
        prepared: values.PreparedValue,
        exc: PyMongoError,
    ) -> None:
        """After a failed pointer switch: delete the new pieces only when no stored
        pointer can reference them.

        * surely not applied (:func:`~pynenc_mongo.errors.write_outcome` REJECTED):
          delete them;
        * applied but the write concern failed (APPLIED; the server has finished
          the write, it replied): re-read the pointer and delete them only if it
          points elsewhere (then the write did not land, or a later writer replaced
          it and deletes what it replaced); if the re-read fails, keep them;
        * unknown (connection lost, timeout: the write may still be running on the
          server): keep them. An unreferenced piece costs space; a deleted
          referenced one makes the value unreadable for good.

        The pieces of the value replaced by an applied write are not known here
        (the reply was lost) and stay (README, "known gaps").
        """
        value_id = values.reference_id(prepared.stored)
        if value_id is None:
            return
        outcome = write_outcome(exc)
        if outcome is WriteOutcome.REJECTED:
            self.delete_pieces(prepared.stored)
            return
        if outcome is WriteOutcome.UNKNOWN:
            return
        try:
            doc = self.retry(
                self.physical_collection(logical).find_one, filter_, {path: 1, "_id": 0}
            )
        except PyMongoError:
            return
        if values.reference_id(at_path(doc, path)) != value_id:
            self.delete_pieces(prepared.stored)

    def _switch_pointer(
        self,
        logical: str,
        filter_: dict[str, Any],
        path: str,
        prepared: values.PreparedValue,
    ) -> dict[str, Any] | None:
        """``$set`` ``path`` to the prepared value (upsert); return the document before."""
        before: dict[str, Any] | None = self.upsert(
            self.collection(logical).find_one_and_update,
            filter_,
            {"$set": {path: prepared.stored}},
            projection={path: 1, "_id": 0},
            upsert=True,
            return_document=ReturnDocument.BEFORE,
        )
        return before


__all__ = ["STALE_READ_ATTEMPTS", "ValueStore", "at_path", "is_expired"]
