"""Child-process body for ``tests/test_workflow_data_buckets.py`` (importable by
``spawn`` children): one process writing workflow-data keys of one shared workflow."""

from __future__ import annotations

from typing import Any

from pynenc import PynencBuilder

from pynenc_mongo.state_backend import workflows


def writer(
    url: str,
    database: str,
    app_id: str,
    workflow_id: str,
    me: int,
    keys: int,
    max_keys: int,
    start: Any,
) -> None:
    """Once ``start`` is set, write the same ``keys`` shared keys (``shared-<n>``,
    value ``me``) as every other writer, each followed by a key of its own
    (``p<me>-<n>``), with buckets of ``max_keys``."""
    from _fakes import workflow_identity

    workflows.BUCKET_MAX_KEYS = max_keys  # small buckets: many spills under contention
    app = (
        PynencBuilder()
        .app_id(app_id)
        .memory()
        .mongo_state_backend(url=url, database=database)
        .build()
    )
    backend = app.state_backend
    wf = workflow_identity(workflow_id)
    backend.get_workflow_data(wf, "warm-up")  # connected and indexes ensured
    start.wait(60)
    for n in range(keys):
        backend.set_workflow_data(wf, f"shared-{n}", me)
        backend.set_workflow_data(wf, f"p{me}-{n}", n)
