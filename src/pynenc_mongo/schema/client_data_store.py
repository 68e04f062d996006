"""The client data store's collection, its document shape and indexes.

``client_data`` -- one document per stored value (pynenc's large serialized
arguments and results, keyed by content hash)::

    {_id: ObjectId,
     app_id,
     key: str,                 # pynenc's "__pynenc__client_data__:<sha256>"
     value: str | {value_id, pieces, size, codec},   # inline, or a reference
     created_at: Date,         # when the first writer stored it
     expire_at?: Date}         # only with mongo_retention_days > 0

A value larger than ``mongo_inline_value_max_bytes`` is compressed into
``value_pieces`` documents (the state backend's collection, see
:mod:`pynenc_mongo.values`) whose ``owner`` is ``client_data_store:<key>``; they
are written before the ``client_data`` document, which is the commit point. The
unique ``(app_id, key)`` index makes storing insert-if-absent: a second writer of
the same key changes nothing (except pushing ``expire_at`` later).
"""

from __future__ import annotations

from typing import Final

from pynenc_mongo.schema.layout import F_APP, IndexSpec, ttl_index

CLIENT_DATA: Final = "client_data"

F_KEY: Final = "key"
F_VALUE: Final = "value"
F_CREATED: Final = "created_at"
#: ``owner`` of this store's ``value_pieces`` documents: this prefix plus the key.
PIECE_OWNER_PREFIX: Final = "client_data_store:"

#: This component's logical collection names.
COLLECTIONS: Final[tuple[str, ...]] = (CLIENT_DATA,)
#: Every index this component's queries need (the pieces use the state backend's
#: ``value_pieces`` indexes: ``app_value_piece``, ``app_owner`` and its TTL index).
INDEXES: Final[tuple[IndexSpec, ...]] = (
    IndexSpec(CLIENT_DATA, ((F_APP, 1), (F_KEY, 1)), "app_key", unique=True),
    ttl_index(CLIENT_DATA),
)
