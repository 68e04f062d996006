"""Demo app and tasks: success, retry, failure, async, children, a workflow and an
event trigger.

The app is the whole pynenc app on MongoDB (``PynencBuilder().mongo()``: state
backend, orchestrator, broker, trigger and client data store), run by pynenc's
``ThreadRunner``. The URL is ``mongomock://demo`` (the embedded store) unless
``PYNENC__MONGO_URL`` is set (env vars override builder values, pynenc's precedence).

Also used by the monitor (pynmon) tests as their data set: invocations, workflow runs,
runners, atomic-service runs, a trigger, its trigger runs and the event behind them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from importlib.metadata import version as _pynenc_version
from typing import Any

from pynenc import Pynenc, PynencBuilder
from pynenc.trigger.trigger_builder import TriggerBuilder

DEMO_APP_ID = "pynenc_mongo_demo"
DEMO_URL = "mongomock://demo"
#: The event :func:`run_workload` emits; :func:`on_order_paid` is triggered by it.
ORDER_PAID = "order.paid"
#: The payload of that event.
ORDER_PAID_PAYLOAD = {"order_id": "order-17"}


def build_app(app_id: str = DEMO_APP_ID, url: str = DEMO_URL, **mongo_options: Any) -> Pynenc:
    """Build the demo app: ``.mongo(url)`` (all five components on MongoDB) and a
    ThreadRunner.

    The atomic-service timings are short enough for a demo: pynenc runs the trigger
    loop (which turns the emitted event into an invocation of :func:`on_order_paid`)
    inside its atomic service, by default once every few minutes. With one runner and
    ``atomic_service_max_start_slot_fraction=1.0`` the runner owns the whole 3-second
    interval (0.05 minutes) and checks it every 0.3 seconds.

    :param app_id: the pynenc app id (every document carries it).
    :param url: the MongoDB URL (``mongomock://`` is the embedded store).
    :param mongo_options: further :class:`~pynenc_mongo.config.ConfigMongo` settings.
    :return: the built app (not started).
    """
    built: Pynenc = (
        PynencBuilder()
        .app_id(app_id)
        .mongo(url=url, **mongo_options)
        .thread_runner()
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
    return built


app = build_app()


class TransientError(RuntimeError):
    """Raised by :func:`flaky` on its first attempt; pynenc retries it."""


@app.task
def add(x: int, y: int) -> int:
    """A task that succeeds."""
    return x + y


@app.task(retry_for=(TransientError,), max_retries=2)
def flaky(key: str) -> str:
    """Fails on the first attempt of each invocation, then succeeds (one RETRY in its
    history). The retry count lives in the orchestrator's MongoDB document."""
    attempt = flaky.invocation.num_retries
    if attempt == 0:
        raise TransientError(f"first attempt for {key} fails")
    return f"{key} ok after {attempt + 1} attempts"


class ExpectedFailure(ZeroDivisionError):
    """The demo's deliberate failure (a ``ZeroDivisionError``)."""


@app.task
def divide(x: int, y: int) -> float:
    """Fails for good when ``y`` is 0 (FAILED, with the exception stored)."""
    if y == 0:
        raise ExpectedFailure(f"cannot divide {x} by zero")
    return x / y


@app.task
async def slow_square(x: int) -> int:
    """An ``async def`` task."""
    await asyncio.sleep(0.01)
    return x * x


@app.task
async def summarize(invocation_id: str) -> str:
    """An ``async def`` task reading another invocation through the awaitable API.

    ``aget_result``/``aget_history`` run on the backend's asynchronous MongoDB
    client; this task's event loop is never blocked by MongoDB.
    """
    backend: Any = summarize.app.state_backend
    result = await backend.aget_result(invocation_id)
    history = await backend.aget_history(invocation_id)
    statuses = " > ".join(entry.status_record.status.value for entry in history)
    return f"{invocation_id[:8]} returned {result!r} ({statuses})"


@app.task
def fan_out(n: int) -> int:
    """Spawns ``n`` child ``add`` invocations and sums their results."""
    children = [add(i, i) for i in range(n)]
    return sum(child.result for child in children)


def _workflow_decorator() -> Any:
    # pynenc 0.4 has ``app.workflow``; on 0.2.3 every top-level task is a workflow root.
    return getattr(app, "workflow", app.task)


@_workflow_decorator()  # type: ignore[untyped-decorator]
def order_workflow(order_id: str, items: int) -> dict[str, Any]:
    """A workflow that writes and reads workflow data around a child task."""
    order_workflow.wf.set_data("status", "started")
    order_workflow.wf.set_data("order.id", order_id)  # a key with a dot
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


def _wait_final(invocations: list[Any], deadline: float) -> None:
    for invocation in invocations:
        while not invocation.status.is_final():
            if time.monotonic() > deadline:
                raise TimeoutError(f"invocation {invocation.invocation_id} did not finish")
            time.sleep(0.02)


def _wait_triggered(the_app: Pynenc, event_id: str, deadline: float) -> list[Any]:
    """The invocations the event ``event_id`` triggered, once there is one."""
    while not (ids := the_app.trigger.get_invocations_triggered_by_event(event_id)):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"event {ORDER_PAID} ({event_id}) triggered no invocation: is the "
                "trigger of on_order_paid registered (a runner registers it when it "
                "starts) and does a runner run the atomic service?"
            )
        time.sleep(0.05)
    backend: Any = the_app.state_backend
    return [backend.get_invocation(i) for i in sorted(ids)]


