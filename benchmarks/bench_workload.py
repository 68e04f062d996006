"""The end-to-end benchmark workload: one pynenc app, its tasks, and how to run them.

The state backend is chosen by the ``PYNENC_MONGO_BENCH_BACKEND`` environment
variable when this module is imported (``benchmarks/run.py`` starts one process
per backend, so each gets its own app, its own tasks and its own peak memory):

* ``memory``: pynenc's ``MemStateBackend``;
* ``sqlite``: pynenc's ``SQLiteStateBackend`` (file in ``PYNENC_MONGO_BENCH_SQLITE``);
* ``mongo-sync`` / ``mongo-async``: ``MongoStateBackend`` with synchronous or
  asynchronous history writes, on ``PYNENC_MONGO_BENCH_URL`` (the embedded store
  ``mongomock://bench`` by default) and database ``PYNENC_MONGO_BENCH_DATABASE``.

Everything else is pynenc's memory components (orchestrator, broker, trigger,
client data store) and a ``ThreadRunner``, the same for every backend: only the
state backend differs between runs.

The workload of ``n`` invocations (see :func:`plan`):

* 50 % plain tasks, each submitted by its own call (``add(i, i)``);
* 30 % parents with four children each: ``fan_out(4)`` submits its children in
  one batch (``add.parallelize``) and sums their results;
* 20 % workflows: ``order_workflow(i)`` sets workflow data, runs four child
  tasks one after the other, sets and reads workflow data again.

The client then reads every top-level result, as an application would.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from pynenc import Pynenc, PynencBuilder, context

BACKEND = os.environ.get("PYNENC_MONGO_BENCH_BACKEND", "memory")
BACKENDS = ("memory", "sqlite", "mongo-sync", "mongo-async")
#: Children per fan-out parent, and steps (child tasks) per workflow.
FAN_OUT = 4
WORKFLOW_STEPS = 4
#: Runner tuning shared by every backend: enough threads that tasks waiting on
#: children never starve the others, and short sleeps so that the runner's
#: polling does not hide the state backend's cost.
RUNNER_THREADS = 8
RUNNER_SLEEP_SECONDS = 0.002


def build_app(backend: str = BACKEND) -> Pynenc:
    """The benchmark app on ``backend`` (one of :data:`BACKENDS`)."""
    builder = (
        PynencBuilder()
        .app_id(f"pynenc_mongo_bench_{backend.replace('-', '_')}")
        .memory()
        .thread_runner(min_threads=1, max_threads=RUNNER_THREADS)
        .logging_level("error")
        .custom_config(
            runner_loop_sleep_time_sec=RUNNER_SLEEP_SECONDS,
            invocation_wait_results_sleep_time_sec=RUNNER_SLEEP_SECONDS,
        )
    )
    if backend == "sqlite":
        path = os.environ.get("PYNENC_MONGO_BENCH_SQLITE", "/tmp/pynenc_mongo_bench.db")
        builder = builder.custom_config(state_backend_cls="SQLiteStateBackend", sqlite_db_path=path)
    elif backend in ("mongo-sync", "mongo-async"):
        builder = builder.mongo_state_backend(
            url=os.environ.get("PYNENC_MONGO_BENCH_URL", "mongomock://bench"),
            database=os.environ.get("PYNENC_MONGO_BENCH_DATABASE", "pynenc_bench"),
            history_write_mode=backend.removeprefix("mongo-"),
        )
    elif backend != "memory":
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    app: Pynenc = builder.build()
    return app


app = build_app()


@app.task
def add(x: int, y: int) -> int:
    """A plain task."""
    return x + y


def wait_final(invocations: list[Any], deadline: float | None = None) -> None:
    """Wait until every invocation is final, the way ``.result`` does, but sleeping
    :data:`RUNNER_SLEEP_SECONDS` between polls.

    pynenc 0.4.0's ``ThreadRunner`` makes a task waiting in ``.result`` busy-wait
    (its ``_waiting_for_results`` returns at once); dozens of spinning threads
    would bury the state backend's cost under their CPU use. Like ``.result``,
    this tells the orchestrator and the runner that the current task waits (so
    its thread does not hold a runner slot). Statuses come from the
    orchestrator (memory), never from the state backend.

    :raises TimeoutError: past ``deadline`` (``time.monotonic()``).
    """
    current = context.get_dist_invocation_context(app.app_id)
    waiting_id = current.invocation_id if current else None
    pending = [inv for inv in invocations if not inv.status.is_final()]
    if pending and waiting_id:
        app.orchestrator.waiting_for_results(waiting_id, [inv.invocation_id for inv in pending])
    while pending:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"invocation {pending[0].invocation_id} did not finish")
        if waiting_id:
            ids = [inv.invocation_id for inv in pending]
            app.runner.waiting_for_results(waiting_id, ids, context.get_runner_args())
        time.sleep(RUNNER_SLEEP_SECONDS)
        pending = [inv for inv in pending if not inv.status.is_final()]


@app.task
def fan_out(n: int) -> int:
    """A parent: submits ``n`` children in one batch and sums their results."""
    children = list(add.parallelize([(i, i) for i in range(n)]))
    wait_final(children)
    return sum(child.result for child in children)


def _workflow_decorator() -> Any:
    # pynenc 0.4 has ``app.workflow``; on 0.2.3 every top-level task is a workflow root.
    return getattr(app, "workflow", app.task)


@_workflow_decorator()
def order_workflow(order: int) -> int:
    """A workflow: writes workflow data, runs :data:`WORKFLOW_STEPS` child tasks one
    after the other (each adds its step number), reads the data back."""
    order_workflow.wf.set_data("status", "started")
    total = order
    for step in range(WORKFLOW_STEPS):
        child = add(total, step)
        wait_final([child])
        total = child.result
    order_workflow.wf.set_data("total", total)
    return int(order_workflow.wf.get_data("total"))


@dataclass(frozen=True)
class Plan:
    """How many of each kind of top-level call make up ``invocations``."""

    plain: int
    fan_outs: int
    workflows: int

    @property
    def invocations(self) -> int:
        """Total invocations the plan creates (children included)."""
        return self.plain + self.fan_outs * (FAN_OUT + 1) + self.workflows * (WORKFLOW_STEPS + 1)

    def describe(self) -> str:
        """One line for people."""
        return (
            f"{self.invocations} invocations: {self.plain} plain tasks, {self.fan_outs} parents "
            f"x {FAN_OUT} children, {self.workflows} workflows x {WORKFLOW_STEPS} steps"
        )


def plan(n: int) -> Plan:
    """Split ``n`` invocations: 50 % plain, 30 % fan-out families, 20 % workflows."""
    fan_outs = round(n * 0.3 / (FAN_OUT + 1))
    workflows = round(n * 0.2 / (WORKFLOW_STEPS + 1))
    return Plan(
        n - fan_outs * (FAN_OUT + 1) - workflows * (WORKFLOW_STEPS + 1), fan_outs, workflows
    )


def expected_results(the_plan: Plan) -> list[int]:
    """The results the top-level calls of ``the_plan`` must return, in order."""
    return (
        [i + i for i in range(the_plan.plain)]
        + [sum(i + i for i in range(FAN_OUT))] * the_plan.fan_outs
        + [i + sum(range(WORKFLOW_STEPS)) for i in range(the_plan.workflows)]
    )


class Runner:
    """The app's ThreadRunner in a background thread (``with Runner(): ...``)."""

    def __enter__(self) -> Runner:
        self._thread = threading.Thread(target=app.runner.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        app.runner.stop_runner_loop()
        self._thread.join(timeout=10)


def run(n: int, timeout_seconds: float = 900.0) -> list[Any]:
    """Submit the workload of ``n`` invocations (a :class:`Runner` must be running),
    wait for every invocation and read every top-level result.

    :return: the top-level results, in submission order.
    :raises TimeoutError: if the workload does not finish in time.
    """
    the_plan = plan(n)
    invocations: list[Any] = [add(i, i) for i in range(the_plan.plain)]
    invocations += [fan_out(FAN_OUT) for _ in range(the_plan.fan_outs)]
    invocations += [order_workflow(i) for i in range(the_plan.workflows)]
    wait_final(invocations, time.monotonic() + timeout_seconds)
    return [invocation.result for invocation in invocations]
