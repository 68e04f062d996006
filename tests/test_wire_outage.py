"""Outages on the wire test server: a frozen server (SIGSTOP/SIGCONT, the shape of a
primary election as clients see it) is ridden through within
``mongo_outage_tolerance_seconds``, and past it callers get a clear error.

Every test here pauses a wire server of its own (module fixture), so the pauses
never disturb other tests. Against a real server (real mode) nothing can be paused:
these tests need the local wire server and start it themselves.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
import uuid
from collections.abc import Generator
from typing import Any

import pymongo
import pytest
from wire_support import (
    WireServer,
    WireServerUnavailable,
    history_through_pause,
    start_wire_server,
)

from pynenc_mongo import schema
from pynenc_mongo.errors import MongoUnavailableError

pytestmark = pytest.mark.wire

PAUSE_SECONDS = 15.0
#: "Work resumes within 2 s of the resume" (issue #11).
RESUME_WITHIN_SECONDS = 2.0


@pytest.fixture(scope="module")
def own_server() -> Generator[WireServer, None, None]:
    """A wire server for this module only (it gets paused)."""
    try:
        server = start_wire_server()
    except WireServerUnavailable as exc:
        pytest.skip(f"wire test server unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()


def triple(x: int) -> int:
    """A task function (bound to the test's app with ``app.task``)."""
    time.sleep(0.05)
    return 3 * x


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_history_burst_rides_through_a_15s_pause(own_server: WireServer, mode: str) -> None:
    outcome = history_through_pause(own_server, mode, PAUSE_SECONDS, records=300)
    assert outcome.errors == []
    assert (outcome.lost, outcome.duplicated, outcome.reported) == (0, 0, 0), outcome
    assert outcome.stored == outcome.expected == 300
    assert outcome.resume_seconds is not None
    assert outcome.resume_seconds < RESUME_WITHIN_SECONDS, outcome


def test_thread_runner_workload_rides_through_a_15s_pause(own_server: WireServer) -> None:
    from pynenc import PynencBuilder
    from pynenc.invocation.status import InvocationStatus

    database = f"outage_{uuid.uuid4().hex[:8]}"
    app = (
        PynencBuilder()
        .app_id(f"outage-runner-{uuid.uuid4().hex[:6]}")
        .memory()
        .thread_runner()
        .mongo(url=own_server.url, database=database)
        .custom_config(runner_loop_sleep_time_sec=0.01, invocation_wait_results_sleep_time_sec=0.02)
        .build()
    )
    task = app.task(triple)
    runner = threading.Thread(target=app.runner.run, daemon=True)
    runner.start()
    try:
        assert task(0).result == 0  # warm-up: the runner is up
        invocations = [task(i) for i in range(40)]
        finished: dict[int, float] = {}
        with concurrent.futures.ThreadPoolExecutor(8) as pool:

            def wait(i: int, inv: Any) -> int:
                value: int = inv.result
                finished[i] = time.monotonic()
                return value

            futures = [pool.submit(wait, i, inv) for i, inv in enumerate(invocations)]
            while len(finished) < 5:
                time.sleep(0.01)
            own_server.pause()
            time.sleep(PAUSE_SECONDS)
            done_before = len(finished)
            own_server.resume()
            resumed = time.monotonic()
            results = [f.result(timeout=120) for f in futures]
    finally:
        if own_server.paused:
            own_server.resume()
        app.runner.stop_runner_loop()
        runner.join(timeout=30)
    assert results == [3 * i for i in range(40)]
    assert done_before < 40, "the pause came too late to test anything"
    after = sorted(t - resumed for t in finished.values() if t >= resumed)
    assert after and after[0] < RESUME_WITHIN_SECONDS, after[:3]
    backend: Any = app.state_backend
    for inv in invocations:
        history = backend.get_history(inv.invocation_id)
        statuses = [h.status_record.status for h in history]
        assert statuses[-1] == InvocationStatus.SUCCESS, statuses
        assert InvocationStatus.FAILED not in statuses
        keys = [(h.status_record.status, h.timestamp) for h in history]
        assert len(set(keys)) == len(keys), f"duplicated history: {statuses}"
    backend.purge()
    backend.close()


def test_a_pause_past_the_tolerance_fails_clearly_and_half_writes_nothing(
    own_server: WireServer,
) -> None:
    """Tolerance 2 s, pause 6 s: the caller gets MongoUnavailableError naming the host
    and how long it waited; afterwards every history record belongs to a stored
    invocation and every value piece to a stored pointer."""
    from pynenc import PynencBuilder

    database = f"outage_{uuid.uuid4().hex[:8]}"
    app = (
        PynencBuilder()
        .app_id(f"outage-past-{uuid.uuid4().hex[:6]}")
        .memory()
        .mongo(url=own_server.url, database=database, outage_tolerance_seconds=2)
        .build()
    )
    task = app.task(triple)
    backend: Any = app.state_backend
    first = task(1)  # an invocation, registered before the pause
    backend.wait_for_all_async_operations()
    big = "".join(chr(0x41 + (i * 11) % 26) for i in range(1_500_000))  # pieces
    own_server.pause()
    started = time.monotonic()
    try:
        with pytest.raises(MongoUnavailableError) as info:
            backend._set_result(first.invocation_id, big)
        waited = time.monotonic() - started
    finally:
        time.sleep(max(0.0, 6.0 - (time.monotonic() - started)))
        own_server.resume()
    message = str(info.value)
    host = own_server.url.split("//")[1].split("/")[0]
    assert host in message and "mongo_outage_tolerance_seconds" in message, message
    assert 2.0 <= waited < 5.0, waited
    # The server is back: the same backend works again, and nothing is half-written.
    backend._set_result(first.invocation_id, '"done"')
    assert backend._get_result(first.invocation_id) == '"done"'
    time.sleep(0.5)  # requests the server took from its socket buffers have landed
    raw: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(own_server.url)
    db = raw[database]
    app_q = {schema.F_APP: app.app_id}
    stored = {d[schema.F_INV] for d in db[backend.collection_name(schema.INVOCATIONS)].find(app_q)}
    in_history = {d[schema.F_INV] for d in db[backend.collection_name(schema.HISTORY)].find(app_q)}
    assert in_history <= stored, f"history without its invocation: {in_history - stored}"
    pointers = {
        str(v)
        for logical in (schema.RESULTS, schema.INVOCATIONS)
        for doc in db[backend.collection_name(logical)].find(app_q)
        for v in _value_ids(doc)
    }
    pieces = {d["value_id"] for d in db[backend.collection_name(schema.VALUE_PIECES)].find(app_q)}
    assert pieces <= pointers, f"pieces without their pointer: {len(pieces - pointers)}"
    raw.drop_database(database)
    raw.close()


def _value_ids(doc: Any) -> list[Any]:
    """Every ``value_id`` referenced anywhere in ``doc``."""
    if isinstance(doc, dict):
        found = [doc["value_id"]] if "value_id" in doc else []
        for value in doc.values():
            found += _value_ids(value)
        return found
    if isinstance(doc, list):
        return [v for item in doc for v in _value_ids(item)]
    return []
