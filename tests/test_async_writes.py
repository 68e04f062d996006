"""Asynchronous history writes tracked per invocation, the wait methods, the async API."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pymongo.errors import AutoReconnect, NetworkTimeout, OperationFailure
from pynenc import Pynenc
from pynenc.invocation.status import InvocationStatus, InvocationStatusRecord
from pynenc.runner.runner_context import RunnerContext

from pynenc_mongo import aio, async_writes, schema
from pynenc_mongo.async_writes import (
    AsyncHistoryWriter,
    SyncHistoryWriter,
    _mongo_insert,
    pynenc_writes_history_async,
)
from pynenc_mongo.errors import AsyncOperationError
from pynenc_mongo.monitoring import count_operations

CTX = RunnerContext(runner_cls="TestRunner", runner_id="runner-async-tests")
SEQUENCE = [InvocationStatus.REGISTERED, InvocationStatus.PENDING, InvocationStatus.RUNNING]


def _record(status: InvocationStatus) -> InvocationStatusRecord:
    return InvocationStatusRecord(status=status, runner_id=CTX.runner_id)


def _backend(app: Pynenc) -> Any:
    return app.state_backend


def _all_history(backend: Any) -> dict[str, list[dict[str, Any]]]:
    docs = backend.collection(schema.HISTORY).find({schema.F_APP: backend.app_id})
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for doc in docs:
        grouped[doc[schema.F_INV]].append(doc)
    for entries in grouped.values():
        entries.sort(key=lambda d: (d[schema.F_TS_US], d["_id"]))
    return grouped


def _install_writer(backend: Any, insert: Any = None) -> AsyncHistoryWriter:
    writer = AsyncHistoryWriter(backend, insert=insert)
    backend._writer = writer
    return writer


def _real_insert(backend: Any) -> Any:
    conf = backend.conf
    return _mongo_insert(
        conf.mongo_url,
        backend.database_name,
        conf.mongo_async_driver,
        conf.mongo_server_selection_timeout_seconds,
        backend.collection_name(schema.HISTORY),
    )


def test_mode_auto_follows_installed_pynenc(make_app: Callable[..., Pynenc]) -> None:
    backend = _backend(make_app())
    expected = AsyncHistoryWriter if pynenc_writes_history_async() else SyncHistoryWriter
    assert isinstance(backend.history_writer, expected)
    assert isinstance(
        _backend(make_app(history_write_mode="sync")).history_writer, SyncHistoryWriter
    )
    assert isinstance(
        _backend(make_app(history_write_mode="async")).history_writer, AsyncHistoryWriter
    )


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_wait_methods_work_in_both_modes(make_app: Callable[..., Pynenc], mode: str) -> None:
    backend = _backend(make_app(history_write_mode=mode))
    for status in SEQUENCE:
        backend.add_history("inv-1", _record(status), CTX)
    backend.wait_for_invocation_async_operations("inv-1")
    backend.wait_for_all_async_operations()
    assert [h.status_record.status for h in backend.get_history("inv-1")] == SEQUENCE


@pytest.mark.slow
@pytest.mark.wire_gap(
    "the emulator serves every client on one event loop: this load stalls it past the "
    "30 s outage tolerance, which no real server does"
)
def test_sixteen_threads_every_record_once_in_order(make_app: Callable[..., Pynenc]) -> None:
    """16 threads x 500 invocations x 3 records: all present exactly once, in order."""
    backend = _backend(make_app(history_write_mode="async"))
    threads_n, per_thread = 16, 500
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(per_thread):
                for status in SEQUENCE:
                    backend.add_history(f"t{t}-inv{i}", _record(status), CTX)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    backend.wait_for_all_async_operations()
    grouped = _all_history(backend)
    assert len(grouped) == threads_n * per_thread
    for inv_id, entries in grouped.items():
        assert [e["status"] for e in entries] == [s.value for s in SEQUENCE], inv_id
        assert len({e["_id"] for e in entries}) == len(SEQUENCE)
    # and through the public API, for a sample
    for inv_id in ("t0-inv0", "t15-inv499", "t7-inv250"):
        assert [h.status_record.status for h in backend.get_history(inv_id)] == SEQUENCE


@pytest.mark.wire_gap(
    "the emulator serves every client on one event loop: this load stalls it past the "
    "30 s outage tolerance, which no real server does"
)
def test_transient_failures_are_retried(make_app: Callable[..., Pynenc]) -> None:
    backend = _backend(make_app(history_write_mode="async"))
    real = _real_insert(backend)
    failures = {"left": 3}

    async def flaky(docs: list[dict[str, Any]]) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise (AutoReconnect if failures["left"] % 2 else NetworkTimeout)("connection lost")
        await real(docs)

    _install_writer(backend, flaky)
    for status in SEQUENCE:
        backend.add_history("inv-retry", _record(status), CTX)
    backend.wait_for_invocation_async_operations("inv-retry")
    assert failures["left"] == 0
    assert [h.status_record.status for h in backend.get_history("inv-retry")] == SEQUENCE
    assert len(_all_history(backend)["inv-retry"]) == len(SEQUENCE)


def test_permanent_failure_is_raised_from_wait_naming_the_invocation(
    make_app: Callable[..., Pynenc], caplog: pytest.LogCaptureFixture
) -> None:
    backend = _backend(make_app(history_write_mode="async"))
    real = _real_insert(backend)

    async def refuse_doomed(docs: list[dict[str, Any]]) -> None:
        if any(d[schema.F_INV] == "inv-doomed" for d in docs):
            raise OperationFailure("not authorized on db to execute insert", code=13)
        await real(docs)

    _install_writer(backend, refuse_doomed)
    with caplog.at_level(logging.ERROR, logger="pynenc_mongo"):
        backend.add_history("inv-doomed", _record(InvocationStatus.REGISTERED), CTX)
        with pytest.raises(AsyncOperationError, match="inv-doomed.*not authorized") as info:
            backend.wait_for_invocation_async_operations("inv-doomed")
    assert info.value.invocation_id == "inv-doomed"
    assert "inv-doomed" in caplog.text
    backend.wait_for_invocation_async_operations("inv-doomed")  # raised once, then clear
    backend.add_history("inv-fine", _record(InvocationStatus.REGISTERED), CTX)
    backend.wait_for_all_async_operations()
    assert [h.status_record.status for h in backend.get_history("inv-fine")] == [
        InvocationStatus.REGISTERED
    ]


def test_permanent_failure_is_raised_from_wait_all(make_app: Callable[..., Pynenc]) -> None:
    backend = _backend(make_app(history_write_mode="async"))

    async def refuse(docs: list[dict[str, Any]]) -> None:
        raise OperationFailure("document failed validation", code=121)

    _install_writer(backend, refuse)
    backend.add_history("inv-x", _record(InvocationStatus.REGISTERED), CTX)
    with pytest.raises(AsyncOperationError, match="inv-x"):
        backend.wait_for_all_async_operations()


def test_wait_on_invocation_with_nothing_pending_returns_at_once(
    make_app: Callable[..., Pynenc],
) -> None:
    """Even while another invocation's write is stuck, waiting on an idle one returns."""
    backend = _backend(make_app(history_write_mode="async"))
    release = threading.Event()

    async def stuck(docs: list[dict[str, Any]]) -> None:
        await asyncio.get_running_loop().run_in_executor(None, release.wait)

    writer = _install_writer(backend, stuck)
    backend.add_history("inv-stuck", _record(InvocationStatus.REGISTERED), CTX)
    done = threading.Event()

    def wait_idle() -> None:
        backend.wait_for_invocation_async_operations("inv-idle")
        done.set()

    waiter = threading.Thread(target=wait_idle)
    waiter.start()
    assert done.wait(5), "wait on an idle invocation blocked"
    stuck_waiter = threading.Thread(
        target=backend.wait_for_invocation_async_operations, args=("inv-stuck",)
    )
    stuck_waiter.start()
    stuck_waiter.join(0.3)
    assert stuck_waiter.is_alive(), "wait on a pending invocation must block"
    release.set()
    stuck_waiter.join(5)
    assert not stuck_waiter.is_alive()
    assert writer.tracked_invocations() == 0


