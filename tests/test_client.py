"""Client registry: one client per process and settings, fork safety, UTC dates."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime
from typing import Any

from pynenc_mongo import client as client_mod


def test_one_client_per_url_database_and_timeout() -> None:
    a = client_mod.get_client("mongodb://127.0.0.1:1", "db1", 0.1)
    assert client_mod.get_client("mongodb://127.0.0.1:1", "db1", 0.1) is a
    assert client_mod.get_client("mongodb://127.0.0.1:1", "db2", 0.1) is not a
    assert client_mod.get_client("mongodb://127.0.0.1:2", "db1", 0.1) is not a
    assert a.options.server_selection_timeout == 0.1
    assert a.codec_options.tz_aware is True


def test_mock_store_is_shared_per_name() -> None:
    one = client_mod.get_client("mongomock://shared-x/db1", "db1", 1)
    assert client_mod.get_client("mongomock://shared-x/db2", "db2", 1) is one
    assert client_mod.get_client("mongomock://shared-y", "db1", 1) is not one
    client_mod.drop_mock_store("mongomock://shared-x")
    client_mod.drop_mock_store("mongomock://shared-y")


def _child(parent_client_id: int, queue: Any) -> None:
    fresh = client_mod.get_client("mongodb://127.0.0.1:1", "forkdb", 0.1)
    queue.put({"registry_was_cleared": id(fresh) != parent_client_id})


def test_forked_child_never_reuses_the_parents_client() -> None:
    parent = client_mod.get_client("mongodb://127.0.0.1:1", "forkdb", 0.1)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(id(parent), queue))
    child.start()
    result = queue.get(timeout=30)
    child.join(10)
    assert child.exitcode == 0
    assert result == {"registry_was_cleared": True}
    assert client_mod.get_client("mongodb://127.0.0.1:1", "forkdb", 0.1) is parent


def test_dates_come_back_timezone_aware_utc(backend: Any) -> None:
    from pynenc.invocation.status import InvocationStatus, InvocationStatusRecord
    from pynenc.runner.runner_context import RunnerContext

    from pynenc_mongo import schema

    ctx = RunnerContext(runner_cls="R", runner_id="tz-runner")
    backend.add_history("inv-tz", InvocationStatusRecord(InvocationStatus.REGISTERED), ctx)
    backend.wait_for_all_async_operations()
    raw = backend.collection(schema.HISTORY).find_one(
        {schema.F_APP: backend.app_id, schema.F_INV: "inv-tz"}
    )
    assert raw["ts"].tzinfo is not None and raw["ts"].utcoffset().total_seconds() == 0
    (entry,) = backend.get_history("inv-tz")
    assert entry.timestamp.tzinfo is not None
    assert abs(entry.timestamp - datetime.now(UTC)).total_seconds() < 60
