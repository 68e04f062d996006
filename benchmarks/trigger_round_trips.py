"""Trigger round trips per invocation of ``MongoTrigger``: a task without triggers, and a
task watched by one status trigger.

Usage::

    PYTHONPATH=src python benchmarks/trigger_round_trips.py [--invocations 200]
    PYNENC_MONGO_TEST_URL=mongodb://127.0.0.1:PORT/?directConnection=true \\
        PYTHONPATH=src python benchmarks/trigger_round_trips.py   # a server (or the wire server)

For each case a fresh child process builds an app (MongoStateBackend and
MongoTrigger, memory orchestrator and broker, one ``ThreadRunner`` thread), runs a
warm-up (the runner registers the task triggers, indexes are created, caches fill),
then runs N invocations. Two counts are taken over those N invocations:

* every MongoDB operation (:func:`pynenc_mongo.monitoring.count_operations`: state
  backend and trigger);
* the trigger's own operations: each call on a collection the trigger's
  ``MongoStore`` hands out (one call is one round trip), on any thread.

Operations inside the trigger loop (run by the runner's atomic service once per slot,
not per invocation) are counted apart and left out of "trigger/inv". The cases:

* ``no trigger``: a task that no condition watches;
* ``one status trigger``: a task watched by one status condition (``on_status`` SUCCESS
  of another task's trigger): each invocation's SUCCESS records one valid condition.

A task's conditions are looked up about five times per invocation; the per-process
cache (``mongo_trigger_source_cache_seconds``, default 2) answers all but one lookup
per period, so the residue per invocation is (run time / 2 s) / N.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REAL_URL = os.environ.get("PYNENC_MONGO_TEST_URL", "").strip()
CASES = ("no trigger", "one status trigger")
#: Collection methods that are one round trip each.
ROUND_TRIP_METHODS = frozenset(
    {
        "find",
        "find_one",
        "find_one_and_update",
        "insert_one",
        "insert_many",
        "update_one",
        "update_many",
        "delete_many",
        "count_documents",
        "distinct",
    }
)


class CountingCollection:
    """A collection proxy counting the round-trip calls made on it (thread-safe)."""

    lock = threading.Lock()
    calls = [0]

    def __init__(self, collection: Any) -> None:
        self._collection = collection

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._collection, name)
        if name in ROUND_TRIP_METHODS:
            with CountingCollection.lock:
                CountingCollection.calls[0] += 1
        return attr


WARMUP = 5


#: In a child process: ``"<case>|<trigger class>"`` (set by :func:`main`).
CHILD = os.environ.get("PYNENC_TRIGGER_BENCH_CHILD", "")
#: The child imports this file as a module: pynenc refuses tasks defined in ``__main__``.
CHILD_COMMAND = (
    f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
    "import trigger_round_trips; trigger_round_trips.main()"
)


def build_app(trigger_cls: str) -> Any:
    """The benchmark app: MongoStateBackend, memory orchestrator and broker, one
    ``ThreadRunner`` thread, the trigger ``trigger_cls``."""
    from pynenc import PynencBuilder

    url = REAL_URL or f"mongomock://bench-{uuid.uuid4().hex[:8]}"
    builder = (
        PynencBuilder()
        .app_id(f"trigger-bench-{uuid.uuid4().hex[:8]}")
        .memory()
        .mongo_state_backend(url=url, database=f"pynenc_trigger_bench_{uuid.uuid4().hex[:8]}")
        .thread_runner(min_threads=1, max_threads=1)
        .logging_level("error")
        .custom_config(
            runner_loop_sleep_time_sec=0.002, invocation_wait_results_sleep_time_sec=0.002
        )
    )
    builder._config["trigger_cls"] = trigger_cls
    # One component on MongoDB, the rest in memory, on purpose: every operation counted
    # is then this component's. The builder's full-stack validator refuses such a
    # half-configured app (right for deployments: several processes cannot share
    # memory components); in this one process it is what the measurement needs.
    from pynenc import Pynenc as _Pynenc

    return _Pynenc(config_values=builder._config)


if CHILD:  # pynenc tasks must be defined at module level
    from pynenc.trigger.trigger_builder import TriggerBuilder

    CASE = CHILD
    app = build_app("MongoTrigger")

    @app.task
    def work(x: int) -> int:
        """The measured task."""
        return x + 1

    if CASE == "one status trigger":

        @app.task(triggers=TriggerBuilder().on_status(work))
        def follow_up() -> None:
            """Triggered by ``work``'s SUCCESS (by the trigger loop, not measured)."""