def test_wait_covers_only_operations_issued_before_it(make_app: Callable[..., Pynenc]) -> None:
    backend = _backend(make_app(history_write_mode="async"))
    real = _real_insert(backend)
    gate = threading.Event()
    calls: list[int] = []

    async def gated(docs: list[dict[str, Any]]) -> None:
        calls.append(len(docs))
        if len(calls) == 2:  # the second batch (issued after the wait began) is held
            await asyncio.get_running_loop().run_in_executor(None, gate.wait)
        await real(docs)

    _install_writer(backend, gated)
    backend.add_history("inv-a", _record(InvocationStatus.REGISTERED), CTX)
    backend.wait_for_invocation_async_operations("inv-a")
    backend.add_history("inv-b", _record(InvocationStatus.REGISTERED), CTX)
    time.sleep(0.05)
    backend.wait_for_invocation_async_operations("inv-a")  # inv-b's held batch is not waited on
    gate.set()
    backend.wait_for_all_async_operations()
    assert set(_all_history(backend)) == {"inv-a", "inv-b"}


def test_backpressure_blocks_callers_past_the_cap(make_app: Callable[..., Pynenc]) -> None:
    backend = _backend(make_app(history_write_mode="async", max_pending_writes=10))
    real = _real_insert(backend)
    release = threading.Event()

    async def slow(docs: list[dict[str, Any]]) -> None:
        await asyncio.get_running_loop().run_in_executor(None, release.wait)
        await real(docs)

    writer = _install_writer(backend, slow)
    for i in range(10):
        backend.add_history(f"inv-{i}", _record(InvocationStatus.REGISTERED), CTX)
    blocked = threading.Thread(
        target=backend.add_history,
        args=("inv-over", _record(InvocationStatus.REGISTERED), CTX),
    )
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive(), "the 11th record must wait for the backlog to drain"
    assert writer._in_flight == 10
    release.set()
    blocked.join(5)
    assert not blocked.is_alive()
    backend.wait_for_all_async_operations()
    assert len(_all_history(backend)) == 11


