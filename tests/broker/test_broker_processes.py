"""MongoBroker and MongoClientDataStore shared by real OS processes (spawned) over
a server: the local wire test server, or ``PYNENC_MONGO_TEST_URL``.

The runner-death tests run the whole queue path on MongoDB: ``MongoOrchestrator``
(whose pending recovery also routes again invocations whose message was lost),
``MongoBroker``, client data store and state backend. The recovery step is what
pynenc's ``recover_pending_invocations`` core task does, run here directly instead
of waiting for its cron (minutes).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import broker_workers
from pynenc.invocation.status import InvocationStatus
from pynenc.runner.runner_context import RunnerContext
from run_settings import RUN_DATABASE

from pynenc_mongo.schema.client_data_store import CLIENT_DATA
from pynenc_mongo.schema.state import VALUE_PIECES

SPAWN = multiprocessing.get_context("spawn")
#: Invocations and claimers of the claim test. The wire test server (mongoeco) scans
#: the whole queue on every claim (about 70 ms per claim with 1,000 queued), so on it
#: the test routes :data:`ROUTED_ON_EMULATOR`; a real server gets the full 2,000.
ROUTED = 2_000
ROUTED_ON_EMULATOR = 400
PROCESSES = 4
THREADS = 8


def is_emulator(app: Any) -> bool:
    """True when the server is the mongoeco wire test server (``buildInfo``)."""
    info = app.broker.store.database.client.admin.command("buildInfo")
    return bool(info.get("gitVersion") == "mongoeco")


def _start(target: Any, *args: Any) -> Any:
    process = SPAWN.Process(target=target, args=args, daemon=True)
    process.start()
    return process


def _join_all(processes: list[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.1, deadline - time.monotonic()))
    alive = [p for p in processes if p.is_alive()]
    for process in alive:
        process.kill()
    assert not alive, f"{len(alive)} worker process(es) still running after {timeout} s"
    assert [p.exitcode for p in processes] == [0] * len(processes)


def test_processes_claim_each_invocation_exactly_once(server_url: str, tmp_path: Path) -> None:
    """4 processes x 8 threads drain 2,000 routed ids (400 on the emulator): each is
    returned exactly once, and no claimer sees the queue empty while entries remain."""
    app_id = f"claim-{uuid.uuid4().hex[:8]}"
    app = broker_workers.make_app(server_url, RUN_DATABASE, app_id)
    total = ROUTED_ON_EMULATOR if is_emulator(app) else ROUTED
    routed = [f"inv-{n:05d}" for n in range(total)]
    for batch, priority in zip(range(4), (0.0, 10.0, -5.0, 50.0), strict=True):
        app.broker._route_invocations(routed[batch::4], "default", priority)
    assert app.broker.count_invocations() == total
    start = SPAWN.Event()
    outs = [tmp_path / f"claims-{n}.json" for n in range(PROCESSES)]
    processes = [
        _start(broker_workers.claimer, server_url, RUN_DATABASE, app_id, THREADS, start, str(out))
        for out in outs
    ]
    time.sleep(3)  # let every child import pynenc and connect
    start.set()
    _join_all(processes, 120)
    claims: list[list[Any]] = []
    empties: list[list[Any]] = []
    for out in outs:
        data = json.loads(out.read_text())
        claims += data["claims"]
        empties += data["empties"]
    got = Counter(claim[2] for claim in claims)
    assert sorted(got) == sorted(routed)
    assert max(got.values()) == 1
    assert len(empties) == PROCESSES * THREADS
    # The queue only shrinks: a claim that began after some claimer's "empty"
    # returned would prove that "empty" false; and the count right after is 0.
    last_claim_start = max(claim[0] for claim in claims)
    first_empty_end = min(empty[1] for empty in empties)
    assert last_claim_start <= first_empty_end
    assert {empty[2] for empty in empties} == {0}
    app.broker.purge()


def _pending_recovery(app: Any) -> set[str]:
    """The ids pynenc's recovery moves to PENDING_RECOVERY (the Mongo orchestrator
    routes unqueued ones again inside ``get_pending_invocations_for_recovery``)."""
    return _run_recovery(app)


def _run_recovery(app: Any) -> set[str]:
    """What pynenc's ``recover_pending_invocations`` core task does, run once now."""
    ctx = RunnerContext.from_runner(app.runner)
    ids = set(app.orchestrator.get_pending_invocations_for_recovery())
    for invocation_id in ids:
        app.orchestrator.set_invocation_status(
            invocation_id, InvocationStatus.PENDING_RECOVERY, ctx
        )
    app.orchestrator.reroute_invocations(ids, ctx)
    return {str(i) for i in ids}


