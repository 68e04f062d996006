"""Issue 16, state-backend items on the read side: 11 (the async API matches the sync
one), 3 (the async API never blocks the shared loop thread), 9 (streamed reads with a
``maxTimeMS``; runner-context parents batched and cached) and 2 (fork safety).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from _fakes import make_dtos, raw, raw_app_fixture, workflow_identity
from pymongo.errors import AutoReconnect
from pynenc import Pynenc
from pynenc.exceptions import InvocationNotFoundError
from pynenc.invocation.status import InvocationStatus, InvocationStatusRecord
from pynenc.runner.runner_context import RunnerContext

from pynenc_mongo import aio, schema
from pynenc_mongo.async_writes import AsyncHistoryWriter
from pynenc_mongo.monitoring import count_operations
from pynenc_mongo.store import MongoStore

make_raw_app = raw_app_fixture()
BIG = "".join(f"{i:08x}" for i in range(2000))
CTX = RunnerContext(runner_cls="T", runner_id="runner-1", pid=1, hostname="h", thread_id=1)


# ---------------------------------------------------------------- item 11
def test_aget_workflow_data_refuses_a_dict_workflow_id(make_app: Callable[..., Pynenc]) -> None:
    """Before the fix: the dict reached the filter as an operator (no error)."""
    backend: Any = make_app().state_backend
    with pytest.raises(TypeError, match="workflow_id"):
        backend.get_workflow_data(workflow_identity({"$ne": None}), "k")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="workflow_id"):
        asyncio.run(backend.aget_workflow_data(workflow_identity({"$ne": None}), "k"))


def test_aget_invocation_during_ttl_deletion_is_not_found(make_raw_app: Any) -> None:
    """Pieces deleted, document still there with a past ``expire_at``. Before the fix
    the async read raised StaleValueError, the sync one InvocationNotFoundError."""
    backend: Any = make_raw_app(retention_days=1, inline_value_max_bytes=1024).state_backend
    pair = make_dtos(arguments={"x": BIG})
    inv_id = pair[0].invocation_id
    backend._upsert_invocations([pair])
    backend._flush_deferred(every_thread=True)
    invocations = raw(backend, schema.INVOCATIONS)
    for name, info in invocations.index_information().items():
        if "expireAfterSeconds" in info:  # the TTL monitor has not run yet (a real
            invocations.drop_index(name)  # server's runs every 60 s; mongomock's at once)
    past = datetime.now(UTC) - timedelta(seconds=5)
    raw(backend, schema.INVOCATIONS).update_one(
        {schema.F_APP: backend.app_id, schema.F_INV: inv_id}, {"$set": {schema.F_EXPIRE: past}}
    )
    raw(backend, schema.VALUE_PIECES).delete_many({schema.F_APP: backend.app_id, "owner": inv_id})
    backend._dto_cache.clear()
    getattr(backend._invocations, "deadlines", {}).clear()  # as in another process
    assert backend._get_invocation(inv_id) is None
    with pytest.raises(InvocationNotFoundError):
        asyncio.run(backend.aget_invocation(inv_id))


def test_async_read_retries_a_transient_error(
    make_app: Callable[..., Pynenc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the fix one AutoReconnect beyond the driver's retry reached the caller."""
    from pynenc_mongo.state_backend.async_reads import AsyncReads

    backend: Any = make_app().state_backend
    backend.set_result("inv-1", "result")
    failures = [1]

    class FlakyCollection:
        def __init__(self, real: Any) -> None:
            self.real = real

        async def find_one(self, *args: Any, **kwargs: Any) -> Any:
            if failures:
                failures.pop()
                raise AutoReconnect("connection reset")
            return await self.real.find_one(*args, **kwargs)

    class FlakyClient:
        def __init__(self, real: Any) -> None:
            self.real = real

        def __getitem__(self, database: str) -> Any:
            real_db = self.real[database]
            return type(
                "FlakyDatabase", (), {"__getitem__": lambda _, n: FlakyCollection(real_db[n])}
            )()

    original = AsyncReads._prepare
    monkeypatch.setattr(AsyncReads, "_prepare", lambda self, *a: FlakyClient(original(self, *a)))
    assert asyncio.run(backend.aget_result("inv-1")) == "result"
    assert failures == []


