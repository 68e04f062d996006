"""MongoDB operations per backend call: batched registration, deferred invocation
inserts, results, and the benchmark's operation-count targets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pynenc import Pynenc

from pynenc_mongo import schema
from pynenc_mongo.async_writes import pynenc_writes_history_async
from pynenc_mongo.client import get_database
from pynenc_mongo.monitoring import count_operations

ROOT = Path(__file__).resolve().parents[1]


def double(x: int) -> int:
    """A task function (bound to each test's app with ``app.task``)."""
    return 2 * x


def _raw_invocations(app: Pynenc) -> list[dict[str, Any]]:
    """The app's invocation documents, read without going through the backend."""
    backend: Any = app.state_backend
    conf = backend.conf
    db = get_database(conf.mongo_url, backend.database_name, 5.0)
    return list(db[backend.collection_name(schema.INVOCATIONS)].find({schema.F_APP: app.app_id}))


@pytest.mark.parametrize("size", [1, 25, 500])
def test_parallelize_registers_any_batch_in_one_insert(
    make_app: Callable[..., Pynenc], size: int
) -> None:
    """pynenc stores each invocation from its constructor, then registers the batch:
    the backend writes the whole batch in one ``insert_many``."""
    app = make_app(history_write_mode="sync")
    task = app.task(double, parallel_batch_size=1_000)  # pynenc registers <= 1,000 at once
    for logical in (schema.INVOCATIONS, schema.HISTORY, schema.RUNNER_CONTEXTS):
        app.state_backend.collection(logical)  # indexes are created before counting
    with count_operations() as ops:
        group = task.parallelize([(i,) for i in range(size)])
    invocations = list(group)
    assert len(invocations) == size
    # one insert for the invocations, one for their REGISTERED records (sync mode),
    # and one update storing this process's runner context
    assert ops.counts["insert"] == 2, ops.counts
    assert ops.total == 3, ops.counts
    stored = {doc[schema.F_INV] for doc in _raw_invocations(app)}
    assert stored == {inv.invocation_id for inv in invocations}


def test_deferred_invocation_is_written_before_any_later_operation(
    make_app: Callable[..., Pynenc],
) -> None:
    """An invocation stored by its constructor alone (never registered) is written
    before this backend's next operation, and at close."""
    app = make_app()
    task = app.task(double)
    backend: Any = app.state_backend
    backend.collection(schema.INVOCATIONS)
    from pynenc.call import Call
    from pynenc.invocation.dist_invocation import DistributedInvocation

    invocation = DistributedInvocation.from_parent(Call(task, task.args(3)))  # upserts itself
    assert _raw_invocations(app) == []  # deferred
    assert list(backend.get_child_invocations("no-such-parent")) == []  # any operation...
    assert [d[schema.F_INV] for d in _raw_invocations(app)] == [invocation.invocation_id]
    again = DistributedInvocation.from_parent(Call(task, task.args(4)))
    backend.close()
    assert {d[schema.F_INV] for d in _raw_invocations(app)} == {
        invocation.invocation_id,
        again.invocation_id,
    }


def test_other_threads_operations_do_not_split_a_batch(make_app: Callable[..., Pynenc]) -> None:
    """Invocations deferred by one thread wait for that thread's registration (or its
    next operation), not for another thread's operations; ``wait_for_all`` writes all."""
    app = make_app()
    task = app.task(double)
    backend: Any = app.state_backend
    for logical in (schema.INVOCATIONS, schema.HISTORY, schema.RUNNER_CONTEXTS):
        backend.collection(logical)
    from pynenc.call import Call
    from pynenc.invocation.dist_invocation import DistributedInvocation

    made: list[Any] = []

    def construct() -> None:
        made.extend(DistributedInvocation.from_parent(Call(task, task.args(i))) for i in range(5))

    worker = threading.Thread(target=construct)
    worker.start()
    worker.join()
    assert list(backend.get_child_invocations("no-such-parent")) == []  # this thread's op
    assert _raw_invocations(app) == []  # the worker's invocations are still deferred
    with count_operations() as ops:
        backend.upsert_invocations(made)  # the registration, from any thread
    assert dict(ops.counts) == {"insert": 1}
    assert len(_raw_invocations(app)) == 5
    worker = threading.Thread(target=construct)
    worker.start()
    worker.join()
    backend.wait_for_all_async_operations()
    assert len(_raw_invocations(app)) == 10


def test_result_is_one_operation_and_can_be_replaced(make_app: Callable[..., Pynenc]) -> None:
    backend: Any = make_app().state_backend
    backend.collection(schema.RESULTS)
    with count_operations() as ops:
        backend.set_result("inv-r", {"a": 1})
    assert ops.total == 1, ops.counts
    backend.set_result("inv-r", {"a": 2})  # a second result replaces the first
    assert backend.get_result("inv-r") == {"a": 2}
    docs = backend.collection(schema.RESULTS).find({schema.F_INV: "inv-r"})
    assert len(list(docs)) == 1
    backend.set_exception("inv-e", ValueError("first"))
    backend.set_exception("inv-e", ValueError("second"))
    assert str(backend.get_exception("inv-e")) == "second"


@pytest.mark.slow
@pytest.mark.skipif(
    pynenc_writes_history_async(),
    reason="the benchmark runs on pynenc 0.4 (scripts/benchmark's environment)",
)
@pytest.mark.wire_gap("the benchmark's hot-path section times out on drop_database on the emulator")
def test_benchmark_quick_run_stays_within_operation_targets(tmp_path: Path) -> None:
    """``benchmarks/run.py --quick`` runs, and its operation counts (not times) meet
    the targets: per task in one process at most 7 (sync) / 4 (async) operations,
    one operation for a batch upsert of any size, constant operations per call."""
    out = tmp_path / "quick.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--json", str(out)],
        check=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    report = json.loads(out.read_text())
    checked = [check for check in report["checks"] if check["kind"] == "operations"]
    assert len(checked) >= 5
    for check in checked:
        assert check["met"], check
