"""What the benchmark's child processes measure: the end-to-end workload and the hot path."""

import gc
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_common import HERE, MONGO_MODES, WARMUP_TASKS, peak_rss_mb, rss_mb


# ---------------------------------------------------------------- child: end to end
def child_e2e(backend: str, tasks: int) -> dict[str, Any]:
    """Run the workload once with ``backend`` in this (fresh) process; return figures."""
    sys.path.insert(0, str(HERE))
    import bench_workload as workload

    from pynenc_mongo.monitoring import count_operations

    app = workload.app
    first_reads = _watch_cache_served_reads() if backend in MONGO_MODES else None
    with count_operations() as setup_ops:
        # What every process does once, lazily, on first use: store the app info and
        # create (or check) the indexes of each collection.
        state_backend: Any = app.state_backend
        if backend in MONGO_MODES:
            from pynenc_mongo import schema

            for logical in schema.STATE_COLLECTIONS:
                state_backend.collection(logical)
    backend_cpu = _watch_backend_cpu(type(state_backend))
    with workload.Runner():
        assert workload.run(WARMUP_TASKS) == workload.expected_results(workload.plan(WARMUP_TASKS))
        _wait_durable(app)
        if first_reads is not None:
            first_reads.clear()
        backend_cpu.clear()
        rss_before = rss_mb()
        with count_operations() as ops:
            started, cpu_started = time.perf_counter(), time.process_time()
            results = workload.run(tasks)
            _wait_durable(app)
            wall = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
    if results != workload.expected_results(workload.plan(tasks)):
        raise AssertionError(f"{backend}: wrong results")
    return {
        "backend": backend,
        "tasks": tasks,
        "plan": workload.plan(tasks).describe(),
        "wall_s": wall,
        "cpu_s": cpu,
        "store_cpu_s": ops.cpu_seconds,
        "backend_cpu_s": sum(backend_cpu.values()),
        "backend_cpu_by_method_s": dict(backend_cpu),
        "ops": dict(ops.counts),
        "ops_total": ops.total,
        "store_busy_s": ops.busy_seconds,
        "store_sum_s": ops.seconds,
        "setup_ops": dict(setup_ops.counts),
        "cache_served_first_reads": len(first_reads) if first_reads is not None else 0,
        "rss_before_mb": rss_before,
        "rss_peak_mb": peak_rss_mb(),
    }


#: The state backend methods pynenc calls while running the workload.
BACKEND_METHODS = (
    "upsert_invocations",
    "get_invocation",
    "add_history",
    "add_histories",
    "get_history",
    "set_result",
    "get_result",
    "set_exception",
    "get_exception",
    "set_workflow_data",
    "get_workflow_data",
    "store_workflow_run",
    "store_workflow_sub_invocation",
    "store_runner_context",
    "get_child_invocations",
    "wait_for_all_async_operations",
)


def _watch_backend_cpu(cls: type) -> Counter[str]:
    """CPU time (all threads) spent in the state backend's methods, by method.

    Wraps :data:`BACKEND_METHODS` of ``cls``; nested calls count in the outer one.
    For MongoStateBackend this includes the embedded store's work, which the
    operation counter measures apart (``cpu_seconds``).
    """
    spent: Counter[str] = Counter()
    lock = threading.Lock()
    local = threading.local()
    for name in BACKEND_METHODS:
        method = getattr(cls, name, None)
        if method is None:
            continue

        def wrap(method: Callable[..., Any], name: str) -> Callable[..., Any]:
            def timed(*args: Any, **kwargs: Any) -> Any:
                if getattr(local, "inside", False):
                    return method(*args, **kwargs)
                local.inside = True
                started = time.thread_time()
                try:
                    return method(*args, **kwargs)
                finally:
                    used = time.thread_time() - started
                    local.inside = False
                    with lock:
                        spent[name] += used

            return timed

        setattr(cls, name, wrap(method, name))
    return spent


def _wait_durable(app: Any) -> None:
    wait = getattr(app.state_backend, "wait_for_all_async_operations", None)
    if wait is not None:
        wait()


def _watch_cache_served_reads() -> set[str]:
    """Invocation ids whose first ``get_invocation`` in this process was served by the
    DTO cache (the process had written them).

    In a multi-process deployment the process that runs an invocation is often not
    the one that created it; it then reads the invocation once from MongoDB. This
    set counts those reads as if every invocation ran in another process (the
    upper bound), so the multi-process figure includes them.
    """
    from pynenc_mongo.state_backend import MongoStateBackend

    served: set[str] = set()
    seen: set[str] = set()
    original = MongoStateBackend._get_invocation

    def watched(self: MongoStateBackend, invocation_id: Any) -> Any:
        if invocation_id not in seen:
            seen.add(invocation_id)
            with self._cache_lock:
                if invocation_id in self._dto_cache:
                    served.add(invocation_id)
        return original(self, invocation_id)

    MongoStateBackend._get_invocation = watched  # type: ignore[method-assign]
    return served


