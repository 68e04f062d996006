"""The state backend under pynenc's process runners, over the MongoDB wire protocol.

Each test starts a runner (ProcessRunner, PersistentProcessRunner or MultiThreadRunner)
in another OS process (``cross_process_worker.py``), with pynenc's SQLite orchestrator,
broker, trigger and client data store and ``MongoStateBackend`` on the run's shared
server (``server_url``: the wire test server, or a real one). The runner starts its own
worker processes (forked or spawned), so the tasks run two process levels away from
this test, which only submits invocations and reads them back. Checked:

* every invocation's history is complete (REGISTERED first, SUCCESS last), in order
  (valid transitions, non-decreasing timestamps) and without duplicates;
* results written by a worker process are readable here;
* large values (arguments and results above the inline limit, stored as pieces)
  round-trip;
* no client is shared across fork: in every worker, each registered ``MongoClient``
  was created by that very process, and so was the asynchronous loop's.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from run_settings import RUN_DATABASE

pytestmark = pytest.mark.wire

HERE = Path(__file__).resolve().parent
INVOCATIONS = 10
#: Above the 1 MiB inline limit: stored as compressed pieces (argument and result).
LARGE = 1_200_000
RESULT_TIMEOUT_SECONDS = 90.0


def _app_env(server_url: str, db_path: Path, runner: str, history_mode: str) -> dict[str, str]:
    return {
        "PYNENC__APP_ID": f"xp-{runner}-{uuid.uuid4().hex[:8]}",
        "PYNENC__ORCHESTRATOR_CLS": "SQLiteOrchestrator",
        "PYNENC__BROKER_CLS": "SQLiteBroker",
        "PYNENC__TRIGGER_CLS": "SQLiteTrigger",
        "PYNENC__CLIENT_DATA_STORE_CLS": "SQLiteClientDataStore",
        "PYNENC__STATE_BACKEND_CLS": "MongoStateBackend",
        "PYNENC__RUNNER_CLS": runner,
        "PYNENC__SQLITE_DB_PATH": str(db_path),
        "PYNENC__MONGO_URL": server_url,
        "PYNENC__MONGO_DATABASE": RUN_DATABASE,
        "PYNENC__MONGO_HISTORY_WRITE_MODE": history_mode,
        "PYNENC__RUNNER_LOOP_SLEEP_TIME_SEC": "0.01",
        "PYNENC__INVOCATION_WAIT_RESULTS_SLEEP_TIME_SEC": "0.02",
        "PYNENC__MAX_PROCESSES": "2",
        "PYNENC__NUM_PROCESSES": "2",
        "PYNENC__PRINT_ARGUMENTS": "False",
        "PYNENC__LOGGING_LEVEL": "warning",
    }


def _stop(process: subprocess.Popen[str]) -> str:
    """SIGTERM the runner (pynenc stops its loop and its workers), then reap it."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    return process.stdout.read() if process.stdout else ""


def _check_history(history: list[Any], inv_id: str) -> None:
    from pynenc.invocation.status import InvocationStatus, validate_transition

    statuses = [h.status_record.status for h in history]
    assert statuses, f"{inv_id}: no history"
    assert statuses[0] == InvocationStatus.REGISTERED, f"{inv_id}: {statuses}"
    assert statuses[-1] == InvocationStatus.SUCCESS, f"{inv_id}: {statuses}"
    for before, after in zip(statuses, statuses[1:], strict=False):
        validate_transition(before, after)  # raises on a transition pynenc forbids
    stamps = [h.timestamp for h in history]
    assert stamps == sorted(stamps), f"{inv_id}: history out of order"
    keys = [(h.status_record.status, h.timestamp, h.status_record.runner_id) for h in history]
    assert len(set(keys)) == len(keys), f"{inv_id}: duplicated history records"


@pytest.mark.parametrize(
    ("runner", "history_mode"),
    [
        ("ProcessRunner", "sync"),
        ("ProcessRunner", "async"),
        ("PersistentProcessRunner", "sync"),
        ("MultiThreadRunner", "async"),
    ],
)
def test_runner_processes_share_the_state_backend_over_the_wire(
    server_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    runner: str,
    history_mode: str,
) -> None:
    env = _app_env(server_url, tmp_path / "pynenc.db", runner, history_mode)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(HERE))
    import cross_process_tasks

    tasks = importlib.reload(cross_process_tasks)  # the app of this test's environment
    app = tasks.app
    assert type(app.state_backend).__name__ == "MongoStateBackend"

    process = subprocess.Popen(
        [sys.executable, str(HERE / "cross_process_worker.py")],
        env={**os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        large = "".join(chr(0x41 + (i * 7) % 26) for i in range(LARGE))
        payloads = [large if i % 5 == 0 else f"small-{i}" for i in range(INVOCATIONS)]
        invocations = [tasks.produce(i, payload) for i, payload in enumerate(payloads)]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(lambda inv=inv: inv.result) for inv in invocations]
            results = [f.result(timeout=RESULT_TIMEOUT_SECONDS) for f in futures]
    finally:
        output = _stop(process)
    assert process.returncode is not None, output

    worker_pids = set()
    for i, (payload, result) in enumerate(zip(payloads, results, strict=True)):
        assert result["i"] == i
        assert result["result"] == payload[::-1], f"invocation {i}: value did not round-trip"
        pid = result["pid"]
        assert pid not in (os.getpid(), process.pid), "the task ran in no worker process"
        assert result["client_pids"], "the worker made no MongoClient"
        assert set(result["client_pids"]) == {pid}, f"client shared across fork: {result}"
        assert result["loop_pid"] in (None, pid), f"async loop shared across fork: {result}"
        worker_pids.add(pid)

    # Read back from this process, through a backend with no cache: complete histories.
    reader = importlib.reload(cross_process_tasks).app.state_backend
    for inv in invocations:
        _check_history(reader.get_history(inv.invocation_id), inv.invocation_id)
    assert worker_pids, output
