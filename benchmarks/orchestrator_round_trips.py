"""MongoOrchestrator round trips: per successful invocation and per idle loop iteration.

Runs a real ``ThreadRunner`` on an app whose orchestrator is ``MongoOrchestrator`` and
whose other components are in memory, so every MongoDB operation counted by
:func:`pynenc_mongo.monitoring.count_operations` is the orchestrator's.

* idle: the runner loops with nothing to do; operations / loop iterations (one
  iteration = one ``get_blocking_invocations`` call, as pynenc's runner loop makes);
* per invocation: N invocations are submitted and run; the window's operations,
  minus its loop iterations times the idle cost, divided by N. The caller does not
  poll for results inside the window (it waits on the memory broker draining), so
  the number is the invocation's own cost (targets: <= 5 and <= 1).

Usage::

    PYTHONPATH=src python benchmarks/orchestrator_round_trips.py [--url URL] [-n 100]

``--url`` defaults to the embedded store (``mongomock://``); pass a wire-server or
real-server URL to count round trips on the wire.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from typing import Any

from pynenc import PynencBuilder
from pynenc.invocation.status import InvocationStatus

from pynenc_mongo.monitoring import count_operations


def build_app(url: str, database: str) -> Any:
    """An app with MongoOrchestrator on ``url``, memory for the rest, a ThreadRunner."""
    builder = PynencBuilder().app_id(f"bench-orch-{uuid.uuid4().hex[:6]}").memory().thread_runner()
    builder._config.update(
        {
            "orchestrator_cls": "MongoOrchestrator",
            "mongo_url": url,
            "mongo_database": database,
            "runner_loop_sleep_time_sec": 0.01,
        }
    )
    # One component on MongoDB, the rest in memory, on purpose: every operation counted
    # is then this component's. The builder's full-stack validator refuses such a
    # half-configured app (right for deployments: several processes cannot share
    # memory components); in this one process it is what the measurement needs.
    from pynenc import Pynenc as _Pynenc

    return _Pynenc(config_values=builder._config)


def add(x: int) -> int:
    """The benchmark's task."""
    return x + 1


def main() -> None:
    """Run the measurement and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=f"mongomock://bench-{uuid.uuid4().hex[:6]}")
    parser.add_argument("--database", default="pynenc_bench_orchestrator")
    parser.add_argument("-n", type=int, default=100, help="invocations (default 100)")
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    args = parser.parse_args()

    app = build_app(args.url, args.database)
    # pynenc refuses tasks from ``__main__``: take ``add`` from this file imported by name.
    from orchestrator_round_trips import add as task_func

    task = app.task(task_func)
    orchestrator = app.orchestrator
    orchestrator.purge()
    iterations = [0]
    original = orchestrator.get_blocking_invocations

    def counted(max_num: int) -> Any:
        iterations[0] += 1
        return original(max_num)

    orchestrator.get_blocking_invocations = counted  # type: ignore[method-assign]
    runner = app.runner
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    time.sleep(2.0)  # start-up: heartbeats, first atomic-service check

    # Idle loop iterations.
    with count_operations() as idle:
        start_iterations = iterations[0]
        time.sleep(args.idle_seconds)
        idle_iterations = iterations[0] - start_iterations
    idle_ops = idle.total
    per_iteration = idle_ops / max(idle_iterations, 1)

    # Successful invocations.
    with count_operations() as busy:
        start_iterations = iterations[0]
        invocations = [task(i) for i in range(args.n)]
        while app.broker.count_invocations() > 0:
            time.sleep(0.01)
        time.sleep(1.0)  # the last ones finish
        busy_iterations = iterations[0] - start_iterations
    statuses = {orchestrator.get_invocation_status(inv.invocation_id) for inv in invocations}
    runner.stop_runner_loop()
    thread.join(10)
    if statuses != {InvocationStatus.SUCCESS}:
        raise SystemExit(f"not every invocation succeeded in the window: {statuses}")
    invocation_ops = busy.total - busy_iterations * per_iteration
    print(f"target: {args.url.split('?')[0]}")
    print(
        f"idle: {idle_ops} operations in {idle_iterations} loop iterations = "
        f"{per_iteration:.2f} per iteration  {dict(idle.counts)}"
    )
    print(
        f"invocations: {args.n}, {busy.total} operations in the window, "
        f"{busy_iterations} loop iterations -> {invocation_ops / args.n:.2f} operations "
        f"per successful invocation  {dict(busy.counts)}"
    )
    orchestrator.purge()


if __name__ == "__main__":
    main()
