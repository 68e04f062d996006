"""MongoOrchestrator across real OS processes over a shared server (the wire server,
or ``PYNENC_MONGO_TEST_URL``): transition races, a SIGKILLed runner, a SIGKILLed
atomic-service holder, and a paused server.

Processes are started with ``multiprocessing``'s ``spawn`` (no state shared with the
parent); the code they run is in ``orch_workers.py``.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from orch_workers import (
    LIFECYCLE,
    hold_atomic_service,
    hold_running,
    orchestrator_app,
    race_transitions,
    register_invocations,
    sweep_running,
)
from pynenc.invocation.status import InvocationStatus
from pynenc.orchestrator.base_orchestrator import BaseOrchestrator
from run_settings import RUN_DATABASE
from wire_support import WireServerUnavailable, start_wire_server

from pynenc_mongo import client as client_mod
from pynenc_mongo.schema import orchestrator as s

SPAWN = multiprocessing.get_context("spawn")
#: Invocations raced by 4 x 8 threads (see the race test's docstring).
RACE_INVOCATIONS = 160
#: Heartbeat timeout of these tests: runner_considered_dead_after_minutes = 0.025 (1.5 s).
DEAD_MINUTES = 0.025
DEAD_SECONDS = DEAD_MINUTES * 60


def raw_invocations(url: str, app_id: str) -> dict[str, dict[str, Any]]:
    """The stored status records of ``app_id``, by invocation id (test-side read)."""
    db = client_mod.get_client(url, RUN_DATABASE, 10.0)[RUN_DATABASE]
    collection = db[f"pynenc_{s.INVOCATIONS}"]
    return {doc[s.F_INV]: doc for doc in collection.find({"app_id": app_id})}


def test_processes_race_transitions_one_owner_each(server_url: str) -> None:
    """4 processes x 8 threads race PENDING -> RUNNING -> SUCCESS on 160 invocations.

    (Sized down from 500: the wire server emulator answers one operation at a time in
    about 2-3 ms, and 500 invocations took 110 s on this 2-core machine.)

    Each invocation is tried by 8 threads (2 in each process). Exactly one runner
    wins PENDING for each, the same runner then writes RUNNING and SUCCESS, and the
    record's version shows exactly three transitions (none applied twice, none
    backwards: a status is written only from an allowed from-status).
    """
    app = orchestrator_app(server_url)
    ids = register_invocations(app, RACE_INVOCATIONS)
    start_at = time.time() + 2.0
    with ProcessPoolExecutor(4, mp_context=SPAWN) as pool:
        futures = [
            pool.submit(race_transitions, server_url, RUN_DATABASE, app.app_id, ids, p, 8, start_at)
            for p in range(4)
        ]
        done = [row for future in futures for row in future.result(timeout=240)]
    by_inv: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for inv, runner, status in done:
        by_inv[inv].append((runner, status))
    stored = raw_invocations(server_url, app.app_id)
    assert set(by_inv) == set(ids)
    for inv in ids:
        writes = by_inv[inv]
        assert [status for _runner, status in writes] == [st.value for st in LIFECYCLE], writes
        assert len({runner for runner, _status in writes}) == 1, writes
        doc = stored[inv]
        assert doc[s.F_STATUS] == InvocationStatus.SUCCESS.value
        assert doc[s.F_VERSION] == 3
    app.orchestrator.purge()


def test_sigkilled_runner_recovered_once_after_heartbeat_timeout(server_url: str) -> None:
    """A runner process owning a RUNNING invocation is SIGKILLed; three sweeper
    processes recover it exactly once, and only after the heartbeat timeout."""
    config = {"runner_considered_dead_after_minutes": DEAD_MINUTES}
    app = orchestrator_app(server_url, **config)
    (inv,) = register_invocations(app, 1)
    ready = SPAWN.Event()
    victim = SPAWN.Process(
        target=hold_running,
        args=(server_url, RUN_DATABASE, app.app_id, inv, "victim", ready),
        daemon=True,
    )
    victim.start()
    assert ready.wait(60), "the runner process did not start"
    time.sleep(0.5)
    assert list(app.orchestrator._get_running_invocations_for_recovery(DEAD_SECONDS)) == []
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    heartbeat = app.orchestrator.get_active_runners()[0].last_heartbeat
    with ProcessPoolExecutor(3, mp_context=SPAWN) as pool:
        futures = [
            pool.submit(
                sweep_running,
                server_url,
                RUN_DATABASE,
                app.app_id,
                f"sweeper-{i}",
                DEAD_SECONDS,
                8.0,
            )
            for i in range(3)
        ]
        recoveries = [t for future in futures for t in future.result(timeout=120)]
    assert len(recoveries) == 1, recoveries
    assert recoveries[0] >= heartbeat.timestamp() + DEAD_SECONDS
    assert app.orchestrator.get_invocation_status(inv) == InvocationStatus.REROUTED
    assert raw_invocations(server_url, app.app_id)[inv][s.F_VERSION] == 4
    app.orchestrator.purge()


@pytest.mark.skipif(
    not hasattr(BaseOrchestrator, "record_atomic_service_execution_start"),
    reason="pynenc 0.2.3 has no atomic-service storage gate",
)
def test_sigkilled_atomic_service_holder_is_taken_over(server_url: str) -> None:
    """The process holding the atomic service is SIGKILLed: while its heartbeat is
    fresh every other start is BLOCKED; once it is stale another runner takes the
    service over, well within the lease (the service interval, 60 s here)."""
    from pynenc.orchestrator.atomic_service import AtomicServiceExecutionStatus, AtomicServiceRun

    config = {
        "runner_considered_dead_after_minutes": DEAD_MINUTES,
        "atomic_service_interval_minutes": 1.0,
    }
    app = orchestrator_app(server_url, **config)
    orchestrator = app.orchestrator
    ready = SPAWN.Event()
    holder = SPAWN.Process(
        target=hold_atomic_service,
        args=(server_url, RUN_DATABASE, app.app_id, "holder", "held-run", ready),
        daemon=True,
    )
    holder.start()
    assert ready.wait(60), "the holder process did not start"
    orchestrator.register_runner_heartbeats(["taker"], can_run_atomic_service=True)
    blocked = AtomicServiceRun(runner_id="taker", atomic_service_run_id="early-run")
    assert not orchestrator.record_atomic_service_execution_start(blocked, None)
    assert holder.pid is not None
    os.kill(holder.pid, signal.SIGKILL)
    killed_at = time.time()
    holder.join(10)
    taken_at = None
    attempt = 0
    while time.time() < killed_at + 30:
        attempt += 1
        orchestrator.register_runner_heartbeats(["taker"], can_run_atomic_service=True)
        run = AtomicServiceRun(runner_id="taker", atomic_service_run_id=f"take-{attempt}")
        if orchestrator.record_atomic_service_execution_start(run, None):
            taken_at = time.time()
            break
        time.sleep(0.1)
    assert taken_at is not None, "the atomic service was never taken over"
    assert taken_at - killed_at < 60.0
    active = orchestrator.get_active_atomic_service_executions()
    assert [e.runner_id for e in active] == ["taker"]
    window = orchestrator.get_atomic_service_executions_in_timerange(
        datetime.fromtimestamp(killed_at - 120, UTC), datetime.now(UTC)
    )
    held = [e for e in window if e.atomic_service_run_id == "held-run"]
    assert held[0].status == AtomicServiceExecutionStatus.ABANDONED
    assert held[0].reason.startswith("lease_expired: runner holder")
    early = [e for e in window if e.atomic_service_run_id == "early-run"]
    assert early[0].status == AtomicServiceExecutionStatus.BLOCKED
    assert early[0].reason == "prior_running:held-run runner:holder"
    orchestrator.purge()


def test_paused_server_transitions_wait_and_apply_once() -> None:
    """The server is frozen (SIGSTOP) while two threads drive transitions; they wait,
    continue after SIGCONT, and every invocation ends SUCCESS with exactly three
    transitions applied (none lost, none twice)."""
    try:
        server = start_wire_server()
    except WireServerUnavailable as exc:
        pytest.skip(f"wire test server unavailable: {exc}")
    try:
        app = orchestrator_app(server.url, mongo_server_selection_timeout_seconds=20.0)
        ids = register_invocations(app, 40)
        progress: Counter[str] = Counter()
        errors: list[BaseException] = []

        def drive(chunk: list[str], runner_id: str) -> None:
            try:
                for inv in chunk:
                    for status in LIFECYCLE:
                        app.orchestrator._atomic_status_transition(inv, status, runner_id)
                    progress["done"] += 1
                    time.sleep(0.05)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [
            threading.Thread(target=drive, args=(ids[i::2], f"runner-{i}")) for i in range(2)
        ]
        for thread in threads:
            thread.start()
        while progress["done"] < 8:
            time.sleep(0.01)
        server.pause()
        time.sleep(0.5)
        frozen_at = progress["done"]
        time.sleep(2.0)
        assert progress["done"] <= frozen_at + 2  # nothing completes while frozen
        server.resume()
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        stored = raw_invocations(server.url, app.app_id)
        assert {doc[s.F_STATUS] for doc in stored.values()} == {InvocationStatus.SUCCESS.value}
        assert sorted(doc[s.F_VERSION] for doc in stored.values()) == [3] * len(ids)
        # Writes the invocations it still defers while the server is up (else the
        # process's exit would wait out the tolerance on a stopped server).
        app.state_backend.close()
    finally:
        server.stop()