#: The event trigger is part of the workload on pynenc 0.4.x (its atomic-service gate and
#: trigger monitoring API); pynenc 0.2.3 schedules atomic services by time slot only, too
#: slowly for this workload, so there the workload runs without it.
EVENT_TRIGGER_DEMO = tuple(int(p) for p in _pynenc_version("pynenc").split(".")[:2]) >= (0, 4)


def run_workload(the_app: Pynenc | None = None, timeout_seconds: float = 60.0) -> list[Any]:
    """Start a ThreadRunner, submit the workload, emit the ``order.paid`` event, wait
    for every invocation, stop the runner.

    The event is emitted once the first invocations are final, so the runner has
    started and registered :func:`on_order_paid`'s trigger (pynenc registers the
    triggers of decorated tasks when a runner starts; they stay in MongoTrigger until
    the app is purged).

    :param the_app: the app whose tasks these are (default: this module's ``app``).
    :param timeout_seconds: bound on the whole run.
    :return: the invocations, each final: the seven top-level invocations in
        submission order (``add``, ``add``, ``flaky``, ``divide``, ``slow_square``,
        ``fan_out``, ``order_workflow``), then ``summarize``, then the
        ``on_order_paid`` invocation the event triggered.
    :raises TimeoutError: when an invocation is not final, or the event triggered
        nothing, within ``timeout_seconds``.
    """
    the_app = the_app or app
    runner_thread = threading.Thread(target=the_app.runner.run, daemon=True)
    runner_thread.start()
    try:
        invocations: list[Any] = [
            add(1, 2),
            add(40, 2),
            flaky("alpha"),
            divide(1, 0),
            slow_square(7),
            fan_out(3),
            order_workflow("order-17", 5),
        ]
        deadline = time.monotonic() + timeout_seconds
        _wait_final(invocations, deadline)
        summary = summarize(invocations[0].invocation_id)
        triggered: list[Any] = []
        if EVENT_TRIGGER_DEMO:
            event_id = the_app.trigger.emit_event(ORDER_PAID, dict(ORDER_PAID_PAYLOAD))
            triggered = _wait_triggered(the_app, event_id, deadline)
        _wait_final([summary, *triggered], deadline)
        return [*invocations, summary, *triggered]
    finally:
        the_app.runner.stop_runner_loop()
        runner_thread.join(timeout=5)
