"""Retention: finished invocations expire through TTL indexes.

mongomock applies TTL only when documents are read, so these tests check what
the server's TTL monitor works from: ``expire_at`` on exactly the finished
invocation's documents, and TTL indexes with ``expireAfterSeconds=0``. The
deletion itself is checked against a real server.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from _fakes import make_dtos, raw, raw_app_fixture, workflow_identity

from pynenc_mongo import schema, values
from pynenc_mongo.state_backend import MongoStateBackend
from pynenc_mongo.state_backend.history import HISTORY_BACKSTOP

make_raw_app = raw_app_fixture()
BIG = "x" * 5000


def _status(name: str) -> Any:
    from pynenc.invocation.status import InvocationStatus, InvocationStatusRecord

    return InvocationStatusRecord(status=InvocationStatus[name], runner_id="r")


def _ctx() -> Any:
    from pynenc.runner.runner_context import RunnerContext

    return RunnerContext(runner_cls="TestRunner", runner_id="r")


def _populate(backend: MongoStateBackend, inv_id: str, final: str | None) -> None:
    """An invocation that is also a workflow root, with pieces everywhere."""
    inv, call = make_dtos(inv_id, {"big": BIG, "small": "1"})
    backend._upsert_invocations([(inv, call)])
    wf = workflow_identity(inv_id)
    backend.store_workflow_run(wf)
    backend.store_workflow_sub_invocation(inv_id, f"{inv_id}-sub")
    backend.set_workflow_data(wf, "big", BIG)
    backend.set_workflow_data(wf, "small", 1)
    for status in ("REGISTERED", "PENDING", "RUNNING"):
        backend.add_history(inv_id, _status(status), _ctx())
    backend._set_result(inv_id, f'"{BIG}"')
    backend._set_exception(inv_id, f'"{BIG}"')
    if final:
        backend.add_history(inv_id, _status(final), _ctx())


def _owned(backend: MongoStateBackend, inv_id: str) -> dict[str, list[dict[str, Any]]]:
    app = backend.app_id
    filters = {
        schema.INVOCATIONS: {"invocation_id": inv_id},
        schema.HISTORY: {"invocation_id": inv_id},
        schema.RESULTS: {"invocation_id": inv_id},
        schema.EXCEPTIONS: {"invocation_id": inv_id},
        schema.VALUE_PIECES: {"owner": {"$in": [inv_id, f"workflow:{inv_id}"]}},
        schema.WORKFLOW_RUNS: {"workflow_id": inv_id},
        schema.WORKFLOW_DATA: {"workflow_id": inv_id},
        schema.WORKFLOW_SUB_INVOCATIONS: {"workflow_id": inv_id},
    }
    return {
        logical: list(raw(backend, logical).find({"app_id": app, **filter_}))
        for logical, filter_ in filters.items()
    }


def test_expire_at_is_set_on_exactly_the_finished_invocations_documents(
    make_raw_app: Any,
) -> None:
    backend = make_raw_app(retention_days=7, inline_value_max_bytes=1024).state_backend
    _populate(backend, "done", "SUCCESS")
    _populate(backend, "failed", "FAILED")
    _populate(backend, "running", None)
    backend.wait_for_all_async_operations()  # raw reads below bypass read-your-writes
    for inv_id in ("done", "failed"):
        owned = _owned(backend, inv_id)
        final_ts = max(doc["ts"] for doc in owned[schema.HISTORY])
        expected = final_ts + timedelta(days=7)
        for logical, docs in owned.items():
            assert docs, f"{logical}: no documents for {inv_id}"
            for doc in docs:
                assert abs(doc[schema.F_EXPIRE] - expected) < timedelta(seconds=1), logical
        assert len(owned[schema.VALUE_PIECES]) >= 4
    for logical, docs in _owned(backend, "running").items():
        assert docs, logical
        if logical == schema.HISTORY:  # a backstop, in case it lands after the final stamp
            backstop = timedelta(days=7) + HISTORY_BACKSTOP
            assert all(doc[schema.F_EXPIRE] == doc["ts"] + backstop for doc in docs)
            continue
        assert all(schema.F_EXPIRE not in doc for doc in docs), logical


def _prefix() -> str:
    """A collection prefix of its own: indexes belong to collections, which a real
    server's test database shares between tests."""
    return f"t{uuid.uuid4().hex[:8]}_"


