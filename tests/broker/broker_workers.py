"""Code run in child processes by ``test_broker_processes.py`` (spawned, so it must be
importable: the children get the parent's ``sys.path``).

Each worker builds its own app on the shared server with the given app id and
database: broker, client data store and state backend on MongoDB, orchestrator
on pynenc's SQLite orchestrator over a shared file where a test needs one that
works across processes (the MongoDB orchestrator is another issue).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from pynenc import Pynenc, PynencBuilder
from pynenc.runner.runner_context import RunnerContext
from pynenc.task import Task
from pynenc_tests.conftest import MockPynenc

import pynenc_mongo  # noqa: F401  (defines the Mongo components)

holder = MockPynenc()
#: ``sqlite_path`` value selecting ``MongoOrchestrator`` instead of SQLite's.
MONGO_ORCHESTRATOR = "mongo"


@holder.task
def record(ledger: str, payload: str) -> str:
    """Append ``<pid> <sha256 of payload> <len>`` to ``ledger``: one line per run."""
    digest = hashlib.sha256(payload.encode()).hexdigest()
    with open(ledger, "a") as fh:
        fh.write(f"{os.getpid()} {digest} {len(payload)}\n")
    return digest


def make_app(url: str, database: str, app_id: str, sqlite_path: str = "", **config: Any) -> Pynenc:
    """An app on ``url``: Mongo broker, client data store and state backend; SQLite
    orchestrator on ``sqlite_path`` when given (``MongoOrchestrator`` when it is
    :data:`MONGO_ORCHESTRATOR`; else memory), ThreadRunner."""
    builder = PynencBuilder().app_id(app_id)
    mongo_orchestrator = sqlite_path == MONGO_ORCHESTRATOR
    if sqlite_path and not mongo_orchestrator:
        builder = builder.sqlite(sqlite_db_path=sqlite_path)
    else:
        builder = builder.memory()
    builder = builder.mongo_state_backend(url=url, database=database)
    builder._config.update(
        {
            "broker_cls": "MongoBroker",
            "client_data_store_cls": "MongoClientDataStore",
            "runner_cls": "ThreadRunner",
            "trigger_cls": "MemTrigger",
        }
    )
    if mongo_orchestrator:  # the whole app on MongoDB (the builder refuses half stacks)
        builder = PynencBuilder().app_id(app_id).mongo(url=url, database=database)
        builder._config["runner_cls"] = "ThreadRunner"
    if config:
        builder.custom_config(**config)
    app = builder.build()
    bind(app, record)
    return app


def bind(app: Pynenc, source: Task[Any, Any]) -> Task[Any, Any]:
    """``source`` re-bound to ``app`` (as pynenc's own tests do)."""
    if not hasattr(Task, "clone_for_app"):  # pynenc 0.2.x: tests rebind the task
        source.app = app
        return source
    task: Task[Any, Any] = Task.clone_for_app(app, source)
    app.tasks[task.task_id] = task
    return task


# ---------------------------------------------------------------------------
# 4 processes x 8 threads claiming
# ---------------------------------------------------------------------------
def claimer(url: str, database: str, app_id: str, threads: int, start: Any, out_path: str) -> None:
    """Claim with ``threads`` threads until each sees the queue empty.

    Writes JSON ``{"claims": [[t0_ns, t1_ns, id], ...], "empties": [[t0, t1,
    count_after], ...]}`` to ``out_path`` (``time.monotonic_ns``: one clock for
    every process of the host).
    """
    app = make_app(url, database, app_id)
    broker = app.broker
    broker.count_invocations()  # connect before the start line
    claims: list[list[Any]] = []
    empties: list[list[Any]] = []
    lock = threading.Lock()

    def loop() -> None:
        start.wait(60)
        while True:
            t0 = time.monotonic_ns()
            got = broker.retrieve_invocation("default")
            t1 = time.monotonic_ns()
            if got is None:
                remaining = broker.count_invocations(("default",))
                with lock:
                    empties.append([t0, t1, remaining])
                return
            with lock:
                claims.append([t0, t1, str(got)])

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    Path(out_path).write_text(json.dumps({"claims": claims, "empties": empties}))


# ---------------------------------------------------------------------------
# Runner killed at pick-up
# ---------------------------------------------------------------------------
def pick_up_and_die(url: str, database: str, app_id: str, sqlite_path: str, when: str) -> None:
    """Take one invocation through pynenc's own pick-up path, then SIGKILL itself.

    :param str when: ``"after_retrieve"`` (right after ``retrieve_invocation``
        returns, before any status change) or ``"after_pending"`` (right after the
        PENDING transition that proves ownership, before it runs).
    """
    app = make_app(url, database, app_id, sqlite_path)
    broker = app.broker
    if when == "after_retrieve":
        original = broker.retrieve_invocation

        def retrieve_then_die(queue_name: str | None = None) -> Any:
            got = original(queue_name)
            if got is not None:
                os.kill(os.getpid(), signal.SIGKILL)
            return got

        broker.retrieve_invocation = retrieve_then_die  # type: ignore[method-assign]
    ctx = RunnerContext.from_runner(app.runner)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for _invocation in app.orchestrator.get_invocations_to_run(1, ctx):
            os.kill(os.getpid(), signal.SIGKILL)  # PENDING and owned by this runner
        time.sleep(0.05)
    raise SystemExit("nothing to pick up")


def run_runner(url: str, database: str, app_id: str, sqlite_path: str) -> None:
    """Run a ThreadRunner until terminated."""
    app = make_app(url, database, app_id, sqlite_path)
    app.runner.run()


# ---------------------------------------------------------------------------
# Large argument between processes
# ---------------------------------------------------------------------------
def payload_of(size: int, seed: int = 7) -> str:
    """A deterministic, poorly compressible text of ``size`` characters."""
    chunk = hashlib.sha256(str(seed).encode()).hexdigest()
    parts = []
    total = 0
    while total < size:
        chunk = hashlib.sha256(chunk.encode()).hexdigest()
        parts.append(chunk)
        total += len(chunk)
    return "".join(parts)[:size]


def produce(
    url: str, database: str, app_id: str, sqlite_path: str, ledger: str, size: int, out: str
) -> None:
    """Call ``record(ledger, <size-character payload>)``; write the invocation id to ``out``."""
    app = make_app(url, database, app_id, sqlite_path)
    task = bind(app, record)
    invocation = task(ledger, payload_of(size))
    Path(out).write_text(str(invocation.invocation_id))


# ---------------------------------------------------------------------------
# Same large key stored by two processes at once
# ---------------------------------------------------------------------------
def store_same_key(url: str, database: str, app_id: str, size: int, start: Any, out: str) -> None:
    """Store one large value under its content key when ``start`` is set; write
    ``ok`` or the error to ``out``."""
    app = make_app(url, database, app_id)
    store = app.client_data_store
    value = payload_of(size, seed=11)
    key = "__pynenc__client_data__:" + hashlib.sha256(value.encode()).hexdigest()
    store.conf  # noqa: B018  (resolve settings before the start line)
    store.store.collection("client_data")  # connect and ensure indexes first
    start.wait(60)
    try:
        store._store(key, value)
        Path(out).write_text("ok")
    except Exception as exc:  # reported to the parent, which fails the test
        Path(out).write_text(f"{type(exc).__name__}: {exc}")
