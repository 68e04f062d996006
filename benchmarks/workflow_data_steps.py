"""Workflow data at scale (issue 16, item 8): 100,000 deterministic-replay steps of one
workflow, and the cost of a step as the workflow grows.

Usage::

    .venv/bin/python benchmarks/workflow_data_steps.py [--steps 100000] [--window 10000]

Uses the embedded store (``mongomock://``) unless ``PYNENC_MONGO_TEST_URL`` is set (a
scratch database on that server, dropped afterwards). Each step does what pynenc 0.4's
deterministic replay does per task call: a new key ``task_invocation:<64 hex>`` whose
value is a UUID (about 172 bytes as BSON, the figure of the state-backend review), and
an overwrite of one operation counter. Per window of steps it prints:

* ``ms/step``: wall time per step (median of the window). On mongomock this grows
  with the number of bucket documents, because mongomock has no indexes and scans
  every document of the collection for each query; MongoDB answers each query with
  one lookup in ``app_workflow_key``.
* ``ops/step``: MongoDB operations per step (``pynenc_mongo.monitoring``).
* ``rewritten KiB/step``: the BSON size of the documents the step's updates rewrote
  (MongoDB rewrites a whole document on update), measured on the stored buckets.
* ``one-document KiB``: what the previous layout (one document per workflow) would
  rewrite per step at this point: its BSON size, computed from the same keys and
  values; MongoDB refuses it past 16 MiB (``BSONObjectTooLarge``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from typing import Any

import bson
from pynenc import PynencBuilder
from pynenc.identifiers.task_id import TaskId
from pynenc.workflow.workflow_identity import WorkflowIdentity

from pynenc_mongo import schema
from pynenc_mongo.client import get_client
from pynenc_mongo.monitoring import count_operations
from pynenc_mongo.state_backend.workflows import data_field

MAX_BSON = 16 * 1024 * 1024
COUNTER_KEY = "operation_counter:task_invocation"


def element_bytes(name: str, value: str) -> int:
    """BSON bytes of one string element ``name: value`` (type, cstring, int32, string)."""
    return 1 + len(name.encode()) + 1 + 4 + len(value.encode()) + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000, help="steps (default 100000)")
    parser.add_argument("--window", type=int, default=10_000, help="steps per printed row")
    args = parser.parse_args()
    url = os.environ.get("PYNENC_MONGO_TEST_URL", "").strip() or "mongomock://bench-wf-data"
    database = f"bench_wf_data_{uuid.uuid4().hex[:8]}"
    app = (
        PynencBuilder()
        .app_id(f"bench-wf-{uuid.uuid4().hex[:6]}")
        .memory()
        .mongo_state_backend(url=url, database=database)
        .build()
    )
    backend: Any = app.state_backend
    workflow = WorkflowIdentity(workflow_id="wf-bench", workflow_type=TaskId("bench", "wf"))
    collection = backend.collection(schema.WORKFLOW_DATA)
    query = {schema.F_APP: backend.app_id, "workflow_id": "wf-bench"}
    # The previous layout's document: {_id, app_id, workflow_id, data: {...}}.
    one_document = len(bson.encode({**query, "_id": bson.ObjectId(), "data": {}}))
    one_document += element_bytes(data_field(COUNTER_KEY)[5:], "0")
    first_size = one_document
    one_document_full_at: int | None = None
    print(f"store: {url.split('@')[-1].split('?')[0]}  steps: {args.steps}")
    print(
        f"{'steps':>8} {'ms/step':>8} {'ops/step':>9} {'rewritten KiB/step':>19} "
        f"{'buckets':>8} {'largest KiB':>12} {'one-document KiB':>17}"
    )
    started = time.perf_counter()
    try:
        for first in range(0, args.steps, args.window):
            last = min(first + args.window, args.steps)
            times: list[float] = []
            with count_operations() as ops:
                for n in range(first, last):
                    key, value = f"task_invocation:{n:064x}", str(uuid.UUID(int=n))
                    t0 = time.perf_counter()
                    backend.set_workflow_data(workflow, key, value)
                    backend.set_workflow_data(workflow, COUNTER_KEY, n)
                    times.append(time.perf_counter() - t0)
                    one_document += element_bytes(data_field(key)[5:], f'"{value}"')
                    if one_document > MAX_BSON and one_document_full_at is None:
                        one_document_full_at = n + 1
            operations = sum(ops.counts.values())
            docs = list(collection.find(query).sort("bucket", 1))
            sizes = [len(bson.encode(doc)) for doc in docs]
            # A step rewrites the bucket it adds its key to and the bucket of the counter.
            counter_field = data_field(COUNTER_KEY)[5:]
            counter_bucket = next(
                s for d, s in zip(docs, sizes, strict=True) if counter_field in d["data"]
            )
            rewritten = (sizes[-1] + counter_bucket) / 1024
            print(
                f"{last:>8} {statistics.median(times) * 1000:>8.2f} "
                f"{operations / (last - first):>9.2f} {rewritten:>19.1f} {len(docs):>8} "
                f"{max(sizes) / 1024:>12.1f} {one_document / 1024:>17.1f}",
                flush=True,
            )
        check = f"task_invocation:{args.steps - 1:064x}"
        assert backend.get_workflow_data(workflow, check) == str(uuid.UUID(int=args.steps - 1))
        assert backend.get_workflow_data(workflow, COUNTER_KEY) == args.steps - 1
    finally:
        backend.purge()
        backend.close()
        if not url.startswith("mongomock"):
            get_client(url, 20.0).drop_database(database)
    print(f"all {args.steps} steps stored and read back in {time.perf_counter() - started:.0f} s")
    if one_document_full_at is not None:
        print(f"one document per workflow would pass 16 MiB at step {one_document_full_at}")
    else:
        per_step = (one_document - first_size) / args.steps
        print(
            f"one document per workflow would stay under 16 MiB for these steps; at "
            f"{per_step:.0f} bytes per step it passes 16 MiB at step "
            f"{int((MAX_BSON - first_size) / per_step) + 1}"
        )


if __name__ == "__main__":
    main()
