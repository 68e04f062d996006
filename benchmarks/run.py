"""pynenc-mongo benchmark: MongoDB operations per task and throughput, side by side.

Usage (``scripts/benchmark`` runs this with the project's virtual environment)::

    scripts/benchmark                 # full run (about 15-20 minutes on 2 CPUs)
    scripts/benchmark --quick         # a smaller run (about 3-4 minutes), same report
    scripts/benchmark --no-stack      # the state backend sections only (about 1 minute quick)
    scripts/benchmark --no-wire       # whole stack on the embedded store only
    PYNENC_MONGO_TEST_URL=mongodb://host:27017 scripts/benchmark   # against a real server

In one run it prints:

1. End to end: the workload of :mod:`bench_workload` (plain tasks, parents with
   children, workflows) run by a pynenc ``ThreadRunner`` with each state backend
   -- pynenc's memory and SQLite backends, ``MongoStateBackend`` with synchronous
   and asynchronous history writes -- all else equal; wall time, ratios, time
   spent inside the MongoDB store, peak memory.
2. MongoDB operations per task, by kind, for the end-to-end runs (the once per
   process setup -- index creation, app info, runner contexts -- is shown apart),
   and what a multi-process deployment adds.
3. The hot path: each backend method timed directly, with the operations per
   call, for 200, 2,000 and 20,000 invocations already stored.
4. The whole stack (:mod:`bench_stack`, issue #15): all five components on MongoDB
   (``PynencBuilder().mongo(url)``), synchronous and asynchronous history, on the
   embedded store and on the wire server (started here; or the server of
   ``PYNENC_MONGO_TEST_URL``): operations per successful ``add`` task by component,
   collection and command (PyMongo command listener on the wire: true round trips),
   idle round trips per runner loop iteration, throughput vs pynenc's memory and
   SQLite stacks. Targets: <= 10 (sync), <= 7 (async); 0.3.0's anchor: 42.4.
5. Per component (issues #12-#14): ``orchestrator_round_trips.py``,
   ``broker_round_trips.py``, ``trigger_round_trips.py`` run on each store.
6. The targets, met or not, with the reason.

Every measurement runs in a fresh child process (one per backend and run), so
each starts from an empty store and reports its own peak memory. The embedded
store (``mongomock://``) is used unless ``PYNENC_MONGO_TEST_URL`` is set; then
each child uses a scratch database on that server, dropped afterwards. The
figures are also written as JSON to ``benchmarks/results/`` (or ``--json``).
"""

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from bench_children import child_e2e, child_hot
from bench_common import REAL_URL, RESULTS_DIR, line, redacted, section
from bench_report import checks, print_checks, print_hot, print_operations, run_e2e, run_hot
from bench_stack_report import (
    describe,
    print_components,
    print_stack,
    run_components,
    run_stack,
    stack_checks,
    stores,
)


def main() -> int:
    """Parse arguments; run the children (or be one); print and save the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about 4 min)")
    parser.add_argument("--tasks", default="", help="end-to-end sizes, e.g. 200,2000")
    parser.add_argument("--stored", default="", help="hot-path stored levels, e.g. 200,2000,20000")
    parser.add_argument("--repeat", type=int, default=3, help="end-to-end runs per size <= 500")
    parser.add_argument("--json", default="", help="where to write the JSON report")
    parser.add_argument("--stack-tasks", type=int, default=0, help="whole-stack tasks (200)")
    parser.add_argument("--no-wire", action="store_true", help="skip the wire server")
    parser.add_argument("--no-stack", action="store_true", help="state backend sections only")
    parser.add_argument("--idle-seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--batch-sizes", default="1", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        backend = os.environ["PYNENC_MONGO_BENCH_BACKEND"]
        if args.child == "stack":
            import bench_stack

            figures = bench_stack.child_stack(int(args.tasks), args.idle_seconds)
        elif args.child == "e2e":
            figures = child_e2e(backend, int(args.tasks))
        else:
            sizes = [int(s) for s in args.batch_sizes.split(",")]
            figures = child_hot(int(args.stored), args.calls, sizes)
        Path(args.out).write_text(json.dumps(figures))
        return 0

    sizes = [int(s) for s in (args.tasks or ("50" if args.quick else "200,2000")).split(",")]
    stored = [
        int(s) for s in (args.stored or ("200,2000" if args.quick else "200,2000,20000")).split(",")
    ]
    repeat = 1 if args.quick else args.repeat

    def calls_for(level: int) -> int:
        return 50 if args.quick else (200 if level <= 2_000 else 20)

    import mongomock
    import pynenc

    del pynenc
    store = (
        f"real server {redacted(REAL_URL)} (scratch databases, dropped after)"
        if REAL_URL
        else f"embedded store (mongomock {metadata.version('mongomock')}, in process)"
    )
    del mongomock
    line(
        f"pynenc-mongo benchmark{' (quick)' if args.quick else ''}: {store}; "
        f"pynenc {metadata.version('pynenc')}, pymongo {metadata.version('pymongo')}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    line(
        "Every backend runs the same workload with pynenc's memory orchestrator, broker and "
        "trigger and a ThreadRunner; only the state backend differs."
    )
    started = time.perf_counter()
    with section(
        "End to end: wall time (in store: the share of it with a MongoDB operation in "
        "progress), CPU time of the process (in store: the embedded store's own work; "
        "backend: CPU in the state backend's methods, store excluded)"
    ):
        e2e = run_e2e(sizes, repeat)
    with section("MongoDB operations per task, end to end (timed run), by kind"):
        print_operations(e2e)
    with section(
        "Hot path: one call of each method, mean µs (of which inside the store) and "
        "operations per call, by invocations already stored"
    ):
        hot = run_hot(stored, calls_for)
        print_hot(hot)
    found = checks(e2e, hot)
    stack: dict[str, object] = {}
    components: dict[str, object] = {}
    if not args.no_stack:
        stack_tasks = args.stack_tasks or (100 if args.quick else 200)
        with stores(not args.no_wire) as store_list:
            with section(
                "Whole stack (issue #15): all five components on MongoDB, on "
                + describe(store_list)
            ):
                stack = run_stack(store_list, stack_tasks, 2.0 if args.quick else 5.0)
                print_stack(stack, stack_tasks)
            found += stack_checks(stack)
            with section("Per component (issues #12, #13, #14): round trips"):
                components = run_components(store_list, args.quick)
                found += print_components(components)
    with section("Targets"):
        print_checks(found)
    total = time.perf_counter() - started
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "store": "real" if REAL_URL else "embedded",
        "quick": args.quick,
        "pynenc": metadata.version("pynenc"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "e2e": {str(k): v for k, v in e2e.items()},
        "hot": hot,
        "stack": stack,
        "components": components,
        "checks": found,
        "total_s": total,
    }
    path = (
        Path(args.json)
        if args.json
        else RESULTS_DIR
        / (
            datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            + ("-quick" if args.quick else "")
            + ".json"
        )
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    line()
    line(f"total {total:.0f} s; JSON report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
