"""Caller-side latency of ``add_history`` and MongoDB round trips, async vs sync mode.

Usage::

    .venv/bin/python benchmarks/history_writes.py [--records 1000] [--repeat 3]

Uses the embedded store (``mongomock://``) unless ``PYNENC_MONGO_TEST_URL`` is set,
in which case a scratch database on that server is used and dropped afterwards.
For each mode it records 1,000 history records (250 invocations x 4 statuses, as a
task's REGISTERED/PENDING/RUNNING/SUCCESS) and prints: the latency each
``add_history`` call costs its caller (median, p95, mean, in microseconds), the
time until every record is durable (``wait_for_all_async_operations``), and the
MongoDB operations issued (``insert`` = round trips for the records).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

from pynenc import PynencBuilder
from pynenc.invocation.status import InvocationStatus, InvocationStatusRecord
from pynenc.runner.runner_context import RunnerContext

from pynenc_mongo.client import get_client
from pynenc_mongo.monitoring import count_operations

STATUSES = [
    InvocationStatus.REGISTERED,
    InvocationStatus.PENDING,
    InvocationStatus.RUNNING,
    InvocationStatus.SUCCESS,
]


def run(mode: str, records: int, url: str, database: str) -> dict[str, float]:
    """One measurement: ``records`` add_history calls in ``mode``; returns the figures."""
    app = (
        PynencBuilder()
        .app_id(f"bench-{mode}-{uuid.uuid4().hex[:6]}")
        .memory()
        .mongo_state_backend(url=url, database=database, history_write_mode=mode)
        .build()
    )
    backend = app.state_backend
    ctx = RunnerContext(runner_cls="BenchRunner", runner_id="bench-runner")
    backend.store_runner_context(ctx)
    backend.add_history("warm-up", InvocationStatusRecord(InvocationStatus.REGISTERED), ctx)
    backend.wait_for_all_async_operations()
    latencies: list[float] = []
    invocations = max(records // len(STATUSES), 1)
    with count_operations() as ops:
        started = time.perf_counter()
        for status in STATUSES:
            record = InvocationStatusRecord(status, runner_id=ctx.runner_id)
            for i in range(invocations):
                t0 = time.perf_counter_ns()
                backend.add_history(f"inv-{i}", record, ctx)
                latencies.append((time.perf_counter_ns() - t0) / 1000)
        submitted = time.perf_counter() - started
        backend.wait_for_all_async_operations()
        durable = time.perf_counter() - started
    backend.purge()
    backend.close()
    latencies.sort()
    return {
        "calls": len(latencies),
        "median_us": statistics.median(latencies),
        "p95_us": latencies[int(len(latencies) * 0.95) - 1],
        "mean_us": statistics.fmean(latencies),
        "submit_s": submitted,
        "durable_s": durable,
        "inserts": ops.counts.get("insert", 0),
        "operations": ops.total,
    }


def main() -> None:
    """Parse arguments, run both modes ``--repeat`` times, print the best run of each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1000, help="history records per mode")
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode (best is shown)")
    args = parser.parse_args()
    real = os.environ.get("PYNENC_MONGO_TEST_URL", "").strip()
    url = real or "mongomock://bench-history"
    database = f"pynenc_bench_{uuid.uuid4().hex[:8]}"
    print(f"store: {'real server' if real else 'embedded (mongomock)'}; records: {args.records}")
    header = (
        f"{'mode':6} {'calls':>6} {'median µs':>10} {'p95 µs':>9} {'mean µs':>9} "
        f"{'submit s':>9} {'durable s':>10} {'inserts':>8} {'ops':>5}"
    )
    print(header)
    for mode in ("sync", "async"):
        runs = [run(mode, args.records, url, database) for _ in range(args.repeat)]
        best = min(runs, key=lambda r: r["mean_us"])
        print(
            f"{mode:6} {best['calls']:>6.0f} {best['median_us']:>10.1f} {best['p95_us']:>9.1f} "
            f"{best['mean_us']:>9.1f} {best['submit_s']:>9.3f} {best['durable_s']:>10.3f} "
            f"{best['inserts']:>8.0f} {best['operations']:>5.0f}"
        )
    if real:
        get_client(real, database, 10.0).drop_database(database)


if __name__ == "__main__":
    main()
