"""The distributed demo: worker processes and a client sharing one MongoDB, nothing else.

:func:`run` starts worker processes (:mod:`pynenc_mongo.demo.worker`, each a pynenc
ThreadRunner), submits the workload of :mod:`pynenc_mongo.demo.tasks` from this process
(the client), emits an event, waits for every invocation, then prints from MongoDB what
happened: each invocation's final status, result or exception, and which worker ran it
(its RUNNING history record names the runner, whose runner context holds the pid).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Characters of the large argument (about 2 MiB: far above pynenc's 1 KiB threshold for
#: the client data store, and above the 1 MiB inline limit, so it is stored as pieces).
LARGE_ARGUMENT_CHARS = 2 * 1024 * 1024


def _line(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@dataclass
class Worker:
    """A worker process and the file its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """SIGTERM (pynenc's runner stops its loop), then SIGKILL after 15 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_workers(count: int, log_dir: Path) -> list[Worker]:
    """Start ``count`` worker processes with this process's environment.

    :param int count: how many (each a separate OS process with its own MongoDB client).
    :param Path log_dir: where each worker's stdout and stderr go (``<name>.log``).
    :return: the workers, in start order.
    """
    workers = []
    for index in range(1, count + 1):
        name = f"worker-{index}"
        log = log_dir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "pynenc_mongo.demo.worker", name],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=os.environ.copy(),
            )
        workers.append(Worker(name, process, log))
    return workers


def _wait_final(invocations: list[Any], deadline: float) -> None:
    for invocation in invocations:
        while not invocation.status.is_final():
            if time.monotonic() > deadline:
                raise TimeoutError(f"invocation {invocation.invocation_id} did not finish in time")
            time.sleep(0.05)


def _wait_triggered(app: Any, task: Any, deadline: float) -> list[str]:
    """Ids of ``task``'s invocations once at least one exists and all are final."""
    while True:
        ids = list(app.orchestrator.get_task_invocation_ids(task.task_id))
        if ids and all(app.orchestrator.get_invocation_status(i).is_final() for i in ids):
            return ids
        if time.monotonic() > deadline:
            raise TimeoutError(f"no final invocation of {task.task_id.key} in time")
        time.sleep(0.1)


def _ran_on(app: Any, invocation_id: str, worker_by_pid: dict[int, str]) -> str:
    """The worker whose runner ran ``invocation_id`` (from its RUNNING history record)."""
    for entry in app.state_backend.get_history(invocation_id):
        if entry.status_record.status.value == "running":
            context = app.state_backend.get_runner_context(entry.runner_context_id)
            if context is not None:
                return worker_by_pid.get(context.pid, f"pid {context.pid}")
    return "?"


def _outcome(app: Any, invocation_id: str) -> str:
    try:
        return f"result {app.state_backend.get_result(invocation_id)!r}"[:160]
    except KeyError:
        try:
            exc = app.state_backend.get_exception(invocation_id)
            return f"exception {type(exc).__name__}: {exc}"[:100]
        except KeyError:
            return "no result or exception stored"


def run(workers: int = 3, timeout_seconds: float = 120.0) -> int:
    """Run the distributed demo on the server in ``PYNENC__MONGO_URL``.

    :param int workers: worker processes to start.
    :param float timeout_seconds: give up waiting after this long.
    :return: exit status: 0 when every check passed, 1 otherwise.
    """
    from pynenc_mongo.demo import tasks

    app = tasks.app
    backend: Any = app.state_backend
    _line(f"pynenc-mongo distributed demo: app {app.app_id!r} on {backend.describe_target()}")
    app.purge()
    log_dir = Path(tempfile.mkdtemp(prefix="pynenc-mongo-demo-"))
    started = time.monotonic()
    pool = start_workers(workers, log_dir)
    worker_by_pid = {w.process.pid: w.name for w in pool}
    _line(
        f"started {workers} worker processes: "
        + ", ".join(f"{w.name} (pid {w.process.pid})" for w in pool)
    )
    try:
        return _client(app, tasks, worker_by_pid, started + timeout_seconds, started)
    except TimeoutError as exc:
        _line(f"demo failed: {exc}; worker logs in {log_dir}")
        return 1
    finally:
        for worker in pool:
            worker.stop()
        _line(
            "workers stopped: " + ", ".join(f"{w.name} exit {w.process.returncode}" for w in pool)
        )


