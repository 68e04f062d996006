"""Workflow runs come back newest first, as pynenc's monitor expects.

pynmon shows ``get_workflow_runs(type)[0]`` as a workflow type's "latest run" and
charts the first three runs as "the latest three"; ``/workflows/runs`` means to list
newest first. The base API has no order, so the backend gives that one.
"""

from __future__ import annotations

from collections.abc import Callable

from pynenc import Pynenc
from pynenc.identifiers.task_id import TaskId
from pynenc.workflow.workflow_identity import WorkflowIdentity


def test_workflow_runs_newest_first(make_app: Callable[..., Pynenc]) -> None:
    """Runs stored one after the other are read back in reverse, per type and overall."""
    backend = make_app().state_backend
    orders, invoices = TaskId("shop.flows", "orders"), TaskId("shop.flows", "invoices")
    stored: list[WorkflowIdentity] = []
    for n in range(4):
        workflow_type = orders if n % 2 == 0 else invoices
        run = WorkflowIdentity(workflow_id=f"run-{n}", workflow_type=workflow_type)
        backend.store_workflow_run(run)
        stored.append(run)
    backend.store_workflow_run(stored[0])  # storing again keeps its place

    newest_first = [r.workflow_id for r in reversed(stored)]
    assert [r.workflow_id for r in backend.get_all_workflow_runs()] == newest_first
    assert [r.workflow_id for r in backend.get_workflow_runs(orders)] == ["run-2", "run-0"]
    assert [r.workflow_id for r in backend.get_workflow_runs(invoices)] == ["run-3", "run-1"]