def measure(invocations: int) -> dict[str, Any]:
    """Run this child's case; return the operation counts."""
    from pynenc_mongo.monitoring import count_operations

    trigger = app.trigger
    store_collection = trigger._store.collection
    trigger._store.collection = lambda logical: CountingCollection(store_collection(logical))
    loop_ops = [0]
    loop = trigger.trigger_loop_iteration

    def counted_loop(*args: Any, **kwargs: Any) -> Any:
        before = CountingCollection.calls[0]
        try:
            return loop(*args, **kwargs)
        finally:
            loop_ops[0] += CountingCollection.calls[0] - before

    trigger.trigger_loop_iteration = counted_loop
    thread = threading.Thread(target=app.runner.run, daemon=True)
    thread.start()
    try:
        for inv in [work(i) for i in range(WARMUP)]:
            inv.result  # noqa: B018 (waits)
        loop_ops[0] = 0
        trigger_before = CountingCollection.calls[0]
        started = time.perf_counter()
        with count_operations() as ops:
            pending = [work(i) for i in range(invocations)]
            for inv in pending:
                inv.result  # noqa: B018 (waits)
        elapsed = time.perf_counter() - started
        trigger_ops = CountingCollection.calls[0] - trigger_before
    finally:
        app.runner.stop_runner_loop()
        thread.join(timeout=10)
    counts = dict(ops.counts)
    database = app.state_backend.store.database
    app.purge()
    if REAL_URL:
        database.client.drop_database(database.name)
    return {
        "case": CASE,
        "invocations": invocations,
        "operations": ops.total,
        "trigger_operations": trigger_ops,
        "trigger_loop_operations": loop_ops[0],
        "counts": counts,
        "seconds": round(elapsed, 3),
    }


def main() -> None:
    """Run every case in a child process and print the table (or, in a child, measure)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invocations", type=int, default=200)
    args = parser.parse_args()
    if CHILD:
        print(json.dumps(measure(args.invocations)))
        return
    rows: dict[str, dict[str, Any]] = {}
    for case in CASES:
        env = {**os.environ, "PYNENC_TRIGGER_BENCH_CHILD": case}
        out = subprocess.run(
            [sys.executable, "-c", CHILD_COMMAND, "--invocations", str(args.invocations)],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout
        rows[case] = json.loads(out.strip().splitlines()[-1])
    where = REAL_URL.split("@")[-1] if REAL_URL else "embedded store (mongomock)"
    print(f"MongoTrigger round trips per invocation ({args.invocations} invocations, {where})")
    header = ("case", "all ops/inv", "trigger ops", "trigger/inv", "loop ops", "seconds")
    widths = (20, 11, 11, 11, 8, 8)
    print(
        " ".join(
            f"{h:<{w}}" if i == 0 else f"{h:>{w}}"
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    )
    for case, row in rows.items():
        per_inv = (row["trigger_operations"] - row["trigger_loop_operations"]) / args.invocations
        print(
            f"{case:<20} {row['operations'] / args.invocations:>11.2f} "
            f"{row['trigger_operations']:>11} {per_inv:>11.3f} "
            f"{row['trigger_loop_operations']:>8} {row['seconds']:>8.1f}"
        )
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
