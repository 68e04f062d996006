"""The whole stack on MongoDB (issue #15 item 4): operations per successful task for all
five components together, idle round trips per runner loop iteration, and throughput
against pynenc's memory and SQLite stacks.

A child process (``run.py --child stack``) builds one app from the environment:

* ``PYNENC_MONGO_BENCH_BACKEND`` = ``stack-memory`` (``PynencBuilder().memory()``),
  ``stack-sqlite`` (``.sqlite(path)``), ``stack-mongo-sync`` / ``stack-mongo-async``
  (``.mongo(url, history_write_mode=...)``: state backend, orchestrator, broker,
  trigger and client data store on MongoDB);
* ``PYNENC_MONGO_BENCH_URL`` / ``PYNENC_MONGO_BENCH_DATABASE``: the store (embedded
  ``mongomock://``, the wire server, or a real server) and a scratch database.

It runs a ``ThreadRunner`` (loop sleep :data:`LOOP_SLEEP` s, as the 0.3.0 anchor's
42.4 operations per task were measured), a warm-up, an idle window, then ``n`` plain
``add`` tasks, each submitted by its own call, and reads every result once.

Counting. On a server every command sent is counted by a PyMongo command listener
registered (``pymongo.monitoring.register``) before any client exists: one command is
one round trip, ``getMore`` included. On the embedded store mongomock's collection
methods are wrapped (the outer call counts once, as
:mod:`pynenc_mongo.monitoring` does). Each operation is attributed to a component by
its collection: ``orchestrator_*``, ``broker_*``, ``trigger_*``, ``client_data*``;
the rest is the state backend. The client waits for the tasks by polling their
status with counting off in its own thread (how long an application polls is its
choice, not a per-task cost); it then reads every result once, counted.
Everything else -- the runner loop, its heartbeats, the atomic-service checks --
is counted for the whole window: "per task" is the window's total / ``n``, and
"net of idle" subtracts the window's loop iterations times the idle cost.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from typing import Any

STACK = os.environ.get("PYNENC_MONGO_BENCH_BACKEND", "")
STACKS = ("stack-memory", "stack-sqlite", "stack-mongo-sync", "stack-mongo-async")
MONGO_STACKS = ("stack-mongo-sync", "stack-mongo-async")
#: Runner loop sleep (s), as in the 0.3.0 anchor measurement.
LOOP_SLEEP = 0.01
RUNNER_THREADS = 4
WARMUP = 10
#: Targets of issue #15 (operations per successful task, all five components).
TARGET_SYNC = 10.0
TARGET_ASYNC = 7.0
ANCHOR_030 = 42.4
#: Collections (logical, after the prefix) by component; the rest is the state backend.
COMPONENT_PREFIXES = (
    ("orchestrator_", "orchestrator"),
    ("broker_", "broker"),
    ("trigger_", "trigger"),
    ("client_data", "client_data_store"),
)
#: Driver housekeeping, not the app's operations.
IGNORED = frozenset(
    {"hello", "ismaster", "isMaster", "ping", "endSessions", "buildInfo", "saslStart",
     "saslContinue", "killCursors"}
)  # fmt: skip


class AttributedCounter:
    """Operations by (component, command, collection), counted while :attr:`active`,
    except in threads that called :meth:`ignore_this_thread`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.active = False
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self._lock = threading.Lock()
        self._local = threading.local()

    def component(self, collection: str) -> str:
        """The component owning ``collection`` (physical name)."""
        logical = collection.removeprefix(self.prefix)
        for start, name in COMPONENT_PREFIXES:
            if logical.startswith(start):
                return name
        return "state_backend"

    def record(self, command: str, collection: str) -> None:
        """Count one ``command`` on ``collection`` (if counting, and not ignored here)."""
        if not self.active or getattr(self._local, "ignored", False):
            return
        with self._lock:
            self.counts[(self.component(collection), command, collection)] += 1

    def ignore_this_thread(self) -> None:
        """Stop counting this thread's operations."""
        self._local.ignored = True

    def snapshot(self) -> Counter[tuple[str, str, str]]:
        """A copy of the counts so far."""
        with self._lock:
            return Counter(self.counts)


COUNTER = AttributedCounter(os.environ.get("PYNENC_MONGO_BENCH_PREFIX", "pynenc_"))


