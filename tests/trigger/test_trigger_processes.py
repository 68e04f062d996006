"""Fire-once claims shown with several OS processes (``spawn``) over a server they share:
the local wire test server, or ``PYNENC_MONGO_TEST_URL`` (``server_url`` fixture).

* 8 workers check one ``* * * * *`` cron condition at each of 3 slots (pynenc's own
  ``check_time_based_triggers`` with the slot time plus jitter): 3 fires in all, one
  per slot;
* a new process re-registering the condition after a fire neither resets the last
  execution nor fires again in that slot;
* an event whose ``emit_event`` is paused between its two writes while two other
  processes link trigger runs to it keeps both links;
* a task without triggers costs no trigger round trip per invocation (on the server).
"""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Generator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trigger_workers
from pynenc import Pynenc
from pynenc.trigger.conditions import CronCondition
from run_settings import RUN_DATABASE
from trigger_support import build_trigger_app, dispose

from pynenc_mongo.monitoring import count_operations
from pynenc_mongo.schema import trigger as layout

SPAWN = multiprocessing.get_context("spawn")
WORKERS = 8
#: Seconds a child may take (spawn imports pynenc; the wire server is slow).
JOIN_SECONDS = 120


@pytest.fixture
def shared_app(server_url: str) -> Generator[Pynenc, None, None]:
    """An app on the shared server (its app id is reused by the child processes)."""
    app = build_trigger_app(server_url, f"trg-proc-{uuid.uuid4().hex[:8]}", RUN_DATABASE)
    yield app
    dispose(app)


def _run(processes: list[Any]) -> None:
    for process in processes:
        process.start()
    for process in processes:
        process.join(JOIN_SECONDS)
    for process in processes:
        if process.is_alive():
            process.kill()
    codes = [process.exitcode for process in processes]
    assert codes == [0] * len(processes), f"worker exit codes {codes}"


def _valid_cron_ids(app: Pynenc) -> list[str]:
    docs = app.trigger._collection(layout.VALID_CONDITIONS).find({"app_id": app.app_id})
    return [doc[layout.F_VALID] for doc in docs if "cron_" in doc[layout.F_VALID]]


def test_eight_processes_fire_a_shared_cron_once_per_slot(
    server_url: str, shared_app: Pynenc
) -> None:
    base = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    slots = [base + timedelta(minutes=i) for i in range(3)]
    barrier = SPAWN.Barrier(WORKERS)
    results = SPAWN.Queue()
    workers = [
        SPAWN.Process(
            target=trigger_workers.cron_worker,
            args=(server_url, RUN_DATABASE, shared_app.app_id, i, slots, barrier, results),
        )
        for i in range(WORKERS)
    ]
    _run(workers)
    per_worker = dict(results.get(timeout=10) for _ in range(WORKERS))
    per_slot = [sum(fires[slot] for fires in per_worker.values()) for slot in range(len(slots))]
    assert per_slot == [1, 1, 1], per_worker
    # The database agrees: one valid condition recorded per slot, the last one in the
    # third slot.
    assert len(_valid_cron_ids(shared_app)) == 3
    last = shared_app.trigger.get_last_cron_execution(
        CronCondition(trigger_workers.CRON).condition_id
    )
    assert last is not None and slots[2] <= last < slots[2] + timedelta(seconds=3)


def test_a_new_process_registering_again_does_not_fire_twice_in_a_slot(
    server_url: str, shared_app: Pynenc
) -> None:
    slot = datetime(2030, 1, 1, 13, 0, tzinfo=UTC)
    condition = CronCondition(trigger_workers.CRON)
    trigger = shared_app.trigger
    trigger.register_condition(condition)
    trigger_workers.check_cron(trigger, slot + timedelta(seconds=1), "first")
    fired_at = trigger.get_last_cron_execution(condition.condition_id)
    assert fired_at == slot + timedelta(seconds=1)

    results = SPAWN.Queue()
    later = slot + timedelta(seconds=20)  # same slot, inside the 60 s window
    _run(
        [
            SPAWN.Process(
                target=trigger_workers.reregister_worker,
                args=(server_url, RUN_DATABASE, shared_app.app_id, later, results),
            )
        ]
    )
    fires, seen = results.get(timeout=10)
    assert seen == fired_at  # registering again kept the last execution
    assert fires == 0
    assert trigger.get_last_cron_execution(condition.condition_id) == fired_at
    assert len(_valid_cron_ids(shared_app)) == 1


def test_links_made_while_an_event_is_emitted_are_kept(server_url: str, shared_app: Pynenc) -> None:
    if not hasattr(shared_app.trigger, "evaluate_and_record_conditions"):
        pytest.skip("pynenc 0.2.3 stores no event records")
    app_id = shared_app.app_id
    stored, done_a, done_b = SPAWN.Event(), SPAWN.Event(), SPAWN.Event()
    linked = SPAWN.Event()
    results = SPAWN.Queue()
    emitter = SPAWN.Process(
        target=trigger_workers.emit_worker,
        args=(server_url, RUN_DATABASE, app_id, "order.paid", stored, linked, results),
    )
    emitter.start()
    event_id = results.get(timeout=JOIN_SECONDS)
    linkers = [
        SPAWN.Process(
            target=trigger_workers.link_worker,
            args=(server_url, RUN_DATABASE, app_id, event_id, name, stored, done),
        )
        for name, done in (("a", done_a), ("b", done_b))
    ]
    for process in linkers:
        process.start()
    assert done_a.wait(JOIN_SECONDS) and done_b.wait(JOIN_SECONDS)
    linked.set()  # the emitter now writes the record again, with its matched conditions
    emitter.join(JOIN_SECONDS)
    for process in linkers:
        process.join(JOIN_SECONDS)
    assert [emitter.exitcode, *(p.exitcode for p in linkers)] == [0, 0, 0]

    record = shared_app.trigger.get_event(event_id)
    assert record is not None
    assert record.matched_condition_ids  # the second write happened
    assert sorted(record.triggered_invocation_ids) == ["inv-a", "inv-b"]
    assert sorted(shared_app.trigger.get_invocations_triggered_by_event(event_id)) == [
        "inv-a",
        "inv-b",
    ]
    assert shared_app.trigger.count_events(triggered=True) == 1


def test_a_task_without_triggers_costs_no_trigger_round_trip(shared_app: Pynenc) -> None:
    """pynenc's per-invocation trigger reports for real invocations of a task without
    triggers (routing reports REGISTERED; then PENDING, RUNNING, SUCCESS, and the result,
    whose report looks the conditions up with ``ResultContext``): no operation once the
    first lookup is cached (the state backend's reads of the invocation are cached)."""
    from pynenc.invocation.status import InvocationStatus
    from pynenc.trigger.conditions import ResultContext
    from trigger_support import plain

    plain.app = shared_app
    trigger = shared_app.trigger
    invocations = [plain(i) for i in range(20)]  # routing reports REGISTERED (first lookup)
    ids = [inv.invocation_id for inv in invocations]
    for invocation_id in ids:
        shared_app.state_backend.get_invocation(invocation_id)  # the backend's cache
    with count_operations() as ops:
        for invocation in invocations:
            for status in (InvocationStatus.PENDING, InvocationStatus.RUNNING):
                trigger.report_tasks_status([invocation.invocation_id], status)
            trigger.report_tasks_status([invocation.invocation_id], InvocationStatus.SUCCESS)
            # report_invocation_result's lookup (the result context itself needs a
            # SUCCESS status record, which the memory orchestrator here does not hold)
            trigger.get_conditions_sourced_from_task(invocation.task.task_id, ResultContext)
    assert ops.total == 0, ops.counts
