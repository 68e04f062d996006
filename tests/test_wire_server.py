"""The wire test server's launcher: real PyMongo clients over TCP, and the launcher's
narrowed ``_id`` scan (``scripts/wire_server.py``) still refuses every duplicate."""

from __future__ import annotations

import uuid

import pymongo
import pytest
from bson import ObjectId
from pymongo.errors import DuplicateKeyError
from wire_support import WireServer


def test_duplicate_ids_are_still_refused(wire_server: WireServer) -> None:
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        wire_server.url, serverSelectionTimeoutMS=10_000
    )
    try:
        coll = client[f"wire_{uuid.uuid4().hex[:8]}"]["c"]
        oid = ObjectId()
        coll.insert_many([{"_id": "a"}, {"_id": oid}, {"_id": 5}])
        for duplicate in ("a", oid, 5, 5.0):
            with pytest.raises(DuplicateKeyError):
                coll.insert_one({"_id": duplicate})
        assert coll.count_documents({}) == 3
    finally:
        client.close()


def test_a_thousand_document_insert_completes(wire_server: WireServer) -> None:
    """A 1,000-document insert_many completes (unpatched, each insert scanned the collection)."""
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(wire_server.url)
    try:
        coll = client[f"wire_{uuid.uuid4().hex[:8]}"]["c"]
        coll.insert_many([{"_id": f"k{i}"} for i in range(1000)])
        assert coll.count_documents({}) == 1000
    finally:
        client.close()