def _install_counting() -> None:
    """A global PyMongo listener (servers) and mongomock wrappers (embedded store)."""
    from pymongo import monitoring

    class Listener(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            name = event.command_name
            if name in IGNORED:
                return
            target = event.command.get(name)
            if name == "getMore":
                target = event.command.get("collection")
            COUNTER.record(name, target if isinstance(target, str) else f"<{event.database_name}>")

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            """Nothing (only starts are counted)."""

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            """Nothing (only starts are counted)."""

    monitoring.register(Listener())
    try:
        import mongomock.collection as mock
    except ImportError:
        return
    from pynenc_mongo.monitoring import _MOCK_KIND, MOCK_COUNTED_METHODS

    local = threading.local()
    for method in MOCK_COUNTED_METHODS:
        original = getattr(mock.Collection, method)

        def wrapped(self: Any, *a: Any, _o: Any = original, _m: str = method, **kw: Any) -> Any:
            outer = not getattr(local, "busy", False)
            if outer:
                COUNTER.record(_MOCK_KIND.get(_m, _m), self.name)
            local.busy = True
            try:
                return _o(self, *a, **kw)
            finally:
                if outer:
                    local.busy = False

        setattr(mock.Collection, method, wrapped)


def build_app(stack: str) -> Any:
    """The app of ``stack`` (one of :data:`STACKS`) with a ThreadRunner."""
    from pynenc import PynencBuilder

    builder = PynencBuilder().app_id(f"bench_stack_{uuid.uuid4().hex[:8]}")
    if stack == "stack-memory":
        builder = builder.memory()
    elif stack == "stack-sqlite":
        builder = builder.sqlite(os.environ.get("PYNENC_MONGO_BENCH_SQLITE", "/tmp/bench.db"))
    elif stack in MONGO_STACKS:
        builder = builder.mongo(
            url=os.environ.get("PYNENC_MONGO_BENCH_URL", "mongomock://bench"),
            database=os.environ.get("PYNENC_MONGO_BENCH_DATABASE", "pynenc_bench"),
            history_write_mode=stack.removeprefix("stack-mongo-"),
        )
    else:
        raise ValueError(f"unknown stack {stack!r}; expected one of {', '.join(STACKS)}")
    return (
        builder.thread_runner(min_threads=1, max_threads=RUNNER_THREADS)
        .logging_level("error")
        .custom_config(
            runner_loop_sleep_time_sec=LOOP_SLEEP,
            invocation_wait_results_sleep_time_sec=LOOP_SLEEP,
        )
        .build()
    )


def _add(x: int, y: int) -> int:
    """The benchmark's plain task."""
    return x + y


if STACK in STACKS:  # pynenc tasks must be defined at module level, outside __main__
    _install_counting()
    app = build_app(STACK)
    add = app.task(_add)


def _wait_final(invocations: list[Any], deadline: float) -> None:
    """Poll until every invocation is final (run in a thread whose operations are not
    counted)."""
    COUNTER.ignore_this_thread()
    pending = list(invocations)
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} invocations not final")
        time.sleep(LOOP_SLEEP)
        pending = [inv for inv in pending if not inv.status.is_final()]


def _uncounted(func: Any) -> Any:
    """Run ``func()`` in a thread whose operations are not counted; return its value."""
    out: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        COUNTER.ignore_this_thread()
        try:
            out.append(func())
        except BaseException as error:  # noqa: BLE001 (re-raised below)
            errors.append(error)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return out[0] if out else None


def _by(counts: Counter[tuple[str, str, str]], *index: int) -> dict[str, int]:
    """Sum ``counts`` by the key parts at ``index`` (joined with "/")."""
    out: Counter[str] = Counter()
    for key, value in counts.items():
        out["/".join(key[i] for i in index)] += value
    return dict(out.most_common())


def child_stack(tasks: int, idle_seconds: float) -> dict[str, Any]:
    """Measure this child's stack; return the figures (counts are whole-window totals)."""
    iterations = [0]
    orchestrator = app.orchestrator
    original = orchestrator.get_blocking_invocations

    def counted(*args: Any, **kwargs: Any) -> Any:
        iterations[0] += 1
        return original(*args, **kwargs)

    orchestrator.get_blocking_invocations = counted  # one call per runner loop iteration
    thread = threading.Thread(target=app.runner.run, daemon=True)
    thread.start()
    try:
        warm = [add(i, i) for i in range(WARMUP)]
        _uncounted(lambda: _wait_final(warm, time.monotonic() + 120))
        assert [inv.result for inv in warm] == [i + i for i in range(WARMUP)]
        time.sleep(max(LOOP_SLEEP * 20, 0.5))  # start-up work (heartbeats) settles
        # -- idle
        COUNTER.active = True
        start_it, before = iterations[0], COUNTER.snapshot()
        time.sleep(idle_seconds)
        idle_counts = COUNTER.snapshot() - before
        idle_iterations = iterations[0] - start_it
        # -- the workload
        start_it, before = iterations[0], COUNTER.snapshot()
        started = time.perf_counter()
        invocations = [add(i, i) for i in range(tasks)]
        _uncounted(lambda: _wait_final(invocations, time.monotonic() + 1800))
        results = [inv.result for inv in invocations]
        wait_async = getattr(app.state_backend, "wait_for_all_async_operations", None)
        if wait_async is not None:
            wait_async()
        wall = time.perf_counter() - started
        counts = COUNTER.snapshot() - before
        busy_iterations = iterations[0] - start_it
        COUNTER.active = False
    finally:
        app.runner.stop_runner_loop()
        thread.join(timeout=10)
    if results != [i + i for i in range(tasks)]:
        raise AssertionError(f"{STACK}: wrong results")
    idle_total = sum(idle_counts.values())
    total = sum(counts.values())
    per_iteration = idle_total / idle_iterations if idle_iterations else 0.0
    return {
        "stack": STACK,
        "tasks": tasks,
        "wall_s": wall,
        "tasks_per_s": tasks / wall,
        "ops_total": total,
        "ops_per_task": total / tasks,
        "ops_per_task_net_of_idle": (total - busy_iterations * per_iteration) / tasks,
        "loop_iterations": busy_iterations,
        "by_component": _by(counts, 0),
        "by_command": _by(counts, 1),
        "by_component_command": _by(counts, 0, 1),
        "by_collection_command": _by(counts, 2, 1),
        "idle_seconds": idle_seconds,
        "idle_iterations": idle_iterations,
        "idle_ops": idle_total,
        "idle_per_iteration": per_iteration,
        "idle_by_collection_command": _by(idle_counts, 2, 1),
    }
