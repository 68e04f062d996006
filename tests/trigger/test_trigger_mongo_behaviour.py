"""MongoTrigger's own guarantees, beyond pynenc's suite (embedded store, or the server
named by ``PYNENC_MONGO_TEST_URL``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pynenc import Pynenc
from pynenc.identifiers.task_id import TaskId
from pynenc.invocation.status import InvocationStatus
from pynenc.trigger.arguments import create_argument_filter
from pynenc.trigger.conditions import (
    CronCondition,
    ResultContext,
    StatusCondition,
    StatusContext,
    ValidCondition,
)
from pynenc.trigger.conditions.cron import CronContext

from pynenc_mongo import MongoConfigError, MongoTrigger
from pynenc_mongo.monitoring import count_operations
from pynenc_mongo.schema import trigger as layout

AppFactory = Callable[..., Pynenc]
TASK = TaskId("tests.trigger", "watched")
OTHER_TASK = TaskId("tests.trigger", "other")


def _mongo(app: Pynenc) -> MongoTrigger:
    trigger = app.trigger
    assert isinstance(trigger, MongoTrigger)
    return trigger


def _has_monitoring() -> bool:
    try:
        import pynenc.trigger.monitoring  # noqa: F401
    except ImportError:
        return False
    return True


needs_monitoring = pytest.mark.skipif(
    not _has_monitoring(), reason="pynenc 0.2.3 has no trigger monitoring API"
)


# ---------------------------------------------------------------------------- cron
def test_registering_again_keeps_the_last_cron_execution(make_trigger_app: AppFactory) -> None:
    first = make_trigger_app()
    condition = CronCondition("*/5 * * * *")
    _mongo(first).register_condition(condition)
    fired = datetime(2030, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert _mongo(first).store_last_cron_execution(condition.condition_id, fired)
    # A second process (its own trigger, same app id) registers the same condition.
    second = make_trigger_app(app_id=first.app_id)
    _mongo(second).register_condition(condition)
    _mongo(second).reload_task_conditions()
    assert _mongo(second).get_last_cron_execution(condition.condition_id) == fired.replace(
        microsecond=123000
    )


def test_cron_compare_and_set(make_trigger_app: AppFactory) -> None:
    trigger = _mongo(make_trigger_app())
    condition = CronCondition("* * * * *")
    trigger.register_condition(condition)
    cid = condition.condition_id
    t1 = datetime(2030, 1, 1, 12, 0, 0, 999999, tzinfo=UTC)
    assert trigger.store_last_cron_execution(cid, t1) is True
    # expected None means "never executed": another process already stored one.
    assert trigger.store_last_cron_execution(cid, t1 + timedelta(minutes=1)) is False
    stored = trigger.get_last_cron_execution(cid)
    assert stored is not None and stored.tzinfo is UTC and stored == t1.replace(microsecond=999000)
    # The value read back (milliseconds) is the expected value that wins; any other loses.
    t2 = t1 + timedelta(minutes=1)
    assert trigger.store_last_cron_execution(cid, t2, expected_last_execution=t1) is True
    assert trigger.store_last_cron_execution(cid, t2, expected_last_execution=t1) is False
    assert trigger.get_last_cron_execution(cid) == t2.replace(microsecond=999000)
    # A condition that is not registered has no cron state to move.
    assert trigger.store_last_cron_execution("cron_unknown", t1) is False
    assert trigger.get_last_cron_execution("cron_unknown") is None


def test_cron_fires_once_across_two_triggers_of_one_app(make_trigger_app: AppFactory) -> None:
    """Two trigger instances (as two runners) read the same last execution; one wins."""
    a = _mongo(make_trigger_app())
    b = _mongo(make_trigger_app(app_id=a.app.app_id))
    condition = CronCondition("* * * * *")
    a.register_condition(condition)
    b.register_condition(condition)
    read_a = a.get_last_cron_execution(condition.condition_id)
    read_b = b.get_last_cron_execution(condition.condition_id)
    now = datetime(2030, 1, 1, 12, 0, 1, tzinfo=UTC)
    results = [
        a.store_last_cron_execution(condition.condition_id, now, read_a),
        b.store_last_cron_execution(condition.condition_id, now + timedelta(seconds=1), read_b),
    ]
    assert results == [True, False]
    assert condition.is_satisfied_by(CronContext(timestamp=now)) is True


# ---------------------------------------------------------------------------- claims
def test_claims_are_exclusive_until_they_expire(make_trigger_app: AppFactory) -> None:
    trigger = _mongo(make_trigger_app())
    assert trigger.claim_trigger_run("run-1", expiration_seconds=60) is True
    assert trigger.claim_trigger_run("run-1", expiration_seconds=60) is False
    assert trigger.claim_trigger_run("run-2", expiration_seconds=60) is True
    # An expired claim (its expiry in the past, not yet collected by the TTL monitor)
    # can be taken again, once.
    assert trigger.claim_trigger_run("run-3", expiration_seconds=-1) is True
    assert trigger.claim_trigger_run("run-3", expiration_seconds=60) is True
    assert trigger.claim_trigger_run("run-3", expiration_seconds=60) is False


def test_claims_are_collected_by_a_ttl_index_on_a_date(make_trigger_app: AppFactory) -> None:
    trigger = _mongo(make_trigger_app())
    trigger.claim_trigger_run("run-ttl")
    collection = trigger._collection(layout.RUN_CLAIMS)
    ttl = [
        info
        for info in collection.index_information().values()
        if info.get("expireAfterSeconds") is not None
    ]
    assert [(tuple(info["key"]), info["expireAfterSeconds"]) for info in ttl] == [
        (((layout.F_EXPIRES, 1),), 0)
    ]
    query = {"app_id": trigger.app.app_id}
    dates = collection.count_documents({**query, layout.F_EXPIRES: {"$type": "date"}})
    assert dates == collection.count_documents(query) == 1


def test_claims_of_two_apps_do_not_collide(make_trigger_app: AppFactory) -> None:
    a, b = _mongo(make_trigger_app()), _mongo(make_trigger_app())
    assert a.claim_trigger_run("same-run") is True
    assert b.claim_trigger_run("same-run") is True


# ---------------------------------------------------------------------------- sources
def _status_condition(
    task: TaskId = TASK, status: InvocationStatus = InvocationStatus.SUCCESS
) -> StatusCondition:
    return StatusCondition(task, [status], create_argument_filter(None))


def _per_invocation_lookups(trigger: MongoTrigger, task: TaskId) -> None:
    """What pynenc asks per invocation: four status reports and one result report."""
    for _ in range(4):
        trigger.get_conditions_sourced_from_task(task, StatusContext)
    trigger.get_conditions_sourced_from_task(task, ResultContext)


def test_a_task_without_triggers_costs_no_round_trip(make_trigger_app: AppFactory) -> None:
    trigger = _mongo(make_trigger_app())
    assert trigger.get_conditions_sourced_from_task(TASK) == []  # first lookup: one query
    with count_operations() as ops:
        for _ in range(100):
            _per_invocation_lookups(trigger, TASK)
    assert ops.total == 0, ops.counts


def test_without_the_cache_each_lookup_is_one_query(make_trigger_app: AppFactory) -> None:
    trigger = _mongo(make_trigger_app(mongo_trigger_source_cache_seconds=0))
    trigger.get_conditions_sourced_from_task(TASK)  # indexes ensured (once per process)
    with count_operations() as ops:
        for _ in range(10):
            _per_invocation_lookups(trigger, TASK)
    assert ops.total == 50, ops.counts


def test_registering_in_this_process_is_seen_at_once(make_trigger_app: AppFactory) -> None:
    trigger = _mongo(make_trigger_app())
    assert trigger.get_conditions_sourced_from_task(TASK) == []  # "none" is cached
    condition = _status_condition()
    trigger.register_condition(condition)
    found = trigger.get_conditions_sourced_from_task(TASK, StatusContext)
    assert [c.condition_id for c in found] == [condition.condition_id]
    assert trigger.get_conditions_sourced_from_task(TASK, ResultContext) == []
    assert trigger.get_conditions_sourced_from_task(OTHER_TASK) == []


def test_registering_in_another_process_is_seen_after_the_cache_time(
    make_trigger_app: AppFactory,
) -> None:
    reader = _mongo(make_trigger_app(mongo_trigger_source_cache_seconds=0.3))
    writer = _mongo(make_trigger_app(app_id=reader.app.app_id))
    assert reader.get_conditions_sourced_from_task(TASK) == []
    writer.register_condition(_status_condition())
    assert reader.get_conditions_sourced_from_task(TASK) == []  # still cached
    time.sleep(0.4)
    assert len(reader.get_conditions_sourced_from_task(TASK)) == 1


def test_a_lookup_is_one_query_however_many_conditions(make_trigger_app: AppFactory) -> None:
    trigger = _mongo(make_trigger_app(mongo_trigger_source_cache_seconds=0))
    statuses = [InvocationStatus.SUCCESS, InvocationStatus.FAILED, InvocationStatus.RUNNING]
    for status in statuses:
        trigger.register_condition(_status_condition(TASK, status))
    with count_operations() as ops:
        assert len(trigger.get_conditions_sourced_from_task(TASK)) == len(statuses)
    assert ops.total == 1, ops.counts


# ---------------------------------------------------------------------------- definitions
def test_clean_task_trigger_definitions_is_one_delete(make_trigger_app: AppFactory) -> None:
    from pynenc.trigger.trigger_definitions import TriggerDefinition

    trigger = _mongo(make_trigger_app())
    statuses = [InvocationStatus.SUCCESS, InvocationStatus.FAILED, InvocationStatus.RUNNING]
    conditions = [_status_condition(OTHER_TASK, status) for status in statuses]
    for condition in conditions:
        trigger.register_condition(condition)
        definition = TriggerDefinition(task_id=TASK, condition_ids=[condition.condition_id])
        trigger.register_trigger(definition.to_dto(trigger.app))
    kept = TriggerDefinition(task_id=OTHER_TASK, condition_ids=[conditions[0].condition_id])
    trigger.register_trigger(kept.to_dto(trigger.app))
    with count_operations() as ops:
        trigger.clean_task_trigger_definitions(TASK)
    assert dict(ops.counts) == {"delete": 1}
    left = [trigger.get_triggers_for_condition(c.condition_id) for c in conditions]
    assert [[t.task_id for t in triggers] for triggers in left] == [[OTHER_TASK], [], []]
    assert trigger.get_condition(conditions[1].condition_id) is not None  # conditions stay


def test_valid_conditions_are_recorded_once_and_cleared(make_trigger_app: AppFactory) -> None:
    trigger = _mongo(make_trigger_app())
    condition = CronCondition("* * * * *")
    contexts = [CronContext(timestamp=datetime(2030, 1, 1, 12, i, tzinfo=UTC)) for i in range(3)]
    valid = [ValidCondition(condition, context) for context in contexts]
    trigger.record_valid_conditions(valid)
    trigger.record_valid_conditions(valid[:2])  # again: skipped, no error
    assert sorted(trigger.get_valid_conditions()) == sorted(v.valid_condition_id for v in valid)
    trigger.clear_valid_conditions(valid[:2])
    assert list(trigger.get_valid_conditions()) == [valid[2].valid_condition_id]


# ---------------------------------------------------------------------------- monitoring
def _event(event_id: str, code: str = "x", **fields: Any) -> Any:
    from pynenc.trigger.monitoring import EventRecord

    return EventRecord(event_id=event_id, event_code=code, payload={}, **fields)


@needs_monitoring
def test_store_event_never_loses_links(make_trigger_app: AppFactory) -> None:
    trigger = _mongo(make_trigger_app())
    trigger.store_event(_event("e1"))
    trigger.link_trigger_run_to_events(["e1"], "inv-1", trigger_run_id="run-1")
    trigger.store_event(_event("e1", matched_condition_ids=["c1"]))  # emit_event's 2nd write
    trigger.link_trigger_run_to_events(["e1"], "inv-1", trigger_run_id="run-1")  # again
    trigger.link_trigger_run_to_events(["e1"], "inv-2", trigger_run_id="run-2")
    record = trigger.get_event("e1")
    assert record is not None
    assert record.triggered_invocation_ids == ["inv-1", "inv-2"]
    assert record.matched_condition_ids == ["c1"]
    assert trigger.count_events(triggered=True, matched=True) == 1


@needs_monitoring
def test_a_link_before_the_event_is_stored_is_kept(make_trigger_app: AppFactory) -> None:
    trigger = _mongo(make_trigger_app())
    trigger.link_trigger_run_to_events(["early"], "inv-1", trigger_run_id="run-1")
    assert trigger.get_event("early") is None
    assert trigger.count_events() == 0
    trigger.store_event(_event("early"))
    record = trigger.get_event("early")
    assert record is not None and record.triggered_invocation_ids == ["inv-1"]
    assert trigger.count_events(triggered=True) == 1


@needs_monitoring
def test_event_filters_combine(make_trigger_app: AppFactory) -> None:
    trigger = _mongo(make_trigger_app())
    now = datetime.now(UTC)
    rows = [
        ("e1", "a", "inv-1", "task-1", now - timedelta(minutes=3)),
        ("e2", "a", "inv-2", "task-1", now - timedelta(minutes=2)),
        ("e3", "b", "inv-1", "task-1", now - timedelta(minutes=1)),
        ("e4", "a", None, None, now),
    ]
    for event_id, code, inv, task, ts in rows:
        trigger.store_event(
            _event(
                event_id,
                code,
                timestamp=ts,
                emitted_by_invocation_id=inv,
                emitted_by_task_id=task,
            )
        )

    def ids(**filters: Any) -> list[str]:
        assert trigger.count_events(**filters) == len(found := trigger.get_events(**filters))
        return [e.event_id for e in found]

    assert ids() == ["e4", "e3", "e2", "e1"]
    assert ids(event_code="a") == ["e4", "e2", "e1"]
    assert ids(event_code="a", emitted_by_invocation_id="inv-1") == ["e1"]
    assert ids(emitted_by_task_id="task-1", event_code="b") == ["e3"]
    assert ids(emitted_by_invocation_id="inv-1", emitted_by_task_id="task-1") == ["e3", "e1"]
    assert ids(start_time=now - timedelta(minutes=2), end_time=now - timedelta(minutes=1)) == [
        "e3",
        "e2",
    ]
    assert [e.event_id for e in trigger.get_events(limit=2, offset=1)] == ["e3", "e2"]
    page = trigger.get_event_markers_in_timerange(
        now - timedelta(hours=1), now, event_code="a", limit=2
    )
    assert [m.event_id for m in page.markers] == ["e1", "e2"]
    assert (page.total, page.truncated) == (3, True)


@needs_monitoring
def test_run_lookups_use_participants_and_sort_oldest_first(make_trigger_app: AppFactory) -> None:
    from pynenc.trigger.monitoring import TriggerRunParticipant, TriggerRunRecord

    trigger = _mongo(make_trigger_app())
    now = datetime.now(UTC)
    for i, asr in enumerate(["asr-1", "asr-2", "asr-1", None]):
        trigger.store_trigger_run(
            TriggerRunRecord(
                trigger_run_id=f"r{i}",
                trigger_id="t",
                task_id_key="tasks.x",
                logic_value="and",
                executed_at=now - timedelta(minutes=10 - i),
                participants=[
                    TriggerRunParticipant(
                        context_type="StatusContext",
                        valid_condition_id=f"vc-{i % 2}",
                        source_invocation_id=f"src-{i % 2}",
                    )
                ],
                atomic_service_run_id=asr,
            )
        )
    with count_operations() as ops:
        assert trigger.get_referenced_atomic_service_run_ids() == {"asr-1", "asr-2"}
    assert ops.total == 1
    runs = trigger.get_trigger_runs_for_valid_condition("vc-0")
    assert [r.trigger_run_id for r in runs] == ["r0", "r2"]
    runs = trigger.get_trigger_runs_sourced_by_invocation("src-1")
    assert [r.trigger_run_id for r in runs] == ["r1", "r3"]
    runs = trigger.get_trigger_runs_in_timerange(now - timedelta(hours=1), now, limit=3)
    assert [r.trigger_run_id for r in runs] == ["r0", "r1", "r2"]


@needs_monitoring
def test_purges_work_in_batches(
    make_trigger_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pynenc.trigger.monitoring import TriggerRunRecord

    monkeypatch.setattr("pynenc_mongo.trigger.part.BATCH_SIZE", 4)
    trigger = _mongo(make_trigger_app())
    old = datetime.now(UTC) - timedelta(days=30)
    for i in range(11):  # three batches of 4
        trigger.store_event(_event(f"e{i:02d}", timestamp=old + timedelta(seconds=i)))
        trigger.store_trigger_run(
            TriggerRunRecord(
                trigger_run_id=f"r{i:02d}",
                trigger_id="t",
                task_id_key="tasks.x",
                logic_value="and",
                executed_at=old + timedelta(seconds=i),
            )
        )
    trigger.store_event(_event("new"))
    with count_operations() as ops:
        removed = trigger._age_purge_events(datetime.now(UTC) - timedelta(days=1))
    assert sorted(removed) == [f"e{i:02d}" for i in range(11)]
    assert ops.counts["delete"] == 3
    assert [e.event_id for e in trigger.get_events()] == ["new"]
    trigger.conf.trigger_run_max_records = 2
    assert trigger._cap_purge_trigger_runs() == 9
    assert [
        r.trigger_run_id for r in trigger.get_trigger_runs_in_timerange(old, datetime.now(UTC))
    ] == [
        "r09",
        "r10",
    ]


# ---------------------------------------------------------------------------- config
def test_bad_cache_setting_is_refused(make_trigger_app: AppFactory) -> None:
    app = make_trigger_app(mongo_trigger_source_cache_seconds=-1)
    with pytest.raises(MongoConfigError, match="mongo_trigger_source_cache_seconds"):
        _ = app.trigger


@needs_monitoring
def test_pynenc_trigger_validation_runs(make_trigger_app: AppFactory) -> None:
    from pynenc.conf.validation_trigger import TriggerConfigError

    app = make_trigger_app(event_retention_days=0)
    with pytest.raises(TriggerConfigError, match="event_retention_days"):
        _ = app.trigger
