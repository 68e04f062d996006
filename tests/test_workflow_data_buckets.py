"""Workflow data in bucket documents (issue 16, item 8): a workflow's keys spill into
bounded per-workflow buckets, each key in one bucket, read back by one indexed query.

The 100,000-step proof with its per-step cost is ``benchmarks/workflow_data_steps.py``;
here: spilling, overwrites in place, a second process continuing the newest bucket,
expiry of buckets made after the workflow was stamped, and several processes racing
on the same keys over a shared server.
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
import pytest
import workflow_data_workers
from _fakes import raw, raw_app_fixture, workflow_identity
from run_settings import RUN_DATABASE

from pynenc_mongo import schema
from pynenc_mongo.monitoring import count_operations
from pynenc_mongo.state_backend import workflows

make_raw_app = raw_app_fixture()
SPAWN = multiprocessing.get_context("spawn")


def buckets(backend: Any, workflow_id: str) -> list[dict[str, Any]]:
    """The workflow's bucket documents, in bucket order."""
    query = {schema.F_APP: backend.app_id, "workflow_id": workflow_id}
    return list(raw(backend, schema.WORKFLOW_DATA).find(query).sort("bucket", 1))


def test_keys_spill_into_bounded_buckets_and_overwrite_in_place(
    make_raw_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """23 keys with buckets of 5: buckets 0..4, each key in one bucket, counts exact;
    overwriting a key of bucket 0 changes bucket 0 only; a backend with no cache (a
    new process) adds to the newest bucket with room, not to bucket 0."""
    monkeypatch.setattr(workflows, "BUCKET_MAX_KEYS", 5)
    app = make_raw_app()
    backend = app.state_backend
    wf = workflow_identity("wf-spill")
    for n in range(23):
        backend.set_workflow_data(wf, f"step-{n}", n)
    docs = buckets(backend, "wf-spill")
    assert [d["bucket"] for d in docs] == [0, 1, 2, 3, 4]
    assert [d["count"] for d in docs] == [5, 5, 5, 5, 3]
    assert sum(len(d["keys"]) for d in docs) == 23
    assert all(len(d["data"]) == len(d["keys"]) for d in docs)
    backend.set_workflow_data(wf, "step-0", "changed")
    after = buckets(backend, "wf-spill")
    assert after[0]["data"]["kstep-0"] == '"changed"' and after[0]["count"] == 5
    assert [d["count"] for d in after] == [5, 5, 5, 5, 3]
    other = make_raw_app(app_id=app.app_id).state_backend
    other.set_workflow_data(wf, "from-another-process", 1)
    assert [d["count"] for d in buckets(backend, "wf-spill")] == [5, 5, 5, 5, 4]
    for n in range(1, 23):
        assert other.get_workflow_data(wf, f"step-{n}") == n
    assert other.get_workflow_data(wf, "step-0") == "changed"
    assert other.get_workflow_data(wf, "step-99") is None


def test_a_read_is_one_query_and_a_step_touches_one_bounded_document(
    make_raw_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After 1,200 keys (3 buckets of 500): a read is one ``find``; adding a new key
    costs two operations (look for it, add it), overwriting one costs one."""
    backend = make_raw_app().state_backend
    wf = workflow_identity("wf-ops")
    for n in range(1200):
        backend.set_workflow_data(wf, f"task_invocation:{n:064x}", str(uuid.UUID(int=n)))
    docs = buckets(backend, "wf-ops")
    assert [d["count"] for d in docs] == [500, 500, 200]
    assert max(len(bson.encode(d)) for d in docs) < 200_000
    with count_operations() as ops:
        assert backend.get_workflow_data(wf, f"task_invocation:{7:064x}") == str(uuid.UUID(int=7))
    assert ops.counts == {"find": 1}
    with count_operations() as ops:
        backend.set_workflow_data(wf, "new-key", 1)
    assert sum(ops.counts.values()) == 2, ops.counts
    with count_operations() as ops:
        backend.set_workflow_data(wf, "new-key", 2)
    assert ops.counts == {"findAndModify": 1}


def test_one_bucket_workflow_new_keys_cost_one_operation(make_raw_app: Any) -> None:
    """While a workflow has one bucket, a new key is one ``update`` (plus one ``find``
    for the bucket when this process first writes to the workflow); a key another
    process wrote is overwritten in place, not stored twice."""
    app = make_raw_app()
    backend = app.state_backend
    wf = workflow_identity("wf-small")
    assert backend.get_workflow_data(wf, "status") is None  # indexes ensured
    with count_operations() as ops:
        backend.set_workflow_data(wf, "status", "started")
    assert ops.counts == {"find": 1, "update": 1}, ops.counts
    with count_operations() as ops:
        backend.set_workflow_data(wf, "total", 3)
    assert ops.counts == {"update": 1}, ops.counts
    with count_operations() as ops:
        backend.set_workflow_data(wf, "status", "done")  # seen here: straight to it
    assert ops.counts == {"findAndModify": 1}, ops.counts
    other = make_raw_app(app_id=app.app_id).state_backend
    other.set_workflow_data(wf, "status", "from the other process")
    [bucket] = buckets(backend, "wf-small")
    assert bucket["count"] == len(bucket["keys"]) == 2
    assert backend.get_workflow_data(wf, "status") == "from the other process"
    assert other.get_workflow_data(wf, "total") == 3


def test_buckets_made_after_the_expiry_stamp_expire_with_the_workflow(
    make_raw_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention: a workflow stamped for expiry, then given more keys than its bucket
    holds: the new bucket carries the same ``expire_at`` (else it would never expire)."""
    monkeypatch.setattr(workflows, "BUCKET_MAX_KEYS", 2)
    app = make_raw_app(retention_days=1)
    backend = app.state_backend
    wf = workflow_identity("wf-expiry")
    backend.set_workflow_data(wf, "a", 1)
    backend.set_workflow_data(wf, "b", 2)
    expire_at = datetime.now(UTC) + timedelta(days=1)
    backend.expire_invocation("wf-expiry", expire_at)
    for key in ("c", "d", "e"):
        backend.set_workflow_data(wf, key, key)
    docs = buckets(backend, "wf-expiry")
    assert [d["bucket"] for d in docs] == [0, 1, 2]
    stamps = {d[schema.F_EXPIRE].replace(tzinfo=UTC).replace(microsecond=0) for d in docs}
    assert stamps == {expire_at.replace(microsecond=0)}


@pytest.mark.wire
def test_processes_racing_on_the_same_keys_leave_each_key_in_one_bucket(
    server_url: str,
) -> None:
    """4 spawned processes each write 60 keys of their own and the same 60 shared
    keys of one workflow, with buckets of 7 (many spills, many lost races): every key
    is in exactly one bucket, no bucket is over 7 keys, and every value reads back."""
    processes, keys, max_keys = 4, 60, 7
    app_id = f"buckets-{uuid.uuid4().hex[:8]}"
    workflow_id = f"wf-{uuid.uuid4().hex[:8]}"
    start = SPAWN.Event()
    children = [
        SPAWN.Process(
            target=workflow_data_workers.writer,
            args=(server_url, RUN_DATABASE, app_id, workflow_id, me, keys, max_keys, start),
            daemon=True,
        )
        for me in range(processes)
    ]
    for child in children:
        child.start()
    time.sleep(4)  # let every child import pynenc and connect, then start them at once
    start.set()
    deadline = time.monotonic() + 240
    for child in children:
        child.join(max(0.1, deadline - time.monotonic()))
    alive = [c for c in children if c.is_alive()]
    for child in alive:
        child.kill()
    assert not alive and [c.exitcode for c in children] == [0] * processes

    from pynenc import PynencBuilder

    app = (
        PynencBuilder()
        .app_id(app_id)
        .memory()
        .mongo_state_backend(url=server_url, database=RUN_DATABASE)
        .build()
    )
    backend: Any = app.state_backend
    try:
        docs = buckets(backend, workflow_id)
        digests = Counter(d for doc in docs for d in doc["keys"])
        assert len(digests) == processes * keys + keys
        assert set(digests.values()) == {1}, "a key is in more than one bucket"
        assert max(len(doc["keys"]) for doc in docs) <= max_keys
        assert all(len(doc["data"]) == len(doc["keys"]) == doc["count"] for doc in docs)
        wf = workflow_identity(workflow_id)
        for me in range(processes):
            for n in range(keys):
                assert backend.get_workflow_data(wf, f"p{me}-{n}") == n
        assert {backend.get_workflow_data(wf, f"shared-{n}") for n in range(keys)} <= set(
            range(processes)
        )
    finally:
        backend.purge()
        backend.close()


@pytest.mark.slow
@pytest.mark.real_server(
    "MongoDB's 16 MiB document limit: mongomock and the emulator do not enforce it"
)
def test_one_hundred_thousand_steps_stay_below_16_mib(make_raw_app: Any) -> None:
    """pynenc's deterministic replay writes a ~172-byte key per step; one document
    per workflow failed at about 97,000 steps. 100,000 steps work, in 200 buckets."""
    backend = make_raw_app().state_backend
    wf = workflow_identity("wf-100k")
    for n in range(100_000):
        backend.set_workflow_data(wf, f"task_invocation:{n:064x}", str(uuid.UUID(int=n)))
    docs = buckets(backend, "wf-100k")
    assert len(docs) == 200
    assert max(len(bson.encode(d)) for d in docs) < 16 * 1024 * 1024
    assert backend.get_workflow_data(wf, f"task_invocation:{99_999:064x}") == str(
        uuid.UUID(int=99_999)
    )
