"""``MongoClientDataStore``: pynenc's large serialized arguments and results, on MongoDB.

pynenc replaces every serialized argument or result of ``min_size_to_cache``
(1024) characters or more with a reference key ``__pynenc__client_data__:<sha256>``
and hands the value to the client data store. With this store every process of the
deployment reads the same values, so workers in other processes (or hosts) resolve
the references with no further configuration.

Layout (:mod:`pynenc_mongo.schema.client_data_store`): one ``client_data``
document per key; values above ``mongo_inline_value_max_bytes`` are compressed
into the store layer's ``value_pieces`` (:meth:`pynenc_mongo.store.MongoStore.prepare_only`
/ :meth:`~pynenc_mongo.store.MongoStore.load_value`).

**Never rewritten.** Keys are content hashes, so storing is insert-if-absent: an
upsert whose update is ``$setOnInsert`` on the unique ``(app_id, key)`` index. The
pieces of a large value are inserted first and the ``client_data`` document last:
it is the commit point, and a reader that finds it finds every piece (a reader
never sees half a value). Two processes storing the same large key at once both
write pieces under their own ``value_id``; one document wins the upsert, and the
loser deletes its own, unreferenced, pieces: one copy, no error. A writer killed
between its pieces and its document leaves orphan pieces (owner
``client_data_store:<key>``), removed by :meth:`MongoClientDataStore.purge` and,
with retention on, by the TTL monitor.

**Repeated stores.** pynenc calls ``_store`` every time it serializes a large value
(``BaseClientDataStore.serialize``), so each process remembers the keys it stored
(at most :data:`STORED_KEYS_CACHE_SIZE`, each for :data:`STORED_KEYS_TTL_SECONDS`)
and skips them; after that time it stores again, which costs one round trip and
also notices a purge by another process.

**Retention and purge** follow the state backend's settings: ``mongo_retention_days``
> 0 gives every document (and its pieces) an ``expire_at`` that many days after the
last store of its key in any process (storing again pushes it later with ``$max``;
the TTL index deletes it after). Values referenced only by invocations whose
lifetime exceeds the retention may therefore go before those invocations' records.
:meth:`MongoClientDataStore.purge` deletes this app's documents and pieces only.
``MongoStateBackend.purge`` deletes every ``value_pieces`` document of the app,
these included (``app.purge()`` purges both); a document whose pieces are gone
reads as missing and is deleted so the key can be stored again.
"""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, Final

from cachetools import TTLCache
from pymongo import ReturnDocument
from pynenc.client_data_store.base_client_data_store import BaseClientDataStore
from pynenc.conf.config_client_data_store import ConfigClientDataStore

from pynenc_mongo import values
from pynenc_mongo.config import ConfigMongo, check_unknown_settings
from pynenc_mongo.errors import translate_errors
from pynenc_mongo.operations import upsert_retrying_duplicate
from pynenc_mongo.schema.client_data_store import (
    CLIENT_DATA,
    COLLECTIONS,
    F_CREATED,
    F_KEY,
    F_VALUE,
    PIECE_OWNER_PREFIX,
)
from pynenc_mongo.schema.layout import F_APP, F_EXPIRE
from pynenc_mongo.schema.state import VALUE_PIECES
from pynenc_mongo.store import MongoStore

if TYPE_CHECKING:
    from pymongo.collection import Collection
    from pynenc.app import Pynenc

#: How many stored keys each process remembers (about 100 bytes each).
STORED_KEYS_CACHE_SIZE: Final = 65_536
#: Seconds a remembered key skips ``_store``; then the next store checks MongoDB again.
STORED_KEYS_TTL_SECONDS: Final = 60.0
#: With retention on, a store pushes ``expire_at`` later only when it would move by
#: more than this fraction of the retention (fewer writes for values stored often).
REFRESH_FRACTION: Final = 0.1