def test_pending_records_are_written_together(
    make_app: Callable[..., Pynenc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,000 records pending at once: two insert_many (the first, held, then the rest).

    Without the linger (tested below), so the first batch is the first record alone.
    """
    monkeypatch.setattr(async_writes, "LINGER_SECONDS", 0.0)
    backend = _backend(make_app(history_write_mode="async"))
    real = _real_insert(backend)
    gate = threading.Event()
    first = {"seen": False}

    async def hold_first(docs: list[dict[str, Any]]) -> None:
        if not first["seen"]:
            first["seen"] = True
            await asyncio.get_running_loop().run_in_executor(None, gate.wait)
        await real(docs)

    _install_writer(backend, hold_first)
    with count_operations() as ops:
        for i in range(1_000):
            backend.add_history(f"inv-{i}", _record(InvocationStatus.REGISTERED), CTX)
        gate.set()
        backend.wait_for_all_async_operations()
    assert ops.counts["insert"] == 2
    assert len(_all_history(backend)) == 1_000


def test_records_arriving_within_the_linger_share_one_insert(
    make_app: Callable[..., Pynenc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records submitted one by one while the drain lingers go out in one insert_many."""
    monkeypatch.setattr(async_writes, "LINGER_SECONDS", 30.0)
    backend = _backend(make_app(history_write_mode="async"))
    writer = backend.history_writer
    with count_operations() as ops:
        for i in range(50):
            for status in SEQUENCE:
                backend.add_history(f"inv-{i}", _record(status), CTX)
        assert writer.pending("inv-0")  # still lingering: nothing written yet
        assert ops.counts["insert"] == 0
        # A reader cuts the linger short (well before the 30 s), and gets everything.
        assert [h.status_record.status for h in backend.get_history("inv-7")] == SEQUENCE
    assert ops.counts["insert"] == 1
    assert len(_all_history(backend)) == 50


@pytest.mark.wire_gap(
    "the emulator serves every client on one event loop: this load stalls it past the "
    "30 s outage tolerance, which no real server does"
)
def test_no_thread_per_write_and_tracking_is_bounded(make_app: Callable[..., Pynenc]) -> None:
    backend = _backend(make_app(history_write_mode="async"))
    backend.add_history("inv-first", _record(InvocationStatus.REGISTERED), CTX)
    backend.wait_for_all_async_operations()
    threads_after_first = threading.active_count()
    for i in range(10_000):
        backend.add_history(f"inv-{i}", _record(InvocationStatus.REGISTERED), CTX)
    assert threading.active_count() == threads_after_first
    backend.wait_for_all_async_operations()
    assert threading.active_count() == threads_after_first
    writer = backend.history_writer
    assert writer.tracked_invocations() == 0
    assert writer._in_flight == 0 and not writer._buffer and not writer._failures
    assert not hasattr(backend, "invocation_threads") or not backend.invocation_threads
    assert len(_all_history(backend)) == 10_001


def _child_writes(url: str, database: str, app_id: str, queue: Any) -> None:
    """Runs in a child process: write asynchronously, wait, read back."""
    from pynenc import PynencBuilder

    app = (
        PynencBuilder()
        .app_id(app_id)
        .memory()
        .mongo_state_backend(url=url, database=database, history_write_mode="async")
        .build()
    )
    backend = app.state_backend
    for status in SEQUENCE:
        backend.add_history("inv-child", _record(status), CTX)
    backend.wait_for_invocation_async_operations("inv-child")
    statuses = [h.status_record.status.value for h in backend.get_history("inv-child")]
    loop = aio.loop_thread()
    queue.put(
        {
            "statuses": statuses,
            "loop_pid": loop.pid,
            "pid": os.getpid(),
            "loop_threads": [t.name for t in threading.enumerate() if t.name == aio.THREAD_NAME],
        }
    )


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_child_process_writes_through_its_own_loop(
    make_app: Callable[..., Pynenc], mongo_url: str, method: str
) -> None:
    app = make_app(history_write_mode="async")
    backend = _backend(app)
    backend.add_history("inv-parent", _record(InvocationStatus.REGISTERED), CTX)
    backend.wait_for_all_async_operations()
    parent_loop = aio.loop_thread()
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()
    child = ctx.Process(
        target=_child_writes,
        args=(mongo_url, backend.database_name, app.app_id + "-child", queue),
    )
    child.start()
    result = queue.get(timeout=60)
    child.join(30)
    assert child.exitcode == 0
    assert result["statuses"] == [s.value for s in SEQUENCE]
    assert result["loop_pid"] == result["pid"] != os.getpid()
    assert result["loop_threads"] == [aio.THREAD_NAME]
    assert aio.loop_thread() is parent_loop  # the parent's loop is untouched


def test_pending_writes_are_flushed_at_interpreter_exit(tmp_path: Path) -> None:
    out = tmp_path / "written.jsonl"
    script = textwrap.dedent(
        f"""
        import asyncio, json
        from pynenc import PynencBuilder
        from pynenc.invocation.status import InvocationStatus, InvocationStatusRecord
        from pynenc.runner.runner_context import RunnerContext
        from pynenc_mongo.async_writes import AsyncHistoryWriter

        app = (PynencBuilder().app_id("exit-flush").memory()
               .mongo_state_backend(url="mongomock://exit-flush", history_write_mode="async")
               .build())
        backend = app.state_backend

        async def slow_insert(docs):
            await asyncio.sleep(0.2)
            with open({str(out)!r}, "a") as fh:
                for d in docs:
                    fh.write(json.dumps({{"inv": d["invocation_id"]}}) + "\\n")

        backend._writer = AsyncHistoryWriter(backend, insert=slow_insert)
        ctx = RunnerContext(runner_cls="R", runner_id="r")
        record = InvocationStatusRecord(InvocationStatus.REGISTERED)
        for i in range(50):
            backend.add_history(f"inv-{{i}}", record, ctx)
        # exit without waiting
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    lines = out.read_text().splitlines()
    assert sorted(json.loads(line)["inv"] for line in lines) == sorted(
        f"inv-{i}" for i in range(50)
    )


def test_async_api_reads(make_app: Callable[..., Pynenc]) -> None:
    from pynenc_tests.unit.state_backend.test_state_backend_all_instances import dummy_task

    app = make_app(history_write_mode="async")
    backend = _backend(app)
    dummy_task.app = app
    invocation = dummy_task()
    inv_id = invocation.invocation_id
    backend.upsert_invocations([invocation])
    backend._dto_cache.clear()  # force the async path to read MongoDB
    for status in SEQUENCE:
        backend.add_history(inv_id, _record(status), CTX)
    backend.set_result(inv_id, {"answer": 42})
    backend.set_exception(inv_id, ValueError("boom"))
    workflow = invocation.workflow
    if workflow is not None:
        backend.set_workflow_data(workflow, "a.b", [1, 2])

    async def reads() -> dict[str, Any]:
        loop_thread_id = threading.get_ident()
        history = await backend.aget_history(inv_id)  # waits for pending writes
        got = await backend.aget_invocation(inv_id)
        out = {
            "history": [h.status_record.status for h in history],
            "result": await backend.aget_result(inv_id),
            "exception": await backend.aget_exception(inv_id),
            "invocation": got.invocation_id,
            "caller_thread": loop_thread_id,
        }
        if workflow is not None:
            out["wf"] = await backend.aget_workflow_data(workflow, "a.b")
            out["wf_default"] = await backend.aget_workflow_data(workflow, "nope", "dflt")
        with pytest.raises(KeyError):
            await backend.aget_result("missing")
        return out

    got = asyncio.run(reads())
    assert got["history"][-3:] == SEQUENCE
    assert got["history"] == [h.status_record.status for h in backend.get_history(inv_id)]
    assert got["result"] == {"answer": 42}
    assert isinstance(got["exception"], ValueError) and str(got["exception"]) == "boom"
    assert got["invocation"] == inv_id
    if workflow is not None:
        assert got["wf"] == [1, 2] and got["wf_default"] == "dflt"


def test_async_api_inside_an_async_task(mongo_url: str) -> None:
    """The README's example: an ``async def`` pynenc task awaiting the backend."""
    from pynenc_mongo.demo import workload

    app = workload.build_app(app_id=f"async-task-{os.getpid()}", url=mongo_url)
    workload.add.app = app
    workload.summarize.app = app
    runner = threading.Thread(target=app.runner.run, daemon=True)
    runner.start()
    try:
        produced = workload.add(20, 22)
        assert produced.result == 42
        summary = workload.summarize(produced.invocation_id).result
    finally:
        app.runner.stop_runner_loop()
        runner.join(5)
        workload.add.app = workload.summarize.app = workload.app
        app.purge()
    assert summary.startswith(f"{produced.invocation_id[:8]} returned 42 (registered")
    assert summary.endswith("success)")


def test_async_drivers_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    from pymongo import AsyncMongoClient

    from pynenc_mongo.aio import _make_client
    from pynenc_mongo.config import MongoConfigError

    client = _make_client("mongodb://127.0.0.1:1", "pymongo", 0.1)
    assert isinstance(client, AsyncMongoClient)
    monkeypatch.setitem(sys.modules, "motor.motor_asyncio", None)
    with pytest.raises(MongoConfigError, match="mongo_async_driver.*motor"):
        _make_client("mongodb://127.0.0.1:1", "motor", 0.1)


def test_motor_driver_when_installed() -> None:
    motor_asyncio = pytest.importorskip("motor.motor_asyncio")
    from pynenc_mongo.aio import _make_client

    client = _make_client("mongodb://127.0.0.1:1", "motor", 0.1)
    assert isinstance(client, motor_asyncio.AsyncIOMotorClient)
