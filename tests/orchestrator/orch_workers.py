"""Code run in child OS processes by the orchestrator's multi-process tests.

Imported by module name in processes started with ``multiprocessing``'s ``spawn``
(the parent's ``sys.path`` travels with it), so it holds only top-level functions.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from pynenc import Pynenc, PynencBuilder
from pynenc.call import Call
from pynenc.exceptions import InvocationStatusError
from pynenc.invocation import DistributedInvocation
from pynenc.invocation.status import InvocationStatus
from run_settings import RUN_DATABASE


def orchestrator_app(
    url: str, app_id: str | None = None, database: str = RUN_DATABASE, **config: Any
) -> Pynenc:
    """An app on ``url`` with ``MongoOrchestrator`` and ``MongoStateBackend``.

    :param str url: the Mongo URL.
    :param str | None app_id: the app id (a unique one by default).
    :param str database: the database (children must get the parent's: this run's
        database name is random per process).
    :param config: more config values (e.g. ``max_pending_seconds``).
    :return: the app (components created lazily).
    """
    builder = (
        PynencBuilder()
        .app_id(app_id or f"orch-{uuid.uuid4().hex[:8]}")
        .memory()
        .mongo_state_backend(url=url, database=database)
    )
    builder._config["orchestrator_cls"] = "MongoOrchestrator"
    builder._config.update(config)
    return builder.build()


def register_invocations(app: Pynenc, count: int) -> list[str]:
    """Register ``count`` invocations of a test task (orchestrator only); return their ids."""
    from pynenc_tests.integration.orchestrator.orchestrator_tasks import dummy_task

    dummy_task.app = app
    invocations = [DistributedInvocation.isolated(Call(dummy_task)) for _ in range(count)]
    app.orchestrator._register_new_invocations(invocations, "registrar")
    return [inv.invocation_id for inv in invocations]


LIFECYCLE = (InvocationStatus.PENDING, InvocationStatus.RUNNING, InvocationStatus.SUCCESS)


def race_transitions(
    url: str,
    database: str,
    app_id: str,
    ids: list[str],
    process_index: int,
    threads: int,
    start_at: float,
) -> list[tuple[str, str, str]]:
    """Threads of one process race every other runner for the invocations.

    Thread ``t`` of process ``p`` (global number ``g = p * threads + t``) tries the ids
    whose position ``i`` has ``i % 4 == g % 4``, in its own random order: it moves
    the invocation to PENDING and, when that succeeds, to RUNNING and SUCCESS.

    :return: ``(invocation_id, runner_id, status)`` for every transition that succeeded.
    """
    app = orchestrator_app(url, app_id, database)
    orchestrator = app.orchestrator
    done: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    def work(thread_index: int) -> None:
        number = process_index * threads + thread_index
        runner_id = f"runner-{process_index}-{thread_index}"
        mine = [inv for i, inv in enumerate(ids) if i % 4 == number % 4]
        random.Random(number).shuffle(mine)
        while time.time() < start_at:
            time.sleep(0.005)
        for inv in mine:
            for status in LIFECYCLE:
                try:
                    orchestrator._atomic_status_transition(inv, status, runner_id)
                except InvocationStatusError:
                    break
                with lock:
                    done.append((inv, runner_id, status.value))

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return done


def hold_running(
    url: str, database: str, app_id: str, inv_id: str, runner_id: str, ready: Any
) -> None:
    """Own ``inv_id`` as RUNNING and heartbeat every 0.1 s until killed."""
    app = orchestrator_app(url, app_id, database)
    orchestrator = app.orchestrator
    orchestrator.register_runner_heartbeats([runner_id])
    orchestrator._atomic_status_transition(inv_id, InvocationStatus.PENDING, runner_id)
    orchestrator._atomic_status_transition(inv_id, InvocationStatus.RUNNING, runner_id)
    ready.set()
    while True:
        orchestrator.register_runner_heartbeats([runner_id])
        time.sleep(0.1)


def sweep_running(
    url: str, database: str, app_id: str, sweeper_id: str, timeout: float, seconds: float
) -> list[float]:
    """Recover RUNNING invocations of dead runners for ``seconds``, as pynenc's recovery
    task does (RUNNING_RECOVERY, then REROUTED).

    :return: the times (epoch seconds) of this sweeper's successful recoveries.
    """
    app = orchestrator_app(url, app_id, database)
    orchestrator = app.orchestrator
    recovered: list[float] = []
    deadline = time.time() + seconds
    while time.time() < deadline:
        for inv in orchestrator._get_running_invocations_for_recovery(timeout):
            try:
                orchestrator._atomic_status_transition(
                    inv, InvocationStatus.RUNNING_RECOVERY, sweeper_id
                )
            except InvocationStatusError:
                continue
            recovered.append(time.time())
            orchestrator._atomic_status_transition(inv, InvocationStatus.REROUTED, sweeper_id)
        time.sleep(0.05)
    return recovered


def hold_atomic_service(
    url: str, database: str, app_id: str, runner_id: str, run_id: str, ready: Any
) -> None:
    """Claim the atomic service as ``runner_id`` and heartbeat every 0.1 s until killed."""
    from pynenc.orchestrator.atomic_service import AtomicServiceRun

    app = orchestrator_app(url, app_id, database)
    orchestrator = app.orchestrator
    orchestrator.register_runner_heartbeats([runner_id], can_run_atomic_service=True)
    run = AtomicServiceRun(runner_id=runner_id, atomic_service_run_id=run_id)
    if not orchestrator.record_atomic_service_execution_start(run, datetime.now(UTC)):
        raise RuntimeError("the holder could not claim the atomic service")
    ready.set()
    while True:
        orchestrator.register_runner_heartbeats([runner_id], can_run_atomic_service=True)
        time.sleep(0.1)
