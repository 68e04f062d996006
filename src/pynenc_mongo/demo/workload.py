"""Demo app and tasks: success, retry, failure, async, children and a workflow.

The app uses pynenc's memory components for orchestration and messaging and
``MongoStateBackend`` for state, run by pynenc's ``ThreadRunner``. The URL is
``mongomock://demo`` (the embedded store) unless ``PYNENC__MONGO_URL`` is set
(env vars override builder values, pynenc's precedence).

Also used by the monitor (pynmon) tests as their data set.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from pynenc import Pynenc, PynencBuilder

DEMO_APP_ID = "pynenc_mongo_demo"
DEMO_URL = "mongomock://demo"


def build_app(app_id: str = DEMO_APP_ID, url: str = DEMO_URL, **mongo_options: Any) -> Pynenc:
    """Build the demo app (memory components + MongoStateBackend + ThreadRunner)."""
    built: Pynenc = (
        PynencBuilder()
        .app_id(app_id)
        .memory()
        .mongo_state_backend(url=url, **mongo_options)
        .thread_runner()
        .logging_level("critical")
        .build()
    )
    return built


app = build_app()
_attempts: dict[str, int] = {}
_attempts_lock = threading.Lock()


class TransientError(RuntimeError):
    """Raised by :func:`flaky` on its first attempt; pynenc retries it."""


@app.task
def add(x: int, y: int) -> int:
    """A task that succeeds."""
    return x + y


@app.task(retry_for=(TransientError,), max_retries=2)
def flaky(key: str) -> str:
    """Fails on the first attempt for ``key``, then succeeds (one RETRY in its history)."""
    with _attempts_lock:
        _attempts[key] = _attempts.get(key, 0) + 1
        attempt = _attempts[key]
    if attempt == 1:
        raise TransientError(f"first attempt for {key} fails")
    return f"{key} ok after {attempt} attempts"


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


def _wait_final(invocations: list[Any], deadline: float) -> None:
    for invocation in invocations:
        while not invocation.status.is_final():
            if time.monotonic() > deadline:
                raise TimeoutError(f"invocation {invocation.invocation_id} did not finish")
            time.sleep(0.02)


def run_workload(the_app: Pynenc | None = None, timeout_seconds: float = 60.0) -> list[Any]:
    """Start a ThreadRunner, submit the workload, wait for every invocation, stop.

    :return: the top-level invocations, in submission order.
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
        _wait_final([summary], deadline)
        return [*invocations, summary]
    finally:
        the_app.runner.stop_runner_loop()
        runner_thread.join(timeout=5)
