"""MongoOrchestrator's own behaviour beyond pynenc's suites: round trips of the hot
path, precise errors, bounded race retries, idempotent registration, argument hashes,
the atomic-service lease, batched auto purge, blocking-control order and the query
audit of the orchestrator's collections. Runs on ``mongo_url`` (mongomock, or the
server of ``PYNENC_MONGO_TEST_URL``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import query_recorder
from orch_workers import register_invocations
from pynenc import Pynenc
from pynenc.exceptions import (
    InvocationStatusOwnershipError,
    InvocationStatusRaceConditionError,
    InvocationStatusTransitionError,
)
from pynenc.invocation.status import InvocationStatus
from pynenc.orchestrator.base_orchestrator import BaseOrchestrator

from pynenc_mongo.monitoring import count_operations
from pynenc_mongo.orchestrator import ARG_HASH_CHARS, MongoOrchestrator, argument_hashes
from pynenc_mongo.orchestrator import transitions as tr
from pynenc_mongo.schema import orchestrator as s

PENDING, RUNNING, SUCCESS = (
    InvocationStatus.PENDING,
    InvocationStatus.RUNNING,
    InvocationStatus.SUCCESS,
)
needs_gate = pytest.mark.skipif(
    not hasattr(BaseOrchestrator, "record_atomic_service_execution_start"),
    reason="pynenc 0.2.3 has no atomic-service storage gate",
)


@pytest.fixture
def orch(app_instance: Pynenc) -> MongoOrchestrator:
    orchestrator = app_instance.orchestrator
    assert isinstance(orchestrator, MongoOrchestrator)
    for name in s.COLLECTIONS:  # indexes made now, not inside the operation counts
        orchestrator.store.collection(name)
    return orchestrator


def raw(orch: MongoOrchestrator, inv: str) -> dict[str, Any]:
    doc = orch.store.collection(s.INVOCATIONS).find_one(
        {"_id": s.invocation_key(orch.app.app_id, inv)}
    )
    assert doc is not None
    return doc


def test_transition_is_one_operation_and_final_reads_are_free(orch: MongoOrchestrator) -> None:
    (inv,) = register_invocations(orch.app, 1)
    for status in (PENDING, RUNNING, SUCCESS):
        with count_operations() as ops:
            record = orch._atomic_status_transition(inv, status, "r1")
        assert ops.total == 1, dict(ops.counts)
        assert record.status == status
    with count_operations() as ops:
        assert orch.get_invocation_status(inv) == SUCCESS  # cached: final never changes
        orch.release_waiters(inv)  # nobody waited: the transition read no flag
        orch.set_up_invocation_auto_purge(inv)  # stamped by the final transition
    assert ops.total == 0
    doc = raw(orch, inv)
    assert doc[s.F_VERSION] == 3 and doc[s.F_PURGE] == doc[s.F_TS] and s.F_GATE not in doc


def test_refused_transitions_raise_pynencs_errors(orch: MongoOrchestrator) -> None:
    (inv,) = register_invocations(orch.app, 1)
    with pytest.raises(InvocationStatusTransitionError):
        orch._atomic_status_transition(inv, SUCCESS, "r1")  # REGISTERED -> SUCCESS
    with pytest.raises(InvocationStatusOwnershipError):
        orch._atomic_status_transition(inv, PENDING, None)  # acquiring needs a runner
    orch._atomic_status_transition(inv, PENDING, "r1")
    with pytest.raises(InvocationStatusOwnershipError):
        orch._atomic_status_transition(inv, RUNNING, "r2")  # owned by r1
    with pytest.raises(InvocationStatusTransitionError):
        orch._atomic_status_transition(inv, PENDING, "r1")  # PENDING -> PENDING
    orch._atomic_status_transition(inv, RUNNING, "r1")
    assert raw(orch, inv)[s.F_GATE] == "r1"
    # recovery overrides ownership
    orch._atomic_status_transition(inv, InvocationStatus.RUNNING_RECOVERY, "sweeper")
    assert orch.get_invocation_status_record(inv).runner_id is None
    assert raw(orch, inv)[s.F_VERSION] == 3


def test_missing_invocation_raises_key_error(orch: MongoOrchestrator) -> None:
    with pytest.raises(KeyError):
        orch._atomic_status_transition("no-such-invocation", PENDING, "r1")
    with pytest.raises(KeyError):
        orch.get_invocation_status_record("no-such-invocation")
    assert orch.get_invocation_retries("no-such-invocation") == 0


class ChangingCollection:
    """A collection where another writer wins every write of this one: it changes
    the record just before each write (for the filter-group write, as if it moved
    the status away and back; for a compare-and-set, by moving the version on)."""

    def __init__(self, collection: Any, key: str) -> None:
        self.collection, self.key, self.writes = collection, key, 0

    def find_one(self, *args: Any, **kwargs: Any) -> Any:
        return self.collection.find_one(*args, **kwargs)

    def find_one_and_update(self, query: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        self.writes += 1
        if s.F_VERSION not in query:
            return None  # the status was elsewhere at that instant
        self.collection.update_one({"_id": self.key}, {"$inc": {s.F_VERSION: 1}})
        return self.collection.find_one_and_update(query, *args, **kwargs)


def test_lost_races_are_retried_a_bounded_number_of_times(orch: MongoOrchestrator) -> None:
    (inv,) = register_invocations(orch.app, 1)
    orch._atomic_status_transition(inv, PENDING, "r1")
    key = s.invocation_key(orch.app.app_id, inv)
    changing = ChangingCollection(orch.store.collection(s.INVOCATIONS), key)
    with pytest.raises(InvocationStatusRaceConditionError) as info:
        tr.transition(changing, key, inv, InvocationStatus.KILLED, "r1", attempts=3)  # type: ignore[arg-type]
    assert changing.writes == 1 + 3  # the filter group, then three compare-and-sets
    assert info.value.expected_status_record.status == InvocationStatus.KILLED
    assert orch.get_invocation_status(inv) == PENDING


def test_filter_groups_follow_get_status_definition() -> None:
    groups = tr.plan(RUNNING, "r1")
    assert len(groups) == 1 and groups[0].new_owner == "r1"
    froms = set(groups[0].gated) | set(groups[0].free)
    expected = {
        st.value
        for st in InvocationStatus
        if RUNNING in tr.get_status_definition(st).allowed_transitions
    }
    assert froms == expected and set(groups[0].gated) == expected  # owned from-statuses
    assert tr.plan(PENDING, None) == []  # acquiring ownership without a runner
    recovery = tr.plan(InvocationStatus.RUNNING_RECOVERY, "x")
    assert recovery[0].gated == () and recovery[0].new_owner is None


def test_registration_is_idempotent_and_never_resets_a_status(orch: MongoOrchestrator) -> None:
    from pynenc.call import Call
    from pynenc.invocation import DistributedInvocation
    from pynenc_tests.integration.orchestrator.orchestrator_tasks import dummy_task

    dummy_task.app = orch.app
    invocation = DistributedInvocation.isolated(Call(dummy_task))
    with count_operations() as ops:
        orch._register_new_invocations([invocation, invocation], "r0")
    assert ops.total == 1
    orch._atomic_status_transition(invocation.invocation_id, PENDING, "r1")
    orch._register_new_invocations([invocation], "r0")
    assert orch.get_invocation_status(invocation.invocation_id) == PENDING
    assert list(orch.get_task_invocation_ids(dummy_task.task_id)) == [invocation.invocation_id]


def test_argument_hashes_are_bounded_and_matched(orch: MongoOrchestrator) -> None:
    hashes = argument_hashes({"key": "x" * 100_000, "arg": "1"})
    assert [len(h) for h in hashes] == [ARG_HASH_CHARS] * 2
    from pynenc.arguments import Arguments
    from pynenc.call import Call
    from pynenc.invocation import DistributedInvocation

    try:
        from pynenc_tests.integration.orchestrator.orchestrator_tasks import (
            dummy_running_key_arg,
        )
    except ImportError:  # pynenc 0.2.3's test tasks
        pytest.skip("no running-concurrency test task in this pynenc version")

    dummy_running_key_arg.app = orch.app
    big = "v" * 50_000
    first = DistributedInvocation.isolated(
        Call(dummy_running_key_arg, Arguments({"key": big, "arg": "a"}))
    )
    other = DistributedInvocation.isolated(
        Call(dummy_running_key_arg, Arguments({"key": "k", "arg": "a"}))
    )
    with count_operations() as ops:
        orch._register_new_invocations([first, other])
        orch.index_arguments_for_concurrency_control(first)  # hashed at insert: no-op
    assert ops.total == 1
    key_args = {"key": first.call.serialized_arguments["key"]}
    found = list(orch.get_existing_invocations(dummy_running_key_arg, key_args))
    assert found == [first.invocation_id]
    both = dict(first.call.serialized_arguments)
    assert list(
        orch.get_existing_invocations(dummy_running_key_arg, both, [InvocationStatus.REGISTERED])
    ) == [first.invocation_id]


def test_heartbeats_order_and_keep_queues(orch: MongoOrchestrator) -> None:
    orch.register_runner_heartbeats(["b", "a", "c"], consumed_queues=["q1"])
    time.sleep(0.002)
    orch.register_runner_heartbeats(["0-later"])
    orch.register_runner_heartbeats(["a"], can_run_atomic_service=True)  # queues kept
    runners = orch.get_active_runners()
    assert [r.runner_id for r in runners] == ["a", "b", "c", "0-later"]
    assert len({r.creation_time for r in runners[:3]}) == 1
    if "consumed_queues" in runners[0]._fields:
        assert runners[0].consumed_queues == ("q1",)
    assert [r.runner_id for r in orch.get_active_runners(can_run_atomic_service=True)] == ["a"]


def test_blocking_invocations_oldest_first_and_one_query_when_idle(orch: MongoOrchestrator) -> None:
    with count_operations() as ops:
        assert list(orch.get_blocking_invocations(10)) == []
    assert ops.total == 1
    waited = register_invocations(orch.app, 3)
    waiter = register_invocations(orch.app, 1)[0]
    for inv in reversed(waited):  # the last id waits longest
        orch.waiting_for_results(waiter, [inv])
        time.sleep(0.002)
    orch.waiting_for_results(waiter, [waited[0]])  # idempotent
    assert list(orch.get_blocking_invocations(10)) == list(reversed(waited))
    assert list(orch.get_blocking_invocations(1)) == [waited[2]]
    orch.waiting_for_results(waited[2], [waited[1]])  # waited[2] now waits itself
    assert list(orch.get_blocking_invocations(10)) == [waited[1], waited[0]]
    orch._atomic_status_transition(waited[1], PENDING, "r1")  # no longer available
    assert list(orch.get_blocking_invocations(10)) == [waited[0]]


def test_auto_purge_is_batched_and_removes_edges(
    make_orchestrator_app: Callable[..., Pynenc],
) -> None:
    app = make_orchestrator_app(mongo_purge_batch_size=2)
    orch = app.orchestrator
    ids = register_invocations(app, 5)
    keep = register_invocations(app, 1)[0]
    orch.waiting_for_results(keep, ids[:2])
    orch.waiting_for_results(ids[2], [keep])
    for inv in ids:
        orch.set_up_invocation_auto_purge(inv)
    orch.conf.auto_final_invocation_purge_hours = 0.0
    orch.auto_purge()
    remaining = {
        doc[s.F_INV] for doc in orch.store.collection(s.INVOCATIONS).find({"app_id": app.app_id})
    }
    assert remaining == {keep}
    assert orch.store.collection(s.EDGES).count_documents({"app_id": app.app_id}) == 0


@needs_gate
def test_atomic_service_lease_by_age_and_first_finalize_wins(
    make_orchestrator_app: Callable[..., Pynenc],
) -> None:
    from pynenc.orchestrator.atomic_service import AtomicServiceExecutionStatus, AtomicServiceRun

    app = make_orchestrator_app(mongo_atomic_service_lease_seconds=0.3)
    orch = app.orchestrator
    orch.register_runner_heartbeats(["old", "new"], can_run_atomic_service=True)
    held = AtomicServiceRun(runner_id="old", atomic_service_run_id="held")
    assert orch.record_atomic_service_execution_start(held, None)
    assert orch.record_atomic_service_execution_start(held, None)  # same run: still True
    early = AtomicServiceRun(runner_id="new", atomic_service_run_id="early")
    assert not orch.record_atomic_service_execution_start(early, None)  # holder is live
    time.sleep(0.4)
    orch.register_runner_heartbeats(["old", "new"], can_run_atomic_service=True)
    late = AtomicServiceRun(runner_id="new", atomic_service_run_id="late")
    assert orch.record_atomic_service_execution_start(late, None)  # lease expired
    orch.finalize_atomic_service_execution(
        held, datetime.now(UTC), AtomicServiceExecutionStatus.COMPLETED
    )
    rows = {
        e.atomic_service_run_id: e
        for e in orch.get_atomic_service_executions_in_timerange(
            datetime.now(UTC) - timedelta(minutes=1), datetime.now(UTC)
        )
    }
    assert rows["held"].status == AtomicServiceExecutionStatus.ABANDONED  # first write won
    assert rows["held"].reason.startswith("lease_expired: running for")
    assert rows["early"].reason == "prior_running:held runner:old"
    assert [e.atomic_service_run_id for e in orch.get_active_atomic_service_executions()] == [
        "late"
    ]


def test_query_audit_covers_the_orchestrator_collections(orch: MongoOrchestrator) -> None:
    with query_recorder.capture() as recorder:
        ids = register_invocations(orch.app, 3)
        orch.waiting_for_results(ids[0], [ids[1]])
        list(orch.get_blocking_invocations(5))
        orch._atomic_status_transition(ids[1], PENDING, "r1")
        orch.register_runner_heartbeats(["r1"], can_run_atomic_service=True)
        orch.get_active_runners(can_run_atomic_service=True)
        list(orch.get_pending_invocations_for_recovery())
        list(orch.get_running_invocations_for_recovery())
        orch.get_invocation_ids_paginated(statuses=[PENDING], limit=2)
        orch.count_invocations()
        orch.filter_final(ids)
        orch.auto_purge()
        if hasattr(BaseOrchestrator, "record_atomic_service_execution_start"):
            from pynenc.orchestrator.atomic_service import AtomicServiceRun

            run = AtomicServiceRun(runner_id="r1", atomic_service_run_id="audit")
            orch.record_atomic_service_execution_start(run, None)
            orch.get_active_atomic_service_executions()
    collections = {shape.collection for shape in recorder.shapes()}
    has_gate = hasattr(BaseOrchestrator, "record_atomic_service_execution_start")
    assert set(s.COLLECTIONS) - (set() if has_gate else {s.ATOMIC_EXECUTIONS}) <= collections
    assert recorder.unserved() == []


def test_heartbeats_are_one_bulk_upsert_on_a_server(orch: MongoOrchestrator) -> None:
    import mongomock.collection

    if isinstance(orch.store.collection(s.HEARTBEATS), mongomock.collection.Collection):
        pytest.skip(
            "the embedded store gets one update_one per runner (mongomock's bulk_write "
            "with UpdateOne fails on PyMongo >= 4.11); set PYNENC_MONGO_TEST_URL"
        )
    with count_operations() as ops:
        orch.register_runner_heartbeats(["h1", "h2", "h3"], consumed_queues=["q"])
        orch.register_runner_heartbeats(["h1", "h2", "h3"])
    assert dict(ops.counts) == {"update": 2}
    assert [r.runner_id for r in orch.get_active_runners()] == ["h1", "h2", "h3"]