class ConfigClientDataStoreMongo(ConfigClientDataStore, ConfigMongo):
    """Client data store settings: pynenc's ``ConfigClientDataStore``
    (``min_size_to_cache``, ``max_size_to_cache``, ``local_cache_size``...) plus the
    shared :class:`~pynenc_mongo.config.ConfigMongo` settings (connection,
    ``mongo_inline_value_max_bytes``, ``mongo_retention_days``). None of its own."""


class MongoClientDataStore(BaseClientDataStore):
    """pynenc client data store on MongoDB, shared by every process of the app.

    Select it with ``client_data_store_cls="MongoClientDataStore"`` (config values,
    or ``PYNENC__CLIENT_DATA_STORE_CLS``). Creating it does no I/O. See the module
    docstring for the write order, deduplication and retention.

    :param Pynenc app: the pynenc app.
    """

    def __init__(self, app: Pynenc) -> None:
        super().__init__(app)
        self._store_layer: MongoStore | None = None
        self._stored_keys: TTLCache[str, bool] = TTLCache(
            STORED_KEYS_CACHE_SIZE, STORED_KEYS_TTL_SECONDS
        )
        self._stored_lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing
    @cached_property
    def conf(self) -> ConfigClientDataStoreMongo:
        """The resolved settings (cistell: config values, files, env vars).

        :raises pynenc_mongo.config.MongoConfigError: for a bad or misspelt setting.
        """
        check_unknown_settings(self.app.config_values)
        return ConfigClientDataStoreMongo(
            config_values=self.app.config_values,
            config_filepath=self.app.config_filepath,
        )

    @property
    def store(self) -> MongoStore:
        """This app's :class:`~pynenc_mongo.store.MongoStore` (made on first use)."""
        if self._store_layer is None:
            self._store_layer = MongoStore(self.conf, self.app.app_id)
        return self._store_layer

    def describe_target(self) -> str:
        """Where the values live: redacted URL and database (for error messages)."""
        return self.store.describe_target()

    def __repr__(self) -> str:
        return f"<MongoClientDataStore app_id={self.app.app_id!r} {self.describe_target()}>"

    def _collection(self) -> Collection[dict[str, Any]]:
        return self.store.collection(CLIENT_DATA)

    def _filter(self, key: str) -> dict[str, Any]:
        if not isinstance(key, str):
            raise TypeError(f"key: expected a str, got {type(key).__name__}")
        return {F_APP: self.app.app_id, F_KEY: key}

    @staticmethod
    def piece_owner(key: str) -> str:
        """The ``owner`` of a key's ``value_pieces`` documents."""
        return PIECE_OWNER_PREFIX + key

    def _expire_at(self, now: datetime) -> datetime | None:
        days = self.conf.mongo_retention_days
        return now + timedelta(days=days) if days > 0 else None

    def _remembered(self, key: str) -> bool:
        with self._stored_lock:
            return key in self._stored_keys

    def _remember(self, key: str) -> None:
        with self._stored_lock:
            self._stored_keys[key] = True

    def _forget(self, key: str | None = None) -> None:
        with self._stored_lock:
            if key is None:
                self._stored_keys.clear()
            else:
                self._stored_keys.pop(key, None)

    # ------------------------------------------------------------------ store
    @translate_errors
    def _store(self, key: str, value: str) -> None:
        """Store ``value`` under ``key`` unless it is there already (never rewritten).

        :param str key: pynenc's content-hash reference key.
        :param str value: the serialized value (any size: large ones become pieces).
        :raises TypeError: if ``key`` or ``value`` is not a string.
        :raises pynenc_mongo.errors.MongoUnavailableError: if MongoDB is unreachable.
        """
        filter_ = self._filter(key)
        if self._remembered(key):
            return
        now = datetime.now(UTC)
        expire_at = self._expire_at(now)
        prepared = self.store.prepare_only(self.piece_owner(key), value)
        update: dict[str, Any] = {"$setOnInsert": {F_VALUE: prepared.stored, F_CREATED: now}}
        if expire_at is not None:
            update["$max"] = {F_EXPIRE: expire_at}
        if not prepared.pieces:
            upsert_retrying_duplicate(self._collection().update_one, filter_, update, upsert=True)
        else:
            self._store_pieces(key, filter_, prepared, update, expire_at)
        self._remember(key)

    def _store_pieces(
        self,
        key: str,
        filter_: dict[str, Any],
        prepared: values.PreparedValue,
        update: dict[str, Any],
        expire_at: datetime | None,
    ) -> None:
        """Large value: pieces first, then the document (the commit point)."""
        collection = self._collection()
        existing = self.store.retry(collection.find_one, filter_, {F_EXPIRE: 1, "_id": 0})
        if existing is not None:  # stored before: skip writing megabytes of pieces
            if expire_at is not None and self._needs_refresh(existing, expire_at):
                self._extend(key, filter_, expire_at)
            return
        if expire_at is not None:
            for piece in prepared.pieces:
                piece[F_EXPIRE] = expire_at
        self.store.insert_pieces(prepared.pieces)
        ours = values.reference_id(prepared.stored)
        after = upsert_retrying_duplicate(
            collection.find_one_and_update,
            filter_,
            update,
            projection={f"{F_VALUE}.value_id": 1, "_id": 0},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        if values.reference_id((after or {}).get(F_VALUE)) != ours:
            # Another writer committed the same key first: our pieces are unreferenced.
            self.store.delete_pieces(prepared.stored)
            if expire_at is not None:
                self._extend(key, filter_, expire_at)

    def _needs_refresh(self, doc: dict[str, Any], expire_at: datetime) -> bool:
        current = doc.get(F_EXPIRE)
        if not isinstance(current, datetime):
            return True
        if current.tzinfo is None:
            current = current.replace(tzinfo=UTC)
        slack = timedelta(days=self.conf.mongo_retention_days * REFRESH_FRACTION)
        return current < expire_at - slack

    def _extend(self, key: str, filter_: dict[str, Any], expire_at: datetime) -> None:
        """Push ``expire_at`` of a key's pieces, then of its document, to ``expire_at``."""
        bump = {"$max": {F_EXPIRE: expire_at}}
        self.store.retry(
            self.store.collection(VALUE_PIECES).update_many,
            {F_APP: self.app.app_id, "owner": self.piece_owner(key)},
            bump,
        )
        self.store.retry(self._collection().update_one, filter_, bump)

    # ------------------------------------------------------------------ retrieve
    @translate_errors
    def _retrieve(self, key: str) -> str:
        """The value stored under ``key``.

        :param str key: pynenc's content-hash reference key.
        :return: the serialized value, byte-identical to what was stored.
        :raises KeyError: if no value is stored under ``key`` (never stored, purged,
            expired, or its pieces deleted by a state backend purge).
        """
        filter_ = self._filter(key)
        try:
            found, text = self.store.read_value(CLIENT_DATA, filter_, F_VALUE)
        except values.StaleValueError:
            # The document outlived its pieces (MongoStateBackend.purge deletes every
            # piece of the app): drop it so the key can be stored again.
            self.store.retry(self._collection().delete_one, filter_)
            self._forget(key)
            raise KeyError(f"client data {key!r}: its pieces are gone (purged)") from None
        if not found:
            raise KeyError(f"client data {key!r} is not stored in {self.describe_target()}")
        return text

    # ------------------------------------------------------------------ purge
    @translate_errors
    def _purge(self) -> None:
        """Delete this app's client data documents and their pieces (only this app's)."""
        self._forget()
        self.store.purge(COLLECTIONS)
        self.store.retry(
            self.store.collection(VALUE_PIECES).delete_many,
            {
                F_APP: self.app.app_id,
                "owner": {"$regex": "^" + re.escape(PIECE_OWNER_PREFIX)},
            },
        )
        self._forget()


__all__ = ["ConfigClientDataStoreMongo", "MongoClientDataStore"]
