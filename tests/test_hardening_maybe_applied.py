"""Issue 16, item 1: "maybe applied" is not "not applied".

A write concern error (``WTimeoutError``, code 64) or an unordered bulk error whose
``writeErrors`` do not cover a document comes back for writes the primary
applied. mongomock never answers that way, so the driver's reply is faked: the
patched method applies the write, then raises what MongoDB would report. The
value must still read back: pieces a stored pointer references are never deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _fakes import make_dtos, raw
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    DocumentTooLarge,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    WTimeoutError,
)
from pynenc import Pynenc

from pynenc_mongo import schema
from pynenc_mongo.operations import insert_if_absent, only_duplicates, surely_unwritten
from pynenc_mongo.store import MongoStore
from pynenc_mongo.write_outcomes import (
    WriteOutcome,
    is_surely_not_applied,
    rejected_positions,
    write_outcome,
)

BIG = "".join(f"{i:08x}" for i in range(2000))  # 16000 bytes: stored as pieces
WTIMEOUT = {
    "code": 64,
    "codeName": "WriteConcernFailed",
    "errmsg": "waiting for replication timed out",
    "errInfo": {"wtimeout": True},
}


def _wtimeout() -> WTimeoutError:
    return WTimeoutError("waiting for replication timed out", 64, WTIMEOUT)


def _wce_bulk(write_errors: list[dict[str, Any]] | None = None) -> BulkWriteError:
    return BulkWriteError(
        {
            "writeErrors": write_errors or [],
            "writeConcernErrors": [WTIMEOUT],
            "nInserted": 0,
        }
    )


@pytest.fixture
def store(make_app: Callable[..., Pynenc]) -> Iterator[MongoStore]:
    app = make_app(inline_value_max_bytes=1024)
    backend: Any = app.state_backend
    yield MongoStore(backend.conf, app.app_id)


def _patch_once(
    monkeypatch: pytest.MonkeyPatch,
    store: MongoStore,
    method: str,
    logical: str,
    error: Callable[[], BaseException],
    apply: bool = True,
) -> list[int]:
    """Make the next ``method`` call on ``logical`` apply the write (or not), then raise."""
    cls = type(store.collection(logical))
    original = getattr(cls, method)
    physical = store.collection_name(logical)
    calls: list[int] = []

    def faulty(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.name != physical or calls:
            return original(self, *args, **kwargs)
        calls.append(1)
        if apply:
            original(self, *args, **kwargs)
        raise error()

    monkeypatch.setattr(cls, method, faulty)
    return calls


def _pieces(store: MongoStore) -> int:
    return int(
        store.collection(schema.VALUE_PIECES).count_documents(store.app_filter(), limit=1000)
    )


def _result_filter(store: MongoStore, inv: str) -> dict[str, Any]:
    return store.app_filter(invocation_id=inv)


# ---------------------------------------------------------------- write_value
def test_write_concern_error_after_applying_keeps_the_pieces(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the fix: the pieces were deleted (``is_transient`` False) and every read
    raised StaleValueError."""
    calls = _patch_once(monkeypatch, store, "find_one_and_update", schema.RESULTS, _wtimeout)
    with pytest.raises(WTimeoutError):
        store.write_value(schema.RESULTS, _result_filter(store, "i1"), "value", "i1", BIG)
    assert calls == [1]
    assert store.read_value(schema.RESULTS, _result_filter(store, "i1"), "value") == (True, BIG)


