"""Issue 16, state-backend items on the write side: 5 (deferred-insert bookkeeping
survives any error), 1 (the invocation flush deletes pieces only of documents surely
not written), 12 (unique indexes required; the DTO cache and retention) and 6
(retention with history records that land late).

mongomock never fails index creation or answers a partial bulk error, so those
faults are injected by patching the store layer / the insert helper.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from _fakes import make_dtos, raw, raw_app_fixture
from pymongo.errors import AutoReconnect, BulkWriteError
from pynenc import Pynenc
from pynenc.invocation.status import InvocationStatus, InvocationStatusRecord
from pynenc.runner.runner_context import RunnerContext

from pynenc_mongo import schema
from pynenc_mongo.errors import (
    MongoBackendError,
    MongoIndexMissingError,
    MongoUnavailableError,
)
from pynenc_mongo.state_backend import invocations as invocations_mod
from pynenc_mongo.store import MongoStore

make_raw_app = raw_app_fixture()
BIG = "".join(f"{i:08x}" for i in range(2000))  # 16000 bytes: stored as pieces
CTX = RunnerContext(runner_cls="TestRunner", runner_id="runner-1", pid=1, hostname="h", thread_id=1)


def app_id_of(app: Any) -> str:
    return str(app.app_id)


def _stored(backend: Any, inv_id: str) -> int:
    return int(
        raw(backend, schema.INVOCATIONS).count_documents(
            {schema.F_APP: backend.app_id, schema.F_INV: inv_id}
        )
    )


# ---------------------------------------------------------------- item 5
def test_index_creation_failing_on_first_flush_keeps_the_batch_deferred(
    make_app: Callable[..., Pynenc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the fix: the second registration returned with nothing stored (the
    batch was dropped while its id stayed in ``_unwritten``)."""
    backend: Any = make_app().state_backend
    pair = make_dtos()
    inv_id = pair[0].invocation_id
    backend._upsert_invocations([pair])  # deferred (constructor-time store)
    original = MongoStore.physical_collection
    failures = [1]

    def first_use_fails(self: MongoStore, logical: str) -> Any:
        if logical == schema.INVOCATIONS and failures:
            failures.pop()
            raise AutoReconnect("index build: connection lost")
        return original(self, logical)

    monkeypatch.setattr(MongoStore, "physical_collection", first_use_fails)
    with pytest.raises(MongoUnavailableError):
        backend._upsert_invocations([pair])  # the registration
    backend._upsert_invocations([pair])  # registered again: must write it now
    assert _stored(backend, inv_id) == 1


