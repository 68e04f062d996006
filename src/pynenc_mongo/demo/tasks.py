"""The distributed demo's app and tasks: the whole pynenc app on MongoDB.

Imported by the client (``python -m pynenc_mongo.demo``) and by every worker process
(``python -m pynenc_mongo.demo.worker``): pynenc finds a task by its module and name, so
both sides build the same app from the same settings. The connection comes from
``PYNENC__MONGO_URL`` (environment variables beat builder values, pynenc's precedence).

The workload exercises what a distributed app needs: fan-out, a workflow with data, a
retry, a deliberate failure, an event trigger, a large argument passed through the
client data store, and running-concurrency control.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from pynenc import Pynenc, PynencBuilder
from pynenc.conf.config_task import ConcurrencyControlType
from pynenc.trigger.trigger_builder import TriggerBuilder

DEMO_APP_ID = "pynenc_mongo_distributed_demo"
#: The event the client emits; :func:`on_order_paid` is triggered by it.
ORDER_PAID = "order.paid"


def build_app() -> Pynenc:
    """The demo app: ``.mongo()`` (all five components on MongoDB), a ThreadRunner per
    worker process, and atomic-service timings short enough for a demo (the trigger loop,
    which runs triggered tasks, runs inside pynenc's atomic service)."""
    app: Pynenc = (
        PynencBuilder()
        .app_id(DEMO_APP_ID)
        .mongo(url=os.environ.get("PYNENC__MONGO_URL", "mongomock://distributed-demo"))
        .thread_runner(min_threads=2, max_threads=4)
        .logging_level("critical")
        .custom_config(
            atomic_service_interval_minutes=0.05,
            atomic_service_check_interval_minutes=0.005,
            atomic_service_max_start_slot_fraction=1.0,
            atomic_service_spread_margin_minutes=0.0,
            runner_loop_sleep_time_sec=0.02,
            invocation_wait_results_sleep_time_sec=0.02,
        )
        .build()
    )
    return app


app = build_app()


class TransientError(RuntimeError):
    """Raised by :func:`flaky` on its first attempt; pynenc retries it."""


class ExpectedFailure(ZeroDivisionError):
    """The demo's deliberate failure."""


@app.task
def add(x: int, y: int) -> int:
    """A task that succeeds."""
    return x + y


@app.task
def fan_out(n: int) -> int:
    """Routes ``n`` child ``add`` invocations (run by any worker) and sums their results."""
    children = [add(i, i) for i in range(n)]
    return sum(child.result for child in children)


@app.task(retry_for=(TransientError,), max_retries=2)
def flaky(key: str) -> str:
    """Fails on its first attempt, wherever it runs (the retry count lives in the
    orchestrator's MongoDB document), then succeeds: one RETRY in its history."""
    attempt = flaky.invocation.num_retries
    if attempt == 0:
        raise TransientError(f"first attempt for {key} fails")
    return f"{key} ok after {attempt + 1} attempts"


@app.task
def divide(x: int, y: int) -> float:
    """Fails for good when ``y`` is 0: FAILED, with the exception stored."""
    if y == 0:
        raise ExpectedFailure(f"cannot divide {x} by zero")
    return x / y


@app.task
def checksum(blob: str) -> dict[str, Any]:
    """Receives a large argument (stored once in MongoDB by the client data store and
    read back here, in another process) and returns its SHA-256 and size."""
    return {"sha256": hashlib.sha256(blob.encode()).hexdigest(), "chars": len(blob)}


@app.task(running_concurrency=ConcurrencyControlType.TASK, reroute_on_concurrency_control=True)
def exclusive_step(step: int) -> dict[str, float]:
    """At most one runs at a time in the whole cluster (running-concurrency control:
    the others are rerouted until it is free);
    returns when it ran, so the client can show the runs never overlap."""
    started = time.time()
    time.sleep(0.2)
    return {"step": step, "start": started, "end": time.time()}


def _workflow_decorator() -> Any:
    return getattr(app, "workflow", app.task)


@_workflow_decorator()  # type: ignore[untyped-decorator]
def order_workflow(order_id: str, items: int) -> dict[str, Any]:
    """A workflow that writes and reads workflow data around a child task."""
    order_workflow.wf.set_data("status", "started")
    order_workflow.wf.set_data("order.id", order_id)
    total = add(items, 100).result
    order_workflow.wf.set_data("total", total)
    order_workflow.wf.set_data("status", "done")
    return {
        "order": order_workflow.wf.get_data("order.id"),
        "total": order_workflow.wf.get_data("total"),
        "status": order_workflow.wf.get_data("status"),
    }


def order_from_event(context: Any) -> dict[str, Any]:
    """Arguments of :func:`on_order_paid` from the event's payload."""
    return {"order_id": context.payload["order_id"]}


@app.task(triggers=TriggerBuilder().on_event(ORDER_PAID).with_args_from_event(order_from_event))
def on_order_paid(order_id: str) -> str:
    """Triggered by the ``order.paid`` event (pynenc's trigger loop, on MongoTrigger)."""
    return f"receipt for {order_id}"
