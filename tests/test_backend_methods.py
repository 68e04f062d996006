"""Every backend method with empty, missing and many-item inputs; ordering; isolation; purge.

These go beyond pynenc's conformance suites (which test one item of each kind).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pynenc import Pynenc
from pynenc.exceptions import InvocationNotFoundError
from pynenc.identifiers.task_id import TaskId
from pynenc.invocation.status import InvocationStatus, InvocationStatusRecord
from pynenc.runner.runner_context import RunnerContext
from pynenc.state_backend.base_state_backend import InvocationHistory
from pynenc.workflow.workflow_identity import WorkflowIdentity
from pynenc_tests.unit.state_backend.test_state_backend_all_instances import (
    dummy_task,
    dummy_task_with_args,
)

from pynenc_mongo import schema
from pynenc_mongo.monitoring import count_operations

CTX = RunnerContext(runner_cls="TestRunner", runner_id="runner-methods")


def _history(inv_id: str, status: InvocationStatus, at: datetime) -> InvocationHistory:
    history = InvocationHistory(
        invocation_id=inv_id,
        status_record=InvocationStatusRecord(status=status, timestamp=at),
        runner_context_id=CTX.runner_id,
    )
    history._timestamp = at
    return history


def _invocations(app: Pynenc, n: int, with_args: bool = False) -> list[Any]:
    task = dummy_task_with_args if with_args else dummy_task
    task.app = app
    invocations = [task(i, 1) if with_args else task() for i in range(n)]
    # calling a task records REGISTERED history: let it land before counting operations
    app.state_backend.wait_for_all_async_operations()
    return invocations


# --------------------------------------------------------------------- invocations
def test_upsert_empty_batch_issues_no_operation(backend: Any) -> None:
    with count_operations() as ops:
        backend.upsert_invocations([])
        backend._upsert_invocations([])
    assert ops.total == 0


def test_upsert_many_is_one_operation_and_idempotent(app_instance: Pynenc) -> None:
    backend = app_instance.state_backend
    invocations = _invocations(app_instance, 300, with_args=True)
    backend._dto_cache.clear()
    with count_operations() as ops:
        backend.upsert_invocations(invocations)  # deferred (pynenc's constructors)
        assert ops.total == 0
        backend.upsert_invocations(invocations)  # the registration: one insert_many
    assert ops.counts == {"insert": 1}
    with count_operations() as ops:
        backend.upsert_invocations(invocations)  # known to this process: nothing to write
    assert ops.total == 0
    backend._dto_cache.clear()
    backend.upsert_invocations(invocations + invocations[:5])  # already stored: kept once
    col = backend.collection(schema.INVOCATIONS)
    ids = [inv.invocation_id for inv in invocations]
    assert col.count_documents({schema.F_APP: backend.app_id, schema.F_INV: {"$in": ids}}) == 300
    for inv in invocations[:20]:
        got = backend.get_invocation(inv.invocation_id)
        assert got.call.serialized_arguments == inv.call.serialized_arguments


def test_get_invocation_missing(backend: Any) -> None:
    assert backend._get_invocation("no-such-invocation") is None
    with pytest.raises(InvocationNotFoundError):
        backend.get_invocation("no-such-invocation")


def test_get_invocation_reads_mongodb_once_then_cache(app_instance: Pynenc) -> None:
    backend = app_instance.state_backend
    (inv,) = _invocations(app_instance, 1, with_args=True)
    backend.upsert_invocations([inv])
    backend._dto_cache.clear()
    with count_operations() as ops:
        for _ in range(5):
            backend.get_invocation(inv.invocation_id)
    assert ops.counts == {"find": 1}


def test_invocation_document_has_queryable_bson_fields(app_instance: Pynenc) -> None:
    backend = app_instance.state_backend
    (inv,) = _invocations(app_instance, 1, with_args=True)
    backend.upsert_invocations([inv])
    doc = backend.collection(schema.INVOCATIONS).find_one(
        {schema.F_APP: backend.app_id, schema.F_TASK: dummy_task_with_args.task_id.key}
    )
    assert doc is not None
    assert doc["invocation"]["call_id"]["task_id"]["func_name"] == "dummy_task_with_args"
    assert isinstance(doc["call"]["serialized_arguments"], list)
    assert [a["name"] for a in doc["call"]["serialized_arguments"]] == ["a", "b"]


def test_child_and_parent_event_queries(backend: Any, app_instance: Pynenc) -> None:
    assert list(backend.get_child_invocations("nobody")) == []
    assert list(backend.get_invocations_by_parent_event("no-event")) == []
    from pynenc.models.call_dto import CallDTO
    from pynenc.models.invocation_dto import InvocationDTO

    (parent,) = _invocations(app_instance, 1)
    call = parent.call.to_dto()
    fields = {f for f in InvocationDTO.__dataclass_fields__}
    children = []
    for i in range(150):
        kwargs: dict[str, Any] = {
            "invocation_id": f"child-{i}",
            "call_id": call.call_id,
            "workflow": parent.workflow,
            "parent_invocation_id": parent.invocation_id,
        }
        if "parent_event_id" in fields:
            kwargs["parent_event_id"] = "event-1" if i % 2 else None
        children.append((InvocationDTO(**kwargs), CallDTO(call_id=call.call_id)))
    backend._upsert_invocations(children)
    assert sorted(backend.get_child_invocations(parent.invocation_id)) == sorted(
        f"child-{i}" for i in range(150)
    )
    if "parent_event_id" in fields:
        assert sorted(backend.get_invocations_by_parent_event("event-1")) == sorted(
            f"child-{i}" for i in range(150) if i % 2
        )


def test_invocation_ids_by_workflow_filters(app_instance: Pynenc) -> None:
    backend = app_instance.state_backend
    invocations = _invocations(app_instance, 4)
    backend.upsert_invocations(invocations)
    every = set(backend.get_invocation_ids_by_workflow())
    assert {inv.invocation_id for inv in invocations} <= every
    assert list(backend.get_invocation_ids_by_workflow(workflow_id="nope")) == []
    assert list(backend.get_invocation_ids_by_workflow(workflow_type_key="x.y")) == []
    wf = invocations[0].workflow
    if wf is not None:
        both = list(
            backend.get_invocation_ids_by_workflow(
                workflow_id=wf.workflow_id, workflow_type_key=wf.workflow_type.key
            )
        )
        assert invocations[0].invocation_id in both


# --------------------------------------------------------------------- history
def test_history_empty_and_missing(backend: Any) -> None:
    assert backend.get_history("nobody") == []
    with count_operations() as ops:
        backend._add_histories([], _history("x", InvocationStatus.REGISTERED, datetime.now(UTC)))
        backend.add_histories([], InvocationStatusRecord(InvocationStatus.REGISTERED), CTX)
    assert ops.counts.get("insert", 0) == 0


def test_add_histories_many_is_one_insert(app_instance: Pynenc) -> None:
    backend = app_instance.state_backend
    invocations = _invocations(app_instance, 200)
    backend.store_runner_context(CTX)
    with count_operations() as ops:
        backend.add_histories(invocations, InvocationStatusRecord(InvocationStatus.PENDING), CTX)
        backend.wait_for_all_async_operations()
    assert ops.counts["insert"] == 1
    for inv in invocations[:10]:
        assert backend.get_history(inv.invocation_id)[-1].status_record.status == (
            InvocationStatus.PENDING
        )


def test_history_order_is_exact_to_the_microsecond(backend: Any) -> None:
    base = datetime(2025, 3, 1, 12, 0, 0, 500_000, tzinfo=UTC)
    moments = [base + timedelta(microseconds=us) for us in (7, 1, 999, 0, 3, 1000, 2)]
    statuses = list(InvocationStatus)[: len(moments)]
    for moment, status in zip(moments, statuses, strict=True):
        backend._add_histories(["inv-us"], _history("inv-us", status, moment))
    got = backend.get_history("inv-us")
    assert [h.timestamp for h in got] == sorted(moments)
    assert all(h.timestamp.tzinfo is not None for h in got)
    by_time = dict(zip(moments, statuses, strict=True))
    assert [h.status_record.status for h in got] == [by_time[m] for m in sorted(moments)]
    assert [h.status_record.timestamp for h in got] == sorted(moments)


def test_same_status_same_millisecond_both_kept_in_insertion_order(backend: Any) -> None:
    at = datetime(2025, 3, 1, 12, 0, 0, 123_456, tzinfo=UTC)
    first = _history("inv-tie", InvocationStatus.RUNNING, at)
    second = _history("inv-tie", InvocationStatus.RUNNING, at)
    second.runner_context_id = "other-runner"
    backend._add_histories(["inv-tie"], first)
    backend._add_histories(["inv-tie"], second)
    got = backend.get_history("inv-tie")
    assert [h.runner_context_id for h in got] == [CTX.runner_id, "other-runner"]
    assert got[0].timestamp == got[1].timestamp == at
    assert got == backend.get_history("inv-tie")  # deterministic


def test_timerange_iteration_batches_and_bounds(backend: Any) -> None:
    base = datetime(2025, 5, 1, tzinfo=UTC)
    for i in range(25):
        moment = base + timedelta(seconds=i)
        backend._add_histories(
            [f"inv-{i % 10}"], _history(f"inv-{i % 10}", InvocationStatus.RUNNING, moment)
        )
    assert (
        list(backend.iter_history_in_timerange(base - timedelta(days=2), base - timedelta(days=1)))
        == []
    )
    batches = list(
        backend.iter_history_in_timerange(base, base + timedelta(seconds=24), batch_size=7)
    )
    assert [len(b) for b in batches] == [7, 7, 7, 4]
    flat = [h.timestamp for b in batches for h in b]
    assert flat == sorted(flat) and flat[0] == base and flat[-1] == base + timedelta(seconds=24)
    inclusive = list(
        backend.iter_history_in_timerange(base + timedelta(seconds=3), base + timedelta(seconds=3))
    )
    assert [len(b) for b in inclusive] == [1]
    id_batches = list(
        backend.iter_invocations_in_timerange(base, base + timedelta(hours=1), batch_size=4)
    )
    assert [len(b) for b in id_batches] == [4, 4, 2]
    ids = [i for b in id_batches for i in b]
    assert ids == [f"inv-{i}" for i in range(10)]  # distinct, in order of first entry
    assert list(backend.iter_invocations_in_timerange(base, base, batch_size=1)) == [["inv-0"]]


# --------------------------------------------------------------------- results
def test_results_and_exceptions_missing_and_overwrite(backend: Any) -> None:
    with pytest.raises(KeyError):
        backend.get_result("nobody")
    with pytest.raises(KeyError):
        backend.get_exception("nobody")
    backend.set_result("inv-r", 1)
    backend.set_result("inv-r", {"second": [2]})
    assert backend.get_result("inv-r") == {"second": [2]}
    backend.set_exception("inv-r", KeyError("k"))
    backend.set_exception("inv-r", ValueError("v"))
    exc = backend.get_exception("inv-r")
    assert isinstance(exc, ValueError) and str(exc) == "v"
    col = backend.collection(schema.RESULTS)
    assert col.count_documents({schema.F_APP: backend.app_id, schema.F_INV: "inv-r"}) == 1


# --------------------------------------------------------------------- workflows
def _wf(i: int = 0, parent: str | None = None) -> WorkflowIdentity:
    return WorkflowIdentity(
        workflow_id=f"wf-{i}",
        workflow_type=TaskId("my.module", f"flow_{i % 3}"),
        parent_workflow_id=parent,
    )


@pytest.mark.parametrize(
    "key",
    ["", "a.b", "$x", "a.$b.c", "%", "%2E", "k", "ünïcødé ☃", "x" * 5000, "a\x01b", "..", "$"],
)
def test_workflow_data_hostile_keys_round_trip(backend: Any, key: str) -> None:
    wf = _wf()
    backend.set_workflow_data(wf, key, {"key": key})
    backend.set_workflow_data(wf, key + "-other", 2)
    assert backend.get_workflow_data(wf, key) == {"key": key}
    assert backend.get_workflow_data(wf, key + "-other") == 2


def test_workflow_data_missing_and_one_document_per_workflow(backend: Any) -> None:
    wf = _wf(1)
    assert backend.get_workflow_data(wf, "missing") is None
    assert backend.get_workflow_data(wf, "missing", default=5) == 5
    for i in range(100):
        backend.set_workflow_data(wf, f"k{i}", i)
    backend.set_workflow_data(wf, "k3", "changed")
    assert backend.get_workflow_data(wf, "k3") == "changed"
    assert backend.get_workflow_data(wf, "k99") == 99
    assert backend.get_workflow_data(_wf(2), "k1") is None
    col = backend.collection(schema.WORKFLOW_DATA)
    assert col.count_documents({schema.F_APP: backend.app_id, "workflow_id": "wf-1"}) == 1


def test_workflow_runs_types_and_sub_invocations(backend: Any) -> None:
    assert list(backend.get_all_workflow_types()) == []
    assert list(backend.get_all_workflow_runs()) == []
    assert list(backend.get_workflow_runs(TaskId("my.module", "flow_0"))) == []
    assert list(backend.get_workflow_sub_invocations("wf-0")) == []
    runs = [_wf(i, parent="wf-0" if i else None) for i in range(30)]
    for run in runs + runs[:3]:
        backend.store_workflow_run(run)
    assert sorted(t.key for t in backend.get_all_workflow_types()) == [
        "my.module.flow_0",
        "my.module.flow_1",
        "my.module.flow_2",
    ]
    assert sorted(backend.get_all_workflow_runs(), key=lambda w: w.workflow_id) == sorted(
        runs, key=lambda w: w.workflow_id
    )
    assert {w.workflow_id for w in backend.get_workflow_runs(TaskId("my.module", "flow_1"))} == {
        f"wf-{i}" for i in range(30) if i % 3 == 1
    }
    for i in range(50):
        backend.store_workflow_sub_invocation("wf-0", f"sub-{i}")
    backend.store_workflow_sub_invocation("wf-0", "sub-0")
    assert sorted(backend.get_workflow_sub_invocations("wf-0")) == sorted(
        f"sub-{i}" for i in range(50)
    )


# --------------------------------------------------------------------- runner contexts
def test_runner_contexts_missing_many_and_parents(backend: Any) -> None:
    assert backend.get_runner_context("nobody") is None
    assert backend.get_runner_contexts([]) == []
    root = RunnerContext(runner_cls="Root", runner_id="root-1")
    children = [root.new_child_context("Worker", f"worker-{i}") for i in range(40)]
    for child in children:
        backend.store_runner_context(child)
    backend._runner_context_cache.clear()
    got = backend.get_runner_contexts([c.runner_id for c in children] + ["missing"])
    assert sorted(c.runner_id for c in got) == sorted(c.runner_id for c in children)
    assert all(c.parent_ctx is not None and c.parent_ctx.runner_id == "root-1" for c in got)
    assert len(list(backend.get_matching_runner_contexts(""))) == 41
    assert [c.runner_id for c in backend.get_matching_runner_contexts("ker-39")] == ["worker-39"]


def test_runner_context_search_is_literal(backend: Any) -> None:
    for runner_id in ("a.b(c)*d\\e", "axb(c)*d\\e", "plain"):
        backend.store_runner_context(RunnerContext(runner_cls="R", runner_id=runner_id))
    assert [c.runner_id for c in backend.get_matching_runner_contexts(".b(c)*d\\")] == [
        "a.b(c)*d\\e"
    ]
    assert list(backend.get_matching_runner_contexts("(a+)+$")) == []
    assert list(backend.get_matching_runner_contexts("[")) == []


# --------------------------------------------------------------------- app info, isolation, purge
def test_app_info_missing_then_stored(make_app: Callable[..., Pynenc]) -> None:
    app = make_app()
    backend = app.state_backend  # storing app info happens here (pynenc does it)
    backend.collection(schema.APP_INFOS).delete_many({schema.F_APP: app.app_id})
    with pytest.raises(KeyError):
        backend.get_app_info()
    from pynenc.app_info import AppInfo

    backend.store_app_info(AppInfo.from_app(app))
    assert backend.get_app_info().app_id == app.app_id


def _fill(app: Pynenc) -> None:
    backend: Any = app.state_backend
    invocations = _invocations(app, 3, with_args=True)
    backend.upsert_invocations(invocations)
    inv_id = invocations[0].invocation_id
    backend.add_history(inv_id, InvocationStatusRecord(InvocationStatus.RUNNING), CTX)
    backend.set_result(inv_id, "r" * 3000)
    backend.set_exception(inv_id, ValueError("e"))
    backend.store_workflow_run(_wf(7))
    backend.store_workflow_sub_invocation("wf-7", inv_id)
    backend.set_workflow_data(_wf(7), "key", "x" * 200)
    backend._set_result(invocations[1].invocation_id, "y" * 2_000_000)  # large: value pieces
    backend.wait_for_all_async_operations()


def _counts(backend: Any) -> dict[str, int]:
    return {
        logical: backend.collection(logical).count_documents({schema.F_APP: backend.app_id})
        for logical in schema.STATE_COLLECTIONS
    }


def test_two_apps_in_one_database_are_isolated_and_purge_is_exact(
    make_app: Callable[..., Pynenc],
) -> None:
    app_a, app_b = make_app("isolation-a"), make_app("isolation-b")
    _fill(app_a)
    _fill(app_b)
    a: Any = app_a.state_backend
    b: Any = app_b.state_backend
    counts_b = _counts(b)
    assert all(counts_b[c] > 0 for c in schema.STATE_COLLECTIONS), str(counts_b)
    a_ids = set(a.get_invocation_ids_by_workflow())
    b_ids = set(b.get_invocation_ids_by_workflow())
    assert a_ids and b_ids and not (a_ids & b_ids)
    for inv_id in a_ids:
        assert b._get_invocation(inv_id) is None
        assert b.get_history(inv_id) == []
    assert b.get_app_info().app_id == "isolation-b"
    a.purge()
    assert all(v == 0 for v in _counts(a).values())
    assert _counts(b) == counts_b
    assert b.get_workflow_data(_wf(7), "key") == "x" * 200
    b_inv = sorted(b_ids)
    assert any(b._get_result(i) == "y" * 2_000_000 for i in b_inv if _has_result(b, i))


def _has_result(backend: Any, inv_id: str) -> bool:
    try:
        backend._get_result(inv_id)
    except KeyError:
        return False
    return True
