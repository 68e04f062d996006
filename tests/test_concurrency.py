"""Many threads at once: upserts, history, results and workflow data."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
from _fakes import make_dtos, raw, raw_app_fixture, workflow_identity
from run_settings import REAL_URL

from pynenc_mongo import schema

make_raw_app = raw_app_fixture()

THREADS = 8
#: Invocations per thread: 1,000 against a real server. mongomock scans every
#: document on every query and unique-index check, so its cost grows with the
#: square of the data set (8 x 1,000 would take over half an hour); on it the
#: same test runs 150 per thread. PYNENC_MONGO_CONCURRENCY_PER_THREAD overrides.
PER_THREAD = int(
    os.environ.get("PYNENC_MONGO_CONCURRENCY_PER_THREAD", "1000" if REAL_URL else "150")
)
BATCH = 50
SHARED = 40  # invocations every thread upserts too: a duplicate race


def _status(name: str, runner_id: str) -> Any:
    from pynenc.invocation.status import InvocationStatus, InvocationStatusRecord

    return InvocationStatusRecord(status=InvocationStatus[name], runner_id=runner_id)


def _ctx(runner_id: str) -> Any:
    from pynenc.runner.runner_context import RunnerContext

    return RunnerContext(runner_cls="TestRunner", runner_id=runner_id)


def _args(inv_id: str) -> dict[str, str]:
    return {"x": f'"{inv_id}"', "n": str(len(inv_id))}


def _run_threads(target: Any, count: int) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def wrapped(index: int) -> None:
        try:
            barrier.wait()
            target(index)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


@pytest.mark.slow
@pytest.mark.wire_gap(
    "the emulator serves every client on one event loop: this load stalls it past the "
    "30 s outage tolerance, which no real server does"
)
def test_eight_threads_of_many_invocations_lose_and_duplicate_nothing(
    make_raw_app: Any,
) -> None:
    app = make_raw_app()
    backend = app.state_backend
    shared = [make_dtos(f"shared-{i}", _args(f"shared-{i}")) for i in range(SHARED)]
    common_wf = workflow_identity("wf-common")

    def work(t: int) -> None:
        runner = _ctx(f"runner-{t}")
        own_wf = workflow_identity(f"wf-{t}")
        ids = [f"t{t}-inv-{i}" for i in range(PER_THREAD)]
        for start in range(0, PER_THREAD, BATCH):
            chunk = [make_dtos(i, _args(i)) for i in ids[start : start + BATCH]]
            backend._upsert_invocations(chunk + shared)  # shared: a race, then cached
        for i, inv_id in enumerate(ids):
            backend.add_history(inv_id, _status("REGISTERED", runner.runner_id), runner)
            backend.add_history(inv_id, _status("SUCCESS", runner.runner_id), runner)
            backend._set_result(inv_id, f'"result of {inv_id}"')
            if i % 10 == 0:
                backend.set_workflow_data(own_wf, f"key.{i}", inv_id)
                backend.set_workflow_data(common_wf, f"t{t}.{i}", i)

    _run_threads(work, THREADS)
    backend.wait_for_all_async_operations()  # raw counts below bypass read-your-writes

    def count(logical: str) -> int:
        return int(raw(backend, logical).count_documents({"app_id": app.app_id}))

    total = THREADS * PER_THREAD
    assert count(schema.INVOCATIONS) == total + SHARED
    assert count(schema.HISTORY) == 2 * total
    assert count(schema.RESULTS) == total
    assert count(schema.WORKFLOW_DATA) == THREADS + 1
    assert count(schema.RUNNER_CONTEXTS) == THREADS

    reader = make_raw_app(app_id=app.app_id).state_backend  # no cache
    for t in range(THREADS):
        own_wf = workflow_identity(f"wf-{t}")
        for i in range(PER_THREAD):
            inv_id = f"t{t}-inv-{i}"
            _, call = reader._get_invocation(inv_id)
            assert call.serialized_arguments == _args(inv_id)
            assert reader._get_result(inv_id) == f'"result of {inv_id}"'
            history = reader.get_history(inv_id)
            assert [h.status_record.status.name for h in history] == ["REGISTERED", "SUCCESS"]
            if i % 10 == 0:
                assert reader.get_workflow_data(own_wf, f"key.{i}") == inv_id
                assert reader.get_workflow_data(common_wf, f"t{t}.{i}") == i
    for inv_dto, call_dto in shared:
        assert reader._get_invocation(inv_dto.invocation_id)[1] == call_dto


def test_same_invocation_from_many_threads_leaves_one_document(make_raw_app: Any) -> None:
    app = make_raw_app(inline_value_max_bytes=1024)
    big = "v" * 50_000  # stored as pieces: the losers' pieces must go
    pairs = [make_dtos(f"same-{i}", {"big": big}) for i in range(20)]
    backends = [make_raw_app(app_id=app.app_id, inline_value_max_bytes=1024) for _ in range(8)]

    def work(t: int) -> None:
        backend = backends[t].state_backend
        backend._upsert_invocations(pairs)
        backend._upsert_invocations(pairs)  # twice from the same process too
        backend.set_workflow_data(workflow_identity("wf-same"), "k", t)
        backend.store_workflow_run(workflow_identity("wf-same"))
        backend.store_workflow_sub_invocation("wf-same", "sub")

    _run_threads(work, 8)
    backend = app.state_backend
    invocations = raw(backend, schema.INVOCATIONS)
    for inv_dto, _ in pairs:
        query = {"app_id": app.app_id, "invocation_id": inv_dto.invocation_id}
        assert invocations.count_documents(query) == 1
    referenced = {
        arg["value"]["value_id"]
        for doc in invocations.find({"app_id": app.app_id})
        for arg in doc["call"]["serialized_arguments"]
    }
    pieces = set(raw(backend, schema.VALUE_PIECES).distinct("value_id", {"app_id": app.app_id}))
    assert pieces == referenced
    for logical in (schema.WORKFLOW_DATA, schema.WORKFLOW_RUNS, schema.WORKFLOW_SUB_INVOCATIONS):
        assert raw(backend, logical).count_documents({"app_id": app.app_id}) == 1
    assert backend.get_workflow_data(workflow_identity("wf-same"), "k") in range(8)