# ---------------------------------------------------------------- child: hot path
#: Calls per hot-path method run under a line tracer (not timed): how many lines of
#: this package's code one call runs, a deterministic measure of our own work.
TRACED_CALLS = 3
#: Size of the traced batch upserts (the timed one has as many as the calls).
TRACED_BATCH = 10


def _count_package_lines(work: Callable[[], Any]) -> int:
    """Run ``work()`` and return how many lines of ``pynenc_mongo`` it executed (this
    thread). Unlike a time, unaffected by the CPU caches the embedded store's scans
    thrash."""
    import pynenc_mongo

    package = str(Path(pynenc_mongo.__file__).resolve().parent)
    count = 0

    def local(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return local

    def global_(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename.startswith(package):
            return local
        return None

    sys.settrace(global_)
    try:
        work()
    finally:
        sys.settrace(None)
    return count


def child_hot(stored: int, calls: int, batch_sizes: list[int]) -> dict[str, Any]:
    """Time each hot-path method with ``stored`` invocations already in the store."""
    sys.path.insert(0, str(HERE))
    import bench_workload as workload
    from pynenc.call import Call
    from pynenc.invocation.status import InvocationStatus, InvocationStatusRecord
    from pynenc.models.call_dto import CallDTO
    from pynenc.models.invocation_dto import InvocationDTO
    from pynenc.runner.runner_context import RunnerContext
    from pynenc.state_backend.base_state_backend import InvocationHistory

    from pynenc_mongo import schema
    from pynenc_mongo.client import get_database
    from pynenc_mongo.monitoring import count_operations

    app = workload.app
    backend: Any = app.state_backend
    conf = backend.conf
    ctx = RunnerContext(runner_cls="BenchRunner", runner_id=f"bench-{uuid.uuid4().hex[:8]}")
    statuses = [
        InvocationStatus.REGISTERED,
        InvocationStatus.PENDING,
        InvocationStatus.RUNNING,
        InvocationStatus.SUCCESS,
    ]
    records = [InvocationStatusRecord(s, runner_id=ctx.runner_id) for s in statuses]

    def pair(i: int, tag: str) -> tuple[InvocationDTO, CallDTO]:
        call = Call(workload.add, workload.add.args(i, i))
        dto = InvocationDTO(
            invocation_id=f"{tag}-{i}-{uuid.uuid4().hex[:12]}",
            call_id=call.call_id,
            workflow=None,
            parent_invocation_id=None,
        )
        return dto, CallDTO(call_id=call.call_id, serialized_arguments=call.serialized_arguments)

    # Seed: ``stored`` invocations with four history records and a result each,
    # written straight into the collections before the backend creates its indexes
    # (the embedded store checks unique indexes by scanning on every insert).
    seed_started = time.perf_counter()
    db = get_database(conf.mongo_url, backend.database_name, 10.0)
    inv_docs, history_docs, result_docs = [], [], []
    for i in range(stored):
        inv_dto, call_dto = pair(i, "seed")
        args = [{"name": k, "value": v} for k, v in call_dto.serialized_arguments.items()]
        inv_docs.append(schema.invocation_doc(backend.app_id, inv_dto, call_dto, args))
        for record in records:
            history = InvocationHistory(inv_dto.invocation_id, record, ctx.runner_id)
            history_docs.append(schema.history_doc(backend.app_id, inv_dto.invocation_id, history))
        result_docs.append(
            {schema.F_APP: backend.app_id, schema.F_INV: inv_dto.invocation_id, "value": str(i)}
        )
    for logical, docs in (
        (schema.INVOCATIONS, inv_docs),
        (schema.HISTORY, history_docs),
        (schema.RESULTS, result_docs),
    ):
        collection = db[backend.collection_name(logical)]
        for start in range(0, len(docs), 5_000):
            collection.insert_many(docs[start : start + 5_000], ordered=False)
    for logical in schema.STATE_COLLECTIONS:
        backend.collection(logical)  # indexes now (on the embedded store: one pass each)
    backend.store_runner_context(ctx)
    seed_s = time.perf_counter() - seed_started
    # The embedded store keeps every stored document in this process's heap, which a
    # real server does not: keep the garbage collector from re-scanning them on every
    # collection, so that "ours" measures this package's work, not the store's heap.
    del inv_docs, history_docs, result_docs
    gc.collect()
    gc.freeze()

    rows: dict[str, dict[str, Any]] = {}

    def measure(name: str, items: list[Any], call: Callable[[Any], Any]) -> None:
        """Time ``call(item)`` for each item but the last :data:`TRACED_CALLS`; record
        median/mean µs, ops and store µs; count the lines of this package run by the
        last ones (traced, not timed)."""
        items, traced = items[:-TRACED_CALLS], items[-TRACED_CALLS:]
        times: list[float] = []
        ours: list[float] = []
        with count_operations() as ops:
            for item in items:
                in_store = ops.seconds
                t0 = time.perf_counter_ns()
                call(item)
                elapsed = (time.perf_counter_ns() - t0) / 1000
                times.append(elapsed)
                ours.append(elapsed - (ops.seconds - in_store) * 1e6)
        lines = _count_package_lines(lambda: [call(item) for item in traced])
        rows[name] = {
            "calls": len(items),
            "median_us": statistics.median(times),
            "mean_us": statistics.fmean(times),
            "ops_per_call": ops.total / len(items),
            "store_us_per_call": ops.seconds * 1e6 / len(items),
            "ours_median_us": statistics.median(ours),
            "package_lines_per_call": lines / len(traced),
            "ops_by_kind": dict(ops.counts),
        }

    # -- upsert: pynenc stores each invocation from its constructor (deferred here),
    #    then registers the batch (written in one insert_many)
    def register(batch: list[tuple[InvocationDTO, CallDTO]]) -> None:
        """What pynenc does: each constructor stores its invocation, then the
        registration stores the batch (here: one insert_many)."""
        for one in batch:
            backend._upsert_invocations([one])
        backend._upsert_invocations(batch)

    batches = [[pair(i, "new") for i in range(calls)]] + [
        [pair(i, f"traced{k}") for i in range(TRACED_BATCH)] for k in range(TRACED_CALLS)
    ]
    ids = [inv.invocation_id for inv, _ in batches[0]] + [
        batch[0][0].invocation_id for batch in batches[1:]
    ]
    measure(f"upsert batch of {calls} (as pynenc registers)", batches, register)
    measure(
        "add_history (sync writes)",
        [(i, r) for r in records for i in ids],
        lambda item: backend.add_history(item[0], item[1], ctx),
    )
    measure("set_result", ids, lambda i: backend.set_result(i, {"value": i}))
    measure("get_result", ids, backend.get_result)
    measure("get_history", ids, backend.get_history)
    with backend._cache_lock:
        backend._dto_cache.clear()  # as in a process that did not create them
    measure("get_invocation (not cached)", ids, backend.get_invocation)
    measure("get_invocation (cached)", ids, backend.get_invocation)

    # -- asynchronous history writes: the caller's latency, then the durability wait
    from pynenc_mongo.async_writes import AsyncHistoryWriter

    backend.close()
    backend._writer = AsyncHistoryWriter(backend)
    async_ids = [f"async-{i}-{uuid.uuid4().hex[:8]}" for i in range(calls + TRACED_CALLS)]
    with count_operations() as async_ops:
        measure(
            "add_history (async writes, caller)",
            [(i, r) for r in records for i in async_ids],
            lambda item: backend.add_history(item[0], item[1], ctx),
        )
        t0 = time.perf_counter()
        backend.wait_for_all_async_operations()
        durable_s = time.perf_counter() - t0
    rows["add_history (async writes, caller)"]["ops_per_call"] = async_ops.total / (
        len(async_ids) * len(records)
    )  # the records written by the traced calls included
    rows["add_history (async writes, caller)"]["durable_wait_ms"] = durable_s * 1000

    # -- batch upserts of several sizes: one operation each
    batch_ops: dict[str, int] = {}
    for size in batch_sizes:
        batch = [pair(i, f"b{size}") for i in range(size)]
        for one in batch:
            backend._upsert_invocations([one])  # the constructors' calls
        with count_operations() as ops:
            backend._upsert_invocations(batch)  # the registration
        batch_ops[str(size)] = ops.total
    with backend._cache_lock:
        cache_size = len(backend._dto_cache)
    backend.close()
    return {
        "stored": stored,
        "calls": calls,
        "seed_s": seed_s,
        "rows": rows,
        "batch_upsert_ops": batch_ops,
        "dto_cache_entries": cache_size,
        "rss_peak_mb": peak_rss_mb(),
    }