# ---------------------------------------------------------------- item 3
def test_async_reads_do_no_store_work_on_the_loop_thread(
    make_app: Callable[..., Pynenc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Index build / app-info write (``MongoStore.collection``) must run on a worker
    thread. Before the fix it ran on the shared loop thread."""
    backend: Any = make_app().state_backend
    backend.set_result("inv-1", "result")
    threads: list[str] = []
    original = MongoStore.collection

    def recording(self: MongoStore, logical: str) -> Any:
        threads.append(threading.current_thread().name)
        return original(self, logical)

    monkeypatch.setattr(MongoStore, "collection", recording)
    assert asyncio.run(backend.aget_result("inv-1")) == "result"
    asyncio.run(backend.aget_history("inv-1"))
    assert threads and aio.THREAD_NAME not in threads


def test_async_clients_are_created_off_the_loop_thread(
    make_app: Callable[..., Pynenc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creating an asynchronous client (for ``mongodb+srv://`` URLs, DNS lookups) must
    not run on the shared loop thread, for reads nor for the history writer. Before
    the fix both created their client on the loop thread on first use."""
    aio.stop_loop_thread()  # a new loop thread: no client cached yet
    made: list[str] = []
    original = aio._make_client

    def recording(*args: Any, **kwargs: Any) -> Any:
        made.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(aio, "_make_client", recording)
    backend: Any = make_app(history_write_mode="async").state_backend
    backend.set_result("inv-1", "result")
    assert asyncio.run(backend.aget_result("inv-1")) == "result"
    backend.add_history("inv-1", InvocationStatusRecord(status=InvocationStatus.RUNNING), CTX)
    backend.wait_for_invocation_async_operations("inv-1")
    assert made, "no asynchronous client was created"
    assert aio.THREAD_NAME not in made


# ---------------------------------------------------------------- item 9
def test_runner_context_parents_are_fetched_in_one_batch_and_cached(
    make_app: Callable[..., Pynenc],
) -> None:
    """Before the fix: one find_one per runner for the same parent (~201 finds)."""
    backend: Any = make_app().state_backend
    parent = RunnerContext(runner_cls="P", runner_id="parent", pid=1, hostname="h", thread_id=1)
    backend._store_runner_context(parent)
    for i in range(200):
        child = RunnerContext(
            runner_cls="C",
            runner_id=f"child-{i}",
            pid=1,
            hostname="h",
            thread_id=i,
            parent_ctx=parent,
        )
        backend._store_runner_context(child)
    backend._runner_context_cache.clear()
    with count_operations() as counter:
        found = list(backend.get_matching_runner_contexts("child-"))
    assert len(found) == 200 and all(c.parent_ctx.runner_id == "parent" for c in found)
    assert sum(counter.counts.values()) <= 3, counter.counts
    assert "parent" in backend._runner_context_cache
    with count_operations() as again:
        list(backend.get_matching_runner_contexts("child-1"))
    assert sum(again.counts.values()) == 1, again.counts  # parent from the cache


def test_large_id_lists_are_streamed_with_a_server_deadline(
    make_app: Callable[..., Pynenc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the fix the whole result was loaded into a list, with no maxTimeMS.
    (Pages of 50 here, so 120 invocations span three server batches.)"""
    from pynenc_mongo.state_backend import common

    monkeypatch.setattr(common, "PAGE_SIZE", 50)
    backend: Any = make_app().state_backend
    pairs = [make_dtos(workflow_id="wf-1") for _ in range(120)]
    backend._upsert_invocations(pairs)
    backend._flush_deferred(every_thread=True)
    cls = type(raw(backend, schema.INVOCATIONS))
    seen: list[dict[str, Any]] = []
    original = cls.find

    def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "find", recording)
    ids = backend.get_invocation_ids_by_workflow(workflow_id="wf-1")
    assert not isinstance(ids, list)
    assert len(set(ids)) == len(pairs)
    assert any(kw.get("max_time_ms") for kw in seen)


# ---------------------------------------------------------------- item 2
def _in_child(check: Callable[[], None]) -> int:
    """Run ``check`` in a forked child under a 5 s alarm; return its exit status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        signal.alarm(5)
        code = 0
        try:
            check()
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_child_reads_history_without_hanging_on_the_parents_writer(
    make_app: Callable[..., Pynenc],
) -> None:
    """The parent's writer has a record in flight at fork time. Before the fix the
    child's get_history waited on it forever (killed by the alarm: SIGALRM)."""
    backend: Any = make_app().state_backend

    async def slow_insert(docs: list[dict[str, Any]]) -> None:
        await asyncio.sleep(1.0)
        raw(backend, schema.HISTORY).insert_many(docs)

    backend._writer = AsyncHistoryWriter(backend._history, insert=slow_insert)
    inv_id = str(uuid.uuid4())
    backend.add_history(inv_id, InvocationStatusRecord(InvocationStatus.REGISTERED, "r"), CTX)

    def child() -> None:
        backend.get_history(inv_id)
        backend.wait_for_all_async_operations()
        asyncio.run(backend.aget_history(inv_id))

    status = _in_child(child)
    backend.wait_for_all_async_operations()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_child_gets_fresh_locks_and_none_of_the_parents_deferred_inserts(
    make_app: Callable[..., Pynenc],
) -> None:
    """A parent thread holds the app-info and writer locks at fork time; the parent
    has a deferred insert. The child must neither deadlock nor write it."""
    backend: Any = make_app().state_backend
    pair = make_dtos()
    backend._upsert_invocations([pair])  # deferred in the parent
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with backend._app_infos._lock, backend._history._writer_lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    try:

        def child() -> None:
            assert not backend._unwritten and not backend._invocations.deferred
            from pynenc.app_info import AppInfo

            backend.store_app_info(AppInfo.from_app(backend.app))
            backend.add_history("x", InvocationStatusRecord(InvocationStatus.REGISTERED, "r"), CTX)
            backend.wait_for_all_async_operations()

        status = _in_child(child)
    finally:
        release.set()
        thread.join()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert pair[0].invocation_id in backend._unwritten  # still the parent's to write
