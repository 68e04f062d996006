"""``python -m pynenc_mongo.demo``: the main job.

With ``PYNENC__MONGO_URL`` naming a server (``scripts/demo`` starts the local wire test
server and sets it), it runs distributed (:mod:`pynenc_mongo.demo.distributed`): worker
processes and a client sharing that MongoDB and nothing else, then prints from MongoDB
what happened and which worker ran what.

Without a server (``mongomock://`` or no URL) it runs the single-process workload
(:mod:`pynenc_mongo.demo.workload`: all five components on the embedded store, a
ThreadRunner, an event trigger) and prints each invocation's final status, result or
exception and history (with microsecond timestamps), the event and what it triggered,
then a summary line: invocations, wall time, MongoDB operations.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from typing import Any

from pynenc_mongo.monitoring import count_operations


def _line(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _show(backend: Any, invocation_id: str, depth: int) -> int:
    pad = "  " * depth
    inv = backend.get_invocation(invocation_id)
    history = backend.get_history(invocation_id)
    status = history[-1].status_record.status.value if history else "?"
    _line(f"{pad}- {inv.call.task.task_id.key} {invocation_id} -> {status}")
    try:
        _line(f"{pad}    result: {backend.get_result(invocation_id)!r}")
    except KeyError:
        try:
            exc = backend.get_exception(invocation_id)
            _line(f"{pad}    exception: {type(exc).__name__}: {exc}")
        except KeyError:
            _line(f"{pad}    (no result or exception stored)")
    for entry in history:
        _line(f"{pad}    {entry.timestamp.isoformat()}  {entry.status_record.status.value}")
    shown = 1
    for child_id in sorted(backend.get_child_invocations(invocation_id)):
        shown += _show(backend, child_id, depth + 1)
    return shown


def main() -> int:
    """Run the demo; exit status 0 when every invocation reached its expected end.

    A configuration error or an unreachable server ends it with one line on
    stderr naming the problem (never a password) and exit status 2.
    """
    import threading

    from pynenc_mongo.errors import MongoBackendError

    default_hook = threading.excepthook

    def quiet_expected(args: threading.ExceptHookArgs) -> None:
        # pynenc's runner threads re-raise a task's exception after storing it; the
        # demo's deliberate failure is shown from MongoDB below, not as a traceback.
        if type(args.exc_value).__name__ != "ExpectedFailure":
            default_hook(args)

    threading.excepthook = quiet_expected
    warnings.filterwarnings("ignore", message="Running in a secondary thread")
    # the demo's one runner owns the whole (short) atomic-service interval
    warnings.filterwarnings("ignore", message="atomic service: two-runner slot")
    url = os.environ.get("PYNENC__MONGO_URL", "")
    try:
        if url and not url.startswith("mongomock://"):
            from pynenc_mongo.demo import distributed

            return distributed.run()
        return _run()
    except (MongoBackendError, ValueError) as exc:
        sys.stderr.write(f"pynenc-mongo demo failed: {type(exc).__name__}: {exc}\n")
        return 2


def _run() -> int:
    from pynenc_mongo.demo import workload
    from pynenc_mongo.state_backend import MongoStateBackend

    app = workload.app
    backend = app.state_backend
    assert isinstance(backend, MongoStateBackend)
    _line(f"pynenc-mongo demo: app {app.app_id!r} on {backend.describe_target()}")
    app.purge()
    started = time.perf_counter()
    with count_operations() as ops:
        invocations = workload.run_workload(app)
        backend.wait_for_all_async_operations()
    wall = time.perf_counter() - started
    _line("")
    total = 0
    for invocation in invocations:
        total += _show(backend, invocation.invocation_id, 0)
    wf_root = next(i for i in invocations if i.call.task.task_id.func_name == "order_workflow")
    if wf_root.workflow is not None:
        data = {
            k: backend.get_workflow_data(wf_root.workflow, k)
            for k in ("status", "order.id", "total")
        }
        _line(f"\nworkflow {wf_root.workflow.workflow_id} data: {data}")
    events = app.trigger.get_events if workload.EVENT_TRIGGER_DEMO else lambda **_: []
    for event in events(event_code=workload.ORDER_PAID, limit=10):
        _line(
            f"event {event.event_code} {event.event_id} payload {event.payload} "
            f"triggered {event.triggered_invocation_ids}"
        )
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(ops.counts.items()))
    _line(
        f"\nsummary: {total} invocations, wall time {wall:.3f} s, "
        f"{ops.total} MongoDB operations ({kinds})"
    )
    # add, add, flaky, divide, slow_square, fan_out, order_workflow, summarize and, on
    # pynenc 0.4.x, on_order_paid
    successes = 5 if workload.EVENT_TRIGGER_DEMO else 4
    expected = ["success"] * 3 + ["failed"] + ["success"] * successes
    final = [inv.status.value for inv in invocations]
    backend.close()
    if final != expected:
        _line(f"unexpected final statuses: {final} (expected {expected})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