def _killed_runner_case(server_url: str, tmp_path: Path, when: str) -> None:
    app_id = f"kill-{uuid.uuid4().hex[:8]}"
    sqlite_path = broker_workers.MONGO_ORCHESTRATOR
    ledger = tmp_path / "ledger.txt"
    ledger.touch()
    config = {"max_pending_seconds": 1.0}
    app = broker_workers.make_app(server_url, RUN_DATABASE, app_id, sqlite_path, **config)
    task = broker_workers.bind(app, broker_workers.record)
    invocation = task(str(ledger), "payload")
    dying = _start(
        broker_workers.pick_up_and_die, server_url, RUN_DATABASE, app_id, sqlite_path, when
    )
    dying.join(60)
    assert dying.exitcode == -9, f"the runner should have been killed, exit code {dying.exitcode}"
    assert app.broker.count_invocations() == 0  # the message was taken
    time.sleep(1.5)  # past max_pending_seconds
    recovered = _pending_recovery(app)
    if when == "after_pending":  # pynenc's own recovery of a PENDING invocation
        assert recovered == {str(invocation.invocation_id)}
    else:  # still REGISTERED: routed again by the orchestrator, status unchanged
        assert recovered == set()
        status = app.orchestrator.get_invocation_status(invocation.invocation_id)
        assert status == InvocationStatus.REGISTERED
    assert app.broker.count_invocations() == 1  # routed again, once
    assert _pending_recovery(app) == set()  # the message is there: no second route
    assert app.broker.count_invocations() == 1
    runners = [
        _start(broker_workers.run_runner, server_url, RUN_DATABASE, app_id, sqlite_path)
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            status = app.orchestrator.get_invocation_status(invocation.invocation_id)
            if status.is_final():
                break
            time.sleep(0.2)
        time.sleep(1.0)  # a second run, if any, would land in the ledger now
    finally:
        for runner in runners:
            runner.kill()
            runner.join(10)
    lines = ledger.read_text().splitlines()
    assert status == InvocationStatus.SUCCESS
    assert len(lines) == 1, lines
    assert _pending_recovery(app) == set()
    assert app.broker.count_invocations() == 0
    app.broker.purge()
    app.client_data_store.purge()


def test_runner_killed_after_pending_runs_exactly_once(server_url: str, tmp_path: Path) -> None:
    """A runner killed right after the PENDING transition (the status change that
    proves ownership): pending recovery re-routes, another runner runs it once."""
    _killed_runner_case(server_url, tmp_path, "after_pending")


def test_runner_killed_right_after_retrieve_runs_exactly_once(
    server_url: str, tmp_path: Path
) -> None:
    """A runner killed right after ``retrieve_invocation`` returns, before any status
    change: the invocation stays REGISTERED with no message; the orchestrator's
    pending recovery routes it again once, and two racing runners run it once."""
    _killed_runner_case(server_url, tmp_path, "after_retrieve")


def test_40_mb_argument_passes_between_worker_processes(server_url: str, tmp_path: Path) -> None:
    """One process calls a task with a 40 MB argument, another runs it: the runner
    sees the argument byte-identical (through MongoClientDataStore's pieces)."""
    size = 40 * 1024 * 1024
    app_id = f"large-{uuid.uuid4().hex[:8]}"
    sqlite_path = str(tmp_path / "orchestrator.sqlite")
    ledger = tmp_path / "ledger.txt"
    ledger.touch()
    out = tmp_path / "invocation_id"
    producer = _start(
        broker_workers.produce,
        server_url,
        RUN_DATABASE,
        app_id,
        sqlite_path,
        str(ledger),
        size,
        str(out),
    )
    _join_all([producer], 120)
    runner = _start(broker_workers.run_runner, server_url, RUN_DATABASE, app_id, sqlite_path)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not ledger.read_text():
            time.sleep(0.2)
    finally:
        runner.kill()
        runner.join(10)
    expected = hashlib.sha256(broker_workers.payload_of(size).encode()).hexdigest()
    lines = ledger.read_text().splitlines()
    assert len(lines) == 1, lines
    pid, digest, length = lines[0].split()
    assert (digest, int(length)) == (expected, size)
    assert int(pid) not in (producer.pid,)
    app = broker_workers.make_app(server_url, RUN_DATABASE, app_id, sqlite_path)
    stored = app.client_data_store.store.collection(CLIENT_DATA)
    doc = stored.find_one({"app_id": app_id})
    assert doc is not None and isinstance(doc["value"], dict)  # stored as pieces
    app.client_data_store.purge()
    app.state_backend.purge()


def test_two_processes_store_the_same_large_key_at_once(server_url: str, tmp_path: Path) -> None:
    """Two processes store the same 20 MB value under its key at the same moment:
    no error, one document, one value's pieces, and the value reads back whole."""
    size = 20 * 1024 * 1024
    app_id = f"same-{uuid.uuid4().hex[:8]}"
    start = SPAWN.Event()
    outs = [tmp_path / f"store-{n}.txt" for n in range(2)]
    processes = [
        _start(broker_workers.store_same_key, server_url, RUN_DATABASE, app_id, size, start, str(o))
        for o in outs
    ]
    time.sleep(3)
    start.set()
    _join_all(processes, 120)
    assert [o.read_text() for o in outs] == ["ok", "ok"]
    app = broker_workers.make_app(server_url, RUN_DATABASE, app_id)
    cds = app.client_data_store
    docs = list(cds.store.collection(CLIENT_DATA).find({"app_id": app_id}))
    assert len(docs) == 1
    ref = docs[0]["value"]
    pieces = list(cds.store.collection(VALUE_PIECES).find({"app_id": app_id}, {"data": 0}))
    assert {p["value_id"] for p in pieces} == {ref["value_id"]}
    assert len(pieces) == ref["pieces"]
    value = broker_workers.payload_of(size, seed=11)
    key = "__pynenc__client_data__:" + hashlib.sha256(value.encode()).hexdigest()
    assert cds._retrieve(key) == value
    cds.purge()