def test_without_retention_nothing_expires(make_raw_app: Any) -> None:
    backend = make_raw_app(inline_value_max_bytes=1024, collection_prefix=_prefix()).state_backend
    _populate(backend, "done", "SUCCESS")
    for logical, docs in _owned(backend, "done").items():
        assert all(schema.F_EXPIRE not in doc for doc in docs), logical
    for logical in schema.STATE_COLLECTIONS:
        infos = raw(backend, logical).index_information()
        assert not any("expireAfterSeconds" in info for info in infos.values()), logical


def test_ttl_indexes_exist_with_expire_after_zero_when_retention_is_on(make_raw_app: Any) -> None:
    backend = make_raw_app(retention_days=1, collection_prefix=_prefix()).state_backend
    _populate(backend, "done", "SUCCESS")
    expected = {
        schema.INVOCATIONS,
        schema.HISTORY,
        schema.RESULTS,
        schema.EXCEPTIONS,
        schema.VALUE_PIECES,
        schema.WORKFLOW_RUNS,
        schema.WORKFLOW_DATA,
        schema.WORKFLOW_SUB_INVOCATIONS,
    }
    for logical in schema.STATE_COLLECTIONS:
        infos = raw(backend, logical).index_information()
        ttl = [info for info in infos.values() if "expireAfterSeconds" in info]
        if logical in expected:
            assert len(ttl) == 1, logical
            assert ttl[0]["expireAfterSeconds"] == 0
            assert list(ttl[0]["key"]) == [(schema.F_EXPIRE, 1)]
        else:
            assert ttl == [], logical  # runner contexts and app infos are kept
    specs = [
        s for s in schema.INDEXES if s.retention_only and s.collection in schema.STATE_COLLECTIONS
    ]
    assert {s.collection for s in specs} == expected  # the index script creates these too


def test_expired_value_whose_pieces_are_already_deleted_reads_as_missing(
    make_raw_app: Any,
) -> None:
    """The TTL monitor deletes documents in no particular order: a result may
    outlive its pieces for a moment. It reads as not stored, not as an error."""
    app = make_raw_app(inline_value_max_bytes=1024)
    backend = app.state_backend
    backend._set_result("gone", f'"{BIG}"')
    backend._set_result("corrupt", f'"{BIG}"')
    inv, call = make_dtos("gone", {"big": BIG})
    backend._upsert_invocations([(inv, call)])
    past = datetime.now(UTC) - timedelta(minutes=1)
    for logical in (schema.RESULTS, schema.INVOCATIONS):
        raw(backend, logical).update_many({"invocation_id": "gone"}, {"$set": {"expire_at": past}})
    pieces = raw(backend, schema.VALUE_PIECES)
    pieces.delete_many({"owner": {"$in": ["gone", "corrupt"]}})
    with pytest.raises(KeyError):
        backend._get_result("gone")
    fresh = make_raw_app(app_id=app.app_id).state_backend
    assert fresh._get_invocation("gone") is None
    with pytest.raises(values.StaleValueError):  # not expiring: missing pieces are an error
        backend._get_result("corrupt")


@pytest.mark.real_server
@pytest.mark.slow
def test_the_server_deletes_expired_invocations(make_raw_app: Any) -> None:
    """MongoDB's TTL monitor runs every 60 seconds."""
    backend = make_raw_app(retention_days=1 / 86_400, inline_value_max_bytes=1024).state_backend
    _populate(backend, "done", "SUCCESS")
    _populate(backend, "running", None)
    deadline = time.monotonic() + 180
    while any(_owned(backend, "done").values()) and time.monotonic() < deadline:
        time.sleep(5)
    assert not any(_owned(backend, "done").values())
    assert all(_owned(backend, "running").values())