def test_non_pymongo_error_during_the_insert_keeps_the_batch_deferred(
    make_app: Callable[..., Pynenc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the fix: a ``RuntimeError`` (not a PyMongoError) dropped the batch."""
    backend: Any = make_app().state_backend
    pair = make_dtos()
    backend._upsert_invocations([pair])
    original = invocations_mod.insert_if_absent
    failures = [1]

    def fails_once(collection: Any, docs: list[dict[str, Any]]) -> list[int]:
        if failures:
            failures.pop()
            raise RuntimeError("bson encoder exploded")
        return original(collection, docs)

    monkeypatch.setattr(invocations_mod, "insert_if_absent", fails_once)
    with pytest.raises(RuntimeError):
        backend._upsert_invocations([pair])
    backend._upsert_invocations([pair])
    assert _stored(backend, pair[0].invocation_id) == 1


# ---------------------------------------------------------------- item 1 (flush)
def test_partial_bulk_error_deletes_only_rejected_documents_pieces(
    make_raw_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Document 0 is written, document 1 refused by a validator (code 121). Before the
    fix every piece was deleted, so the stored document 0 read as StaleValueError."""
    backend: Any = make_raw_app(inline_value_max_bytes=1024).state_backend
    written, refused = make_dtos(arguments={"x": BIG}), make_dtos(arguments={"x": BIG + "y"})
    backend._upsert_invocations([written, refused])  # deferred, pieces stored

    def partial(collection: Any, docs: list[dict[str, Any]]) -> list[int]:
        collection.insert_one(docs[0])
        raise BulkWriteError(
            {
                "writeErrors": [{"index": 1, "code": 121, "errmsg": "Document failed validation"}],
                "writeConcernErrors": [],
                "nInserted": 1,
            }
        )

    monkeypatch.setattr(invocations_mod, "insert_if_absent", partial)
    with pytest.raises((BulkWriteError, MongoBackendError)):
        backend._flush_deferred(every_thread=True)
    monkeypatch.undo()
    refused_id = refused[0].invocation_id
    assert refused_id not in backend._unwritten  # surely not stored: forgotten
    pieces = raw(backend, schema.VALUE_PIECES)
    assert pieces.count_documents({schema.F_APP: backend.app_id, "owner": refused_id}) == 0
    backend._flush_deferred(every_thread=True)  # the maybe-written one is written again
    backend._dto_cache.clear()
    pair = backend._get_invocation(written[0].invocation_id)
    assert pair is not None and pair[1].serialized_arguments["x"] == BIG
    assert _stored(backend, written[0].invocation_id) == 1


# ---------------------------------------------------------------- item 12
def test_results_refused_without_their_unique_index_and_checked_once(
    make_app: Callable[..., Pynenc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the fix: set_result upserted without the unique index (duplicates possible)."""
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    backend: Any = make_app(collection_prefix=prefix, create_indexes=False).state_backend
    with pytest.raises(MongoIndexMissingError):
        backend.set_result("inv-1", "result")
    with pytest.raises(MongoIndexMissingError):
        backend.store_workflow_sub_invocation("wf-1", "inv-1")


def test_require_unique_costs_one_store_check_per_collection(
    make_app: Callable[..., Pynenc], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend: Any = make_app().state_backend
    calls: list[str] = []
    original = MongoStore.require_unique

    def counting(self: MongoStore, logical: str, index: str | None = None) -> None:
        calls.append(logical)
        original(self, logical, index)

    monkeypatch.setattr(MongoStore, "require_unique", counting)
    for i in range(5):
        backend.set_result(f"inv-{i}", "result")
    assert calls == [schema.RESULTS]


def test_dto_cache_does_not_serve_an_invocation_retention_deleted(make_app: Any) -> None:
    """Before the fix: the cached pair was returned after TTL deleted the document."""
    backend: Any = make_app(retention_days=1).state_backend
    pair = make_dtos()
    inv_id = pair[0].invocation_id
    backend._upsert_invocations([pair])
    backend._flush_deferred(every_thread=True)
    assert backend._get_invocation(inv_id) is not None
    backend.expire_invocation(inv_id, datetime.now(UTC) - timedelta(seconds=1))
    raw(backend, schema.INVOCATIONS).delete_many(
        {schema.F_APP: backend.app_id, schema.F_INV: inv_id}
    )  # the TTL monitor
    assert backend._get_invocation(inv_id) is None


def test_dto_cache_entry_read_with_expire_at_is_dropped_after_it(make_app: Any) -> None:
    """Another process stamped the invocation: the expiry read with it bounds the cache."""
    backend: Any = make_app(retention_days=1).state_backend
    pair = make_dtos()
    inv_id = pair[0].invocation_id
    backend._upsert_invocations([pair])
    backend._flush_deferred(every_thread=True)
    raw(backend, schema.INVOCATIONS).update_one(
        {schema.F_APP: backend.app_id, schema.F_INV: inv_id},
        {"$set": {schema.F_EXPIRE: datetime.now(UTC) + timedelta(seconds=1)}},
    )
    backend._dto_cache.clear()
    assert backend._get_invocation(inv_id) is not None  # read: cached with its expire_at
    time.sleep(1.2)
    raw(backend, schema.INVOCATIONS).delete_many(
        {schema.F_APP: backend.app_id, schema.F_INV: inv_id}
    )  # the TTL monitor
    assert backend._get_invocation(inv_id) is None


# ---------------------------------------------------------------- item 6
def test_history_record_landing_after_the_expiry_stamp_expires_too(
    make_raw_app: Any,
) -> None:
    """Process B stamps the invocation when it finishes; process A's REGISTERED record
    lands afterwards (buffered). Before the fix it had no ``expire_at``: kept forever."""
    app_id = f"app-{uuid.uuid4().hex[:8]}"
    a: Any = make_raw_app(app_id=app_id, retention_days=1, history_write_mode="sync")
    b: Any = make_raw_app(app_id=app_id, retention_days=1, history_write_mode="sync")
    inv_id = str(uuid.uuid4())
    for status in (InvocationStatus.PENDING, InvocationStatus.RUNNING, InvocationStatus.SUCCESS):
        b.state_backend.add_history(inv_id, InvocationStatusRecord(status, CTX.runner_id), CTX)
    a.state_backend.add_history(
        inv_id, InvocationStatusRecord(InvocationStatus.REGISTERED, CTX.runner_id), CTX
    )
    docs = list(
        raw(a.state_backend, schema.HISTORY).find(
            {schema.F_APP: app_id_of(a), schema.F_INV: inv_id}
        )
    )
    assert len(docs) == 4
    assert all(schema.F_EXPIRE in doc for doc in docs)


def test_record_after_this_process_stamped_gets_the_same_expiry(make_raw_app: Any) -> None:
    backend: Any = make_raw_app(retention_days=1, history_write_mode="sync").state_backend
    inv_id = str(uuid.uuid4())
    backend.add_history(inv_id, InvocationStatusRecord(InvocationStatus.SUCCESS, "r"), CTX)
    backend.add_history(inv_id, InvocationStatusRecord(InvocationStatus.RUNNING, "r"), CTX)
    docs = list(
        raw(backend, schema.HISTORY).find({schema.F_APP: backend.app_id, schema.F_INV: inv_id})
    )
    assert len({doc[schema.F_EXPIRE] for doc in docs}) == 1
