"""MongoClientDataStore's own tests: insert-if-absent, pieces for large values, the
per-process set of stored keys, purge and retention. On mongomock, and on a
server when ``PYNENC_MONGO_TEST_URL`` is set."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import broker_workers
import pytest
from pynenc import Pynenc

from pynenc_mongo.client_data_store import MongoClientDataStore
from pynenc_mongo.monitoring import count_operations
from pynenc_mongo.schema.client_data_store import CLIENT_DATA
from pynenc_mongo.schema.state import VALUE_PIECES

SMALL_INLINE = 1024  # the smallest mongo_inline_value_max_bytes


def key_of(value: str) -> str:
    return "__pynenc__client_data__:" + hashlib.sha256(value.encode()).hexdigest()


def big(size: int, seed: str = "x") -> str:
    out, chunk = [], seed
    while sum(map(len, out)) < size:
        chunk = hashlib.sha256(chunk.encode()).hexdigest()
        out.append(chunk)
    return "".join(out)[:size]


def cds_of(app: Pynenc) -> MongoClientDataStore:
    store = app.client_data_store
    assert isinstance(store, MongoClientDataStore)
    return store


def docs(cds: MongoClientDataStore, logical: str, **filter_: Any) -> list[dict[str, Any]]:
    return list(
        cds.store.collection(logical).find({"app_id": cds.app.app_id, **filter_}, {"data": 0})
    )


@pytest.fixture
def small_inline_app(make_mongo_app: Callable[..., Pynenc]) -> Pynenc:
    """Values above 1 KiB go to pieces (so pieces are cheap to test)."""
    return make_mongo_app(mongo_inline_value_max_bytes=SMALL_INLINE)


def test_inline_value_round_trip_and_missing_key(app_instance: Pynenc) -> None:
    cds = cds_of(app_instance)
    value = big(5000)
    cds._store(key_of(value), value)
    assert cds._retrieve(key_of(value)) == value
    (doc,) = docs(cds, CLIENT_DATA)
    assert doc["value"] == value and doc["key"] == key_of(value)
    assert isinstance(doc["created_at"], datetime) and "expire_at" not in doc
    with pytest.raises(KeyError, match="is not stored"):
        cds._retrieve(key_of("absent"))


def test_large_value_goes_to_pieces_and_reads_back_whole(small_inline_app: Pynenc) -> None:
    cds = cds_of(small_inline_app)
    value = big(200_000) + "é✓"  # non-ASCII survives too
    cds._store(key_of(value), value)
    (doc,) = docs(cds, CLIENT_DATA)
    assert isinstance(doc["value"], dict)
    pieces = docs(cds, VALUE_PIECES)
    assert {p["owner"] for p in pieces} == {"client_data_store:" + key_of(value)}
    assert cds._retrieve(key_of(value)) == value


def test_store_never_rewrites_an_existing_key(small_inline_app: Pynenc) -> None:
    cds = cds_of(small_inline_app)
    value = big(50_000)
    cds._store(key_of(value), value)
    (before,) = docs(cds, CLIENT_DATA)
    cds._forget()  # as if another process, which has not stored it yet
    cds._store(key_of(value), value)
    (after,) = docs(cds, CLIENT_DATA)
    assert after == before
    assert {p["value_id"] for p in docs(cds, VALUE_PIECES)} == {before["value"]["value_id"]}


def test_losing_writer_deletes_only_its_own_pieces(small_inline_app: Pynenc) -> None:
    """The race as a sequence: a second writer wrote its pieces before the first
    writer's document appeared; its upsert finds that document and it removes its
    own pieces, leaving the committed value whole."""
    cds = cds_of(small_inline_app)
    value = big(50_000)
    key = key_of(value)
    winner = cds.store.prepare_only(cds.piece_owner(key), value)
    cds.store.insert_pieces(winner.pieces)
    cds.store.collection(CLIENT_DATA).insert_one(
        {"app_id": cds.app.app_id, "key": key, "value": winner.stored, "created_at": 0}
    )
    loser = cds.store.prepare_only(cds.piece_owner(key), value)
    cds._store_pieces(
        key,
        cds._filter(key),
        loser,
        {"$setOnInsert": {"value": loser.stored}},
        None,
    )
    ids = {p["value_id"] for p in docs(cds, VALUE_PIECES)}
    assert ids == {winner.stored["value_id"]}  # type: ignore[index]
    assert cds._retrieve(key) == value


def test_repeated_serialize_costs_no_round_trip(small_inline_app: Pynenc) -> None:
    """pynenc calls ``_store`` on every serialization of a large value; the second
    and later ones in a process are skipped."""
    cds = cds_of(small_inline_app)
    value = big(20_000)
    first = cds.serialize(value)
    assert first == key_of(app_json(small_inline_app, value))
    with count_operations() as ops:
        for _ in range(5):
            assert cds.serialize(value) == first
    assert ops.total == 0
    assert cds.resolve(first) == value


def app_json(app: Pynenc, value: str) -> str:
    return app.serializer.serialize(value)


def test_purge_removes_this_apps_values_and_pieces_only(
    make_mongo_app: Callable[..., Pynenc],
) -> None:
    a = cds_of(make_mongo_app(mongo_inline_value_max_bytes=SMALL_INLINE))
    b = cds_of(make_mongo_app(mongo_inline_value_max_bytes=SMALL_INLINE))
    value = big(30_000)
    a._store(key_of(value), value)
    b._store(key_of(value), value)
    a.purge()
    with pytest.raises(KeyError):
        a._retrieve(key_of(value))
    assert docs(a, VALUE_PIECES) == []
    assert b._retrieve(key_of(value)) == value
    a._store(key_of(value), value)  # storable again after a purge
    assert a._retrieve(key_of(value)) == value


def test_state_backend_purge_of_pieces_reads_as_missing_then_restorable(
    small_inline_app: Pynenc,
) -> None:
    cds = cds_of(small_inline_app)
    value = big(40_000)
    cds._store(key_of(value), value)
    small_inline_app.state_backend.purge()  # deletes every value_pieces doc of the app
    with pytest.raises(KeyError, match="pieces are gone"):
        cds._retrieve(key_of(value))
    assert docs(cds, CLIENT_DATA) == []
    cds._store(key_of(value), value)
    assert cds._retrieve(key_of(value)) == value


def test_retention_stamps_and_extends_expire_at(make_mongo_app: Callable[..., Pynenc]) -> None:
    app = make_mongo_app(mongo_inline_value_max_bytes=SMALL_INLINE, mongo_retention_days=2.0)
    cds = cds_of(app)
    value = big(30_000)
    before = datetime.now(UTC)
    cds._store(key_of(value), value)
    (doc,) = docs(cds, CLIENT_DATA)
    expire = doc["expire_at"].replace(tzinfo=UTC)
    assert before + timedelta(days=2) - timedelta(seconds=5) <= expire
    assert expire <= datetime.now(UTC) + timedelta(days=2)
    pieces = docs(cds, VALUE_PIECES)
    assert pieces and all(p["expire_at"].replace(tzinfo=UTC) == expire for p in pieces)
    # An old stamp is pushed later by the next store (from another process).
    old = datetime.now(UTC) + timedelta(hours=1)
    cds.store.collection(CLIENT_DATA).update_many({}, {"$set": {"expire_at": old}})
    cds.store.collection(VALUE_PIECES).update_many({}, {"$set": {"expire_at": old}})
    cds._forget()
    cds._store(key_of(value), value)
    (doc,) = docs(cds, CLIENT_DATA)
    assert doc["expire_at"].replace(tzinfo=UTC) > old + timedelta(days=1)
    assert all(
        p["expire_at"].replace(tzinfo=UTC) > old + timedelta(days=1)
        for p in docs(cds, VALUE_PIECES)
    )
    names = {i["name"] for i in cds.store.collection(CLIENT_DATA).list_indexes()}
    assert {"app_key", "client_data_ttl"} <= names


def test_bad_key_type(app_instance: Pynenc) -> None:
    cds = cds_of(app_instance)
    with pytest.raises(TypeError, match="key: expected a str, got dict"):
        cds._retrieve({"$gt": ""})  # type: ignore[arg-type]
    assert "MongoClientDataStore" in repr(cds)


def test_large_argument_through_a_task_call(small_inline_app: Pynenc) -> None:
    """A task called with a large argument: the state backend holds only the
    reference; the value is in the client data store."""

    echo = broker_workers.bind(small_inline_app, broker_workers.record)
    value = big(100_000)
    invocation = echo("/dev/null", value)
    stored = small_inline_app.state_backend.get_invocation(invocation.invocation_id)
    assert stored is not None
    serialized = stored.call.serialized_arguments["payload"]
    assert cds_of(small_inline_app).is_reference(serialized)
    assert cds_of(small_inline_app)._retrieve(serialized) == app_json(small_inline_app, value)