def _client(
    app: Any, tasks: Any, worker_by_pid: dict[int, str], deadline: float, started: float
) -> int:
    blob = secrets.token_hex(LARGE_ARGUMENT_CHARS // 2)
    import hashlib

    named: dict[str, Any] = {
        "add(1, 2)": tasks.add(1, 2),
        "fan_out(8)": tasks.fan_out(8),
        "flaky('alpha')": tasks.flaky("alpha"),
        "divide(1, 0)": tasks.divide(1, 0),
        f"checksum(<{len(blob):,} chars>)": tasks.checksum(blob),
        "order_workflow('order-17', 5)": tasks.order_workflow("order-17", 5),
    }
    exclusive = [tasks.exclusive_step(i) for i in range(3)]
    named.update({f"exclusive_step({i})": inv for i, inv in enumerate(exclusive)})
    _line(f"client submitted {len(named)} invocations")
    _wait_final(list(named.values()), deadline)
    # Emitted once the workers are running: they register the task's trigger condition
    # when their runner starts (an event no condition matches is stored, not acted on).
    event_id = app.trigger.emit_event(tasks.ORDER_PAID, {"order_id": "order-17"})
    _line(
        f"all final after {time.monotonic() - started:.1f} s; client emitted event "
        f"{tasks.ORDER_PAID} ({event_id[:8]})"
    )
    triggered = _wait_triggered(app, tasks.on_order_paid, deadline)
    wall = time.monotonic() - started

    _line("")
    ran: Counter[str] = Counter()
    rows = [(label, inv.invocation_id) for label, inv in named.items()]
    rows += [(f"on_order_paid (triggered by {tasks.ORDER_PAID})", i) for i in triggered]
    for label, invocation_id in rows:
        status = app.orchestrator.get_invocation_status(invocation_id).value
        worker = _ran_on(app, invocation_id, worker_by_pid)
        ran[worker] += 1
        _line(f"{label:<42} {status:<8} on {worker:<9} {_outcome(app, invocation_id)}")
    children = [
        c
        for inv in named.values()
        for c in app.state_backend.get_child_invocations(inv.invocation_id)
    ]
    for child in children:
        ran[_ran_on(app, child, worker_by_pid)] += 1

    checks = _checks(app, tasks, named, exclusive, triggered, blob, hashlib)
    _line("")
    for text, ok in checks:
        _line(f"[{'ok' if ok else 'FAILED'}] {text}")
    _line(
        f"[info] exclusive_step runs overlapping in time: {_overlaps(exclusive)} (pynenc "
        "checks running concurrency before the RUNNING transition, not atomically with "
        "it, in every backend: see docs/deployment.md)"
    )
    used = sorted(w for w in ran if w in worker_by_pid.values())
    _line(
        f"\nsummary: {len(rows) + len(children)} invocations ({len(children)} children) in "
        f"{wall:.1f} s, run by {len(used)} workers: " + ", ".join(f"{w}={ran[w]}" for w in used)
    )
    return 0 if all(ok for _, ok in checks) else 1


def _overlaps(exclusive: list[Any]) -> int:
    """How many successive ``exclusive_step`` runs started before the previous ended."""
    runs = sorted((inv.result["start"], inv.result["end"]) for inv in exclusive)
    return sum(1 for earlier, later in zip(runs, runs[1:], strict=False) if later[0] < earlier[1])


def _checks(
    app: Any,
    tasks: Any,
    named: dict[str, Any],
    exclusive: list[Any],
    triggered: list[str],
    blob: str,
    hashlib: Any,
) -> list[tuple[str, bool]]:
    statuses = {label: inv.status.value for label, inv in named.items()}
    expected_failed = {"divide(1, 0)"}
    checksum_label = next(k for k in named if k.startswith("checksum"))
    digest = named[checksum_label].result["sha256"]
    workflow = named["order_workflow('order-17', 5)"]
    data = app.state_backend.get_workflow_data(workflow.workflow, "total")
    receipts = [app.state_backend.get_result(i) for i in triggered]
    flaky_history = [
        h.status_record.status.value
        for h in app.state_backend.get_history(named["flaky('alpha')"].invocation_id)
    ]
    return [
        (
            "every invocation reached its expected final status",
            all(
                (s == "failed") == (k in expected_failed) and s in ("success", "failed")
                for k, s in statuses.items()
            ),
        ),
        ("flaky('alpha') failed once, was retried and succeeded", "retry" in flaky_history),
        (
            "the large argument arrived byte-identical in another process",
            digest == hashlib.sha256(blob.encode()).hexdigest(),
        ),
        ("workflow data 'total' is 105", data == 105),
        (
            "all exclusive_step invocations ran (running concurrency TASK rerouted the "
            "blocked ones)",
            all(inv.status.value == "success" for inv in exclusive),
        ),
        (
            "the order.paid event triggered on_order_paid exactly once",
            receipts == ["receipt for order-17"],
        ),
    ]