def test_write_concern_error_replacing_a_value_keeps_the_new_pieces(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    filter_ = _result_filter(store, "i2")
    store.write_value(schema.RESULTS, filter_, "value", "i2", "old " + BIG)
    _patch_once(monkeypatch, store, "find_one_and_update", schema.RESULTS, _wtimeout)
    with pytest.raises(WTimeoutError):
        store.write_value(schema.RESULTS, filter_, "value", "i2", "new " + BIG)
    assert store.read_value(schema.RESULTS, filter_, "value") == (True, "new " + BIG)


def test_write_concern_error_without_the_write_deletes_the_unused_pieces(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pointer was re-read and is not ours: the new pieces are unreferenced."""
    _patch_once(monkeypatch, store, "find_one_and_update", schema.RESULTS, _wtimeout, apply=False)
    with pytest.raises(WTimeoutError):
        store.write_value(schema.RESULTS, _result_filter(store, "i3"), "value", "i3", BIG)
    assert store.read_value(schema.RESULTS, _result_filter(store, "i3"), "value") == (False, "")
    assert _pieces(store) == 0


def test_definite_rejection_deletes_the_unused_pieces(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def invalid() -> OperationFailure:
        return OperationFailure("Document failed validation", 121, {"code": 121})

    _patch_once(monkeypatch, store, "find_one_and_update", schema.RESULTS, invalid, apply=False)
    with pytest.raises(OperationFailure):
        store.write_value(schema.RESULTS, _result_filter(store, "i4"), "value", "i4", BIG)
    assert _pieces(store) == 0


def test_lost_reply_keeps_the_pieces(store: MongoStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lost connection after the write: retried (idempotent ``$set``), value readable."""
    _patch_once(
        monkeypatch,
        store,
        "find_one_and_update",
        schema.RESULTS,
        lambda: AutoReconnect("connection reset"),
    )
    store.write_value(schema.RESULTS, _result_filter(store, "i5"), "value", "i5", BIG)
    assert store.read_value(schema.RESULTS, _result_filter(store, "i5"), "value") == (True, BIG)


def test_through_the_state_backend(
    make_app: Callable[..., Pynenc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state backend writes results through ``MongoStore.write_value``."""
    app = make_app(inline_value_max_bytes=1024)
    backend: Any = app.state_backend
    store = backend.store
    _patch_once(monkeypatch, store, "find_one_and_update", schema.RESULTS, _wtimeout)
    with pytest.raises(WTimeoutError):
        backend._set_result("inv-r", BIG)
    reader: Any = make_app(app_id=app.app_id).state_backend
    assert reader._get_result("inv-r") == BIG


# ---------------------------------------------------------------- insert_if_absent
def test_bulk_write_concern_error_only_is_no_failure(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before the fix ``insert_if_absent`` raised, and its callers dropped the documents'
    pieces, or (the history writer) reported written records as failed for good."""
    _patch_once(monkeypatch, store, "insert_many", schema.HISTORY, _wce_bulk)
    caplog.set_level(logging.WARNING, logger="pynenc_mongo")
    collection = store.collection(schema.HISTORY)
    docs = [store.app_filter(_id=f"h{i}", invocation_id="x") for i in range(3)]
    assert insert_if_absent(collection, docs) == []
    assert collection.count_documents(store.app_filter()) == 3
    assert any("write concern was not satisfied" in r.getMessage() for r in caplog.records)


def test_bulk_mixed_errors_name_only_the_rejected_documents(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    collection = store.collection(schema.HISTORY)
    docs = [store.app_filter(_id=f"h{i}", invocation_id="x") for i in range(4)]
    # What the server did: h0 existed already, h1 and h3 inserted, h2 refused.
    collection.insert_many([dict(docs[i]) for i in (0, 1, 3)])
    errors_ = [
        {"index": 0, "code": 11000, "errmsg": "E11000 duplicate key"},
        {"index": 2, "code": 121, "errmsg": "Document failed validation"},
    ]

    def mixed() -> BulkWriteError:
        return _wce_bulk(errors_)

    _patch_once(monkeypatch, store, "insert_many", schema.HISTORY, mixed, apply=False)
    with pytest.raises(BulkWriteError) as info:
        insert_if_absent(collection, docs)
    assert surely_unwritten(info.value, len(docs)) == [2]  # not the duplicate: maybe ours
    assert rejected_positions(info.value) == {0, 2}


def test_invocation_insert_with_write_concern_error_reads_back(
    make_app: Callable[..., Pynenc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state backend's deferred invocation insert (``insert_if_absent``): the
    document and its argument pieces stay readable from another process's view."""
    app = make_app(inline_value_max_bytes=1024)
    backend: Any = app.state_backend
    _patch_once(monkeypatch, backend.store, "insert_many", schema.INVOCATIONS, _wce_bulk)
    inv, call = make_dtos("inv-w", {"data": BIG})
    backend._upsert_invocations([(inv, call)])
    backend._flush_deferred(every_thread=True)
    reader: Any = make_app(app_id=app.app_id).state_backend
    _, call_back = reader._get_invocation("inv-w")
    assert call_back.serialized_arguments == {"data": BIG}
    assert raw(backend, schema.INVOCATIONS).count_documents({"invocation_id": "inv-w"}) == 1


# ---------------------------------------------------------------- classification
@pytest.mark.parametrize(
    ("exc", "documents", "outcome"),
    [
        (DocumentTooLarge("too large"), None, WriteOutcome.REJECTED),
        (DuplicateKeyError("E11000", 11000), None, WriteOutcome.REJECTED),
        (OperationFailure("validation", 121), None, WriteOutcome.REJECTED),
        (OperationFailure("too big", 17419), None, WriteOutcome.REJECTED),
        (OperationFailure("not authorized", 13), None, WriteOutcome.REJECTED),
        (_wtimeout(), None, WriteOutcome.APPLIED),
        (OperationFailure("x", 100, {"writeConcernError": {"code": 100}}), None, "applied"),
        (_wce_bulk(), 3, WriteOutcome.APPLIED),
        (_wce_bulk([{"index": 0, "code": 11000}]), 1, WriteOutcome.APPLIED),
        (BulkWriteError({"writeErrors": [{"index": 0, "code": 11000}]}), 1, "rejected"),
        (BulkWriteError({"writeErrors": [{"index": 0, "code": 11000}]}), 2, "unknown"),
        (BulkWriteError({"writeErrors": [{"index": 0, "code": 11000}]}), None, "unknown"),
        (BulkWriteError({"writeErrors": [{"index": 0, "code": 50}]}), 1, "unknown"),
        (AutoReconnect("reset"), None, WriteOutcome.UNKNOWN),
        (NetworkTimeout("timed out"), None, WriteOutcome.UNKNOWN),
        (NotPrimaryError("not primary"), None, WriteOutcome.UNKNOWN),
        (ExecutionTimeout("operation exceeded time limit", 50), None, WriteOutcome.UNKNOWN),
        (
            OperationFailure(
                "interrupted", 11602, {"code": 11602, "errorLabels": ["RetryableWriteError"]}
            ),
            None,
            WriteOutcome.UNKNOWN,
        ),
        (OperationFailure("internal", 1), None, WriteOutcome.UNKNOWN),
        (RuntimeError("not a driver error"), None, WriteOutcome.UNKNOWN),
    ],
)
def test_write_outcome(exc: BaseException, documents: int | None, outcome: str) -> None:
    assert write_outcome(exc, documents) == outcome
    assert is_surely_not_applied(exc, documents) == (outcome == WriteOutcome.REJECTED)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_wce_bulk(), True),  # before the fix: False, and the history writer gave up
        (_wce_bulk([{"index": 0, "code": 11000}]), True),
        (BulkWriteError({"writeErrors": [{"index": 0, "code": 11000}]}), True),
        (BulkWriteError({"writeErrors": []}), False),
        (_wce_bulk([{"index": 0, "code": 121}]), False),
        (BulkWriteError({"writeErrors": [{"index": 0, "code": 11000}, {"code": 2}]}), False),
    ],
)
def test_only_duplicates_counts_write_concern_errors_as_stored(
    exc: BulkWriteError, expected: bool
) -> None:
    """``only_duplicates`` also decides the asynchronous history writer's outcome."""
    assert only_duplicates(exc) is expected


# ---------------------------------------------------------------- a real replica set
@pytest.mark.real_server("a write concern error after the primary applied the write")
def test_unsatisfiable_write_concern_on_a_replica_set_keeps_the_value_readable(
    mongo_url: str, make_app: Callable[..., Pynenc]
) -> None:
    """On a replica set, ``w`` above its member count is applied by the primary and
    answered with a write concern error (MongoDB manual, "Write Concern": "the write
    operation [...] returns a write concern error [...] even if the write succeeds").
    The large result written that way must read back whole with the default write
    concern: its pieces are kept."""
    from pymongo import MongoClient

    with MongoClient(mongo_url, serverSelectionTimeoutMS=10_000) as client:
        hello = client.admin.command("hello")
    if "setName" not in hello:
        pytest.skip("needs a replica set (this server is a standalone mongod)")
    members = len(hello.get("hosts", [])) + len(hello.get("passives", []))
    separator = "&" if "?" in mongo_url else "/?" if mongo_url.count("/") == 2 else "?"
    unsatisfiable = f"{mongo_url}{separator}w={members + 1}&wtimeoutMS=2000"
    app = make_app(inline_value_max_bytes=1024)
    from pynenc import PynencBuilder
    from run_settings import RUN_DATABASE

    writer: Any = (
        PynencBuilder()
        .app_id(app.app_id)
        .memory()
        .mongo_state_backend(url=unsatisfiable, database=RUN_DATABASE, inline_value_max_bytes=1024)
        .build()
        .state_backend
    )
    with pytest.raises(Exception):  # noqa: B017 - whichever error maps the write concern
        writer._set_result("inv-wc", BIG)
    reader: Any = app.state_backend
    assert reader._get_result("inv-wc") == BIG
