"""Worker functions run in ``spawn`` child processes by ``test_trigger_processes.py``.

Each child builds its own app (its own MongoTrigger, client and caches) on the shared
server, as a separate pynenc worker would.
"""

from __future__ import annotations

import inspect
import random
import time
from datetime import datetime, timedelta
from typing import Any

from pynenc.trigger.conditions import CronCondition, EventCondition, ValidCondition
from trigger_support import build_trigger_app

CRON = "* * * * *"


def check_cron(trigger: Any, when: datetime, runner: str) -> None:
    """pynenc's own cron path at time ``when``: ``check_time_based_triggers`` (pynenc 0.4
    also takes the atomic-service run doing the check; 0.2.3 does not)."""
    if "atomic_service_run" in inspect.signature(trigger.check_time_based_triggers).parameters:
        from pynenc.orchestrator.atomic_service import AtomicServiceRun

        run = AtomicServiceRun(runner_id=runner, atomic_service_run_id=f"asr-{runner}")
        trigger.check_time_based_triggers(when, atomic_service_run=run)
    else:
        trigger.check_time_based_triggers(when)


def _count_cron_fires(trigger: Any) -> list[int]:
    """Count, on this trigger instance, the cron valid conditions it records (one per
    fire: pynenc's ``check_time_based_triggers`` records one when its compare-and-set
    wins)."""
    fires = [0]
    record = trigger.record_valid_conditions

    def counting(valid_conditions: list[ValidCondition]) -> None:
        fires[0] += sum(isinstance(vc.condition, CronCondition) for vc in valid_conditions)
        record(valid_conditions)

    trigger.record_valid_conditions = counting
    return fires


def cron_worker(
    url: str,
    database: str,
    app_id: str,
    index: int,
    slots: list[datetime],
    barrier: Any,
    results: Any,
) -> None:
    """Register the shared cron condition, then check it once per slot, at the slot
    plus a random jitter (0-3 s: inside the condition's 60 s window and more than its
    50 s minimum interval after the previous slot's fire), all workers together.

    Puts ``(index, [fires per slot])`` on ``results``.
    """
    app = build_trigger_app(url, app_id, database)
    trigger = app.trigger
    trigger.register_condition(CronCondition(CRON))
    fires = _count_cron_fires(trigger)
    per_slot = []
    rng = random.Random(index)
    for slot in slots:
        barrier.wait(timeout=60)
        time.sleep(rng.uniform(0, 0.05))  # real interleaving, not lockstep
        before = fires[0]
        when = slot + timedelta(seconds=rng.uniform(0, 3))
        check_cron(trigger, when, str(index))
        per_slot.append(fires[0] - before)
    results.put((index, per_slot))


def reregister_worker(url: str, database: str, app_id: str, when: datetime, results: Any) -> None:
    """A new process: register the cron condition again, then check it at ``when``.
    Puts ``(fires, last cron execution seen after registering)`` on ``results``."""
    app = build_trigger_app(url, app_id, database)
    trigger = app.trigger
    condition = CronCondition(CRON)
    trigger.register_condition(condition)
    seen = trigger.get_last_cron_execution(condition.condition_id)
    fires = _count_cron_fires(trigger)
    check_cron(trigger, when, "new")
    results.put((fires[0], seen))


def emit_worker(
    url: str, database: str, app_id: str, code: str, stored: Any, linked: Any, results: Any
) -> None:
    """Emit an event that a registered condition matches, pausing between
    ``emit_event``'s first write and its second (after matching) until the linking
    processes are done. Puts the event id on ``results`` when first stored."""
    from pynenc.trigger.arguments import create_argument_filter

    app = build_trigger_app(url, app_id, database)
    trigger = app.trigger
    trigger.register_condition(EventCondition(code, create_argument_filter(None)))
    evaluate = trigger.evaluate_and_record_conditions

    def paused(pairs: list[Any]) -> Any:
        event_id = pairs[0][1].event_id
        results.put(event_id)
        stored.set()
        if not linked.wait(timeout=60):
            raise TimeoutError("the linking processes did not finish")
        return evaluate(pairs)

    trigger.evaluate_and_record_conditions = paused
    trigger.emit_event(code, {"k": "v"})


def link_worker(
    url: str, database: str, app_id: str, event_id: str, name: str, start: Any, done: Any
) -> None:
    """Link invocation ``inv-<name>`` (run ``run-<name>``) to ``event_id`` once
    ``start`` is set; then set ``done``."""
    app = build_trigger_app(url, app_id, database)
    trigger = app.trigger
    trigger.get_event(event_id)  # connect before the start signal
    if not start.wait(timeout=60):
        raise TimeoutError("no start signal")
    trigger.link_trigger_run_to_events([event_id], f"inv-{name}", trigger_run_id=f"run-{name}")
    done.set()
