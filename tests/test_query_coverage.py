"""Every query pynenc-mongo issues is served by an index of ``schema.INDEXES``.

The recording and the checker are in ``tests/query_recorder.py`` (a pytest plugin
loaded by ``conftest.py``): every query that pynenc-mongo code issues during the
whole test session is recorded (filter and sort), and
``test_every_query_the_suite_issued_is_served_by_an_index`` -- ordered last --
checks each against the index definitions; the session-finish hook checks again
for queries issued after it. The other tests here prove the checker and the
recorder catch an unindexed query.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import query_recorder
from pynenc import Pynenc, PynencBuilder
from pynenc.app_info import AppInfo
from pynenc.identifiers.task_id import TaskId
from pynenc.invocation.status import InvocationStatus, InvocationStatusRecord
from pynenc.runner.runner_context import RunnerContext
from pynenc.workflow.workflow_identity import WorkflowIdentity
from query_recorder import QueryShape, analyze_filter, serving_index
from run_settings import RUN_DATABASE

from pynenc_mongo import cli, schema
from pynenc_mongo.state_backend import MongoStateBackend

_holder = PynencBuilder().app_id("query-coverage-holder").memory().build()


@_holder.task
def touch(x: int) -> int:
    """A task whose invocations the exercise registers (never run)."""
    return x


def shape(collection: str, query: dict[str, Any], sort: Any = None, distinct: Any = None) -> Any:
    equality, ranges, problems = analyze_filter(query)
    return QueryShape(
        collection,
        "find",
        equality,
        ranges,
        query_recorder._sort_pairs(sort),
        distinct,
        problems,
    )


@pytest.mark.parametrize(
    ("collection", "query", "sort", "distinct", "expected"),
    [
        (schema.INVOCATIONS, {"app_id": "a", "invocation_id": "i"}, None, None, "app_invocation"),
        (schema.INVOCATIONS, {"invocation_id": "i", "app_id": "a"}, None, None, "app_invocation"),
        (schema.INVOCATIONS, {"app_id": "a"}, None, None, "app_invocation"),
        (
            schema.HISTORY,
            {"app_id": "a", "ts_us": {"$gte": 1, "$lte": 2}},
            [("ts_us", 1), ("_id", 1)],
            None,
            "app_time",
        ),
        (schema.HISTORY, {"app_id": "a"}, [("ts_us", -1), ("_id", -1)], None, "app_time"),
        (
            schema.HISTORY,
            {"app_id": "a", "invocation_id": "i"},
            [("ts_us", 1), ("_id", 1)],
            None,
            "app_invocation_time",
        ),
        (schema.VALUE_PIECES, {"app_id": "a", "value_id": "v"}, "n", None, "app_value_piece"),
        (
            schema.RUNNER_CONTEXTS,
            {"app_id": "a", "runner_id": {"$in": ["r"]}},
            None,
            None,
            "app_runner",
        ),
        (
            schema.RUNNER_CONTEXTS,
            {"app_id": "a", "runner_id": {"$regex": "x"}},
            None,
            None,
            "app_runner",
        ),
        (
            schema.WORKFLOW_RUNS,
            {"app_id": "a"},
            None,
            "workflow_type.key",
            "app_workflow_type_newest",
        ),
        (schema.APP_INFOS, {}, "app_id", None, "app"),
        (schema.APP_INFOS, {"$and": [{"app_id": "a"}]}, None, None, "app"),
        (schema.HISTORY, {"_id": "x"}, None, None, "_id_"),
        (  # every key of a unique index by equality: one document, any precondition
            schema.WORKFLOW_DATA,
            {"app_id": "a", "workflow_id": "w", "bucket": 3, "keys": {"$ne": "d"}},
            None,
            None,
            "app_workflow_bucket",
        ),
        # not served:
        (schema.HISTORY, {"app_id": "a", "status": "SUCCESS"}, None, None, None),
        (schema.HISTORY, {"app_id": "a"}, [("ts_us", 1), ("_id", -1)], None, None),
        (schema.HISTORY, {"app_id": "a"}, [("ts", 1)], None, None),
        (schema.HISTORY, {"ts_us": {"$gte": 1}}, None, None, None),
        (
            schema.HISTORY,
            {"app_id": "a", "invocation_id": {"$gte": "x"}, "ts_us": {"$gt": 1}},
            None,
            None,
            None,
        ),
        (schema.INVOCATIONS, {}, None, None, None),
        (schema.INVOCATIONS, {"app_id": "a", "call.call_id.key": "k"}, None, None, None),
        (schema.INVOCATIONS, {"app_id": "a", "invocation_id": {"$ne": "i"}}, None, None, None),
        (schema.INVOCATIONS, {"$or": [{"app_id": "a"}, {"app_id": "b"}]}, None, None, None),
        (schema.WORKFLOW_RUNS, {"app_id": "a"}, None, "workflow_type.module", None),
        (schema.RESULTS, {"invocation_id": "i"}, None, None, None),
        (  # a unique index's keys but one: not a point lookup
            schema.WORKFLOW_DATA,
            {"app_id": "a", "workflow_id": "w", "keys": {"$ne": "d"}},
            None,
            None,
            None,
        ),
    ],
)
def test_checker_accepts_indexed_and_rejects_unindexed_queries(
    collection: str, query: dict[str, Any], sort: Any, distinct: Any, expected: str | None
) -> None:
    """The checker's rule: equality fields, then sort fields, as an index prefix;
    a range only on the first sort field or the field right after; no collection scans."""
    assert serving_index(shape(collection, query, sort, distinct)) == expected


def test_recorder_catches_an_unindexed_query(make_app: Callable[..., Pynenc]) -> None:
    """An unindexed query is recorded (filter and later ``.sort``) and flagged; the
    recorder keeps pynenc-mongo's queries and, by default, ignores the tests' own."""
    backend = make_app().state_backend
    history = backend.collection(schema.HISTORY)
    with query_recorder.capture(scope_all=True) as everything:
        list(history.find({"app_id": backend.app_id, "status": "SUCCESS"}).sort("ts", -1))
    [recorded] = everything.shapes()
    assert recorded.equality == {"app_id", "status"}
    assert recorded.sort == (("ts", -1),)
    assert serving_index(recorded) is None
    assert [s.describe() for s in everything.unserved()] == [recorded.describe()]
    report = query_recorder.report_lines(everything.unserved(), 1)
    assert "history.find equality=['app_id', 'status'] sort=[('ts', -1)]" in report[1]

    with query_recorder.capture() as scoped:
        list(history.find({"app_id": backend.app_id, "status": "SUCCESS"}))  # test code
        backend.get_history("no-such-invocation")  # pynenc-mongo code
    [from_backend] = scoped.shapes()
    assert from_backend.where.startswith("pynenc_mongo.state_backend.history:")
    assert serving_index(from_backend) == "app_invocation_time"
    assert recorded not in query_recorder.SESSION.shapes()  # captures stay out of the session


def _exercise(make_app: Callable[..., Pynenc], monkeypatch: pytest.MonkeyPatch) -> None:
    """Call every backend method that queries, plus discovery and the setup script."""
    # Large values must reach the backend (not pynenc's client data store), and every
    # read must reach MongoDB (no DTO cache).
    monkeypatch.setenv("PYNENC__DISABLE_CLIENT_DATA_STORE", "true")
    app = make_app(inline_value_max_bytes=1024, retention_days=1, invocation_cache_size=0)
    backend = app.state_backend
    assert isinstance(backend, MongoStateBackend)
    touch.app = app
    parent = touch(1)
    child = touch(2)
    inv_id = parent.invocation_id
    runner = RunnerContext(runner_cls="QueryCoverageRunner", runner_id=f"r-{uuid.uuid4().hex}")
    backend.store_runner_context(runner)
    for status in (InvocationStatus.RUNNING, InvocationStatus.SUCCESS):
        backend.add_history(inv_id, InvocationStatusRecord(status=status), runner)
    backend.set_result(inv_id, "x" * 5000)  # large: compressed pieces in value_pieces
    backend.set_result(inv_id, "y" * 5000)  # replaces pieces: deletes the old ones
    backend.set_exception(child.invocation_id, ValueError("boom"))
    workflow = WorkflowIdentity(
        workflow_id=inv_id,
        workflow_type=TaskId("query_coverage", "workflow"),
        parent_workflow_id=None,
    )
    backend.store_workflow_run(workflow)
    backend.store_workflow_sub_invocation(inv_id, child.invocation_id)
    backend.set_workflow_data(workflow, "small", 1)
    backend.set_workflow_data(workflow, "large", "z" * 5000)
    backend.store_app_info(AppInfo.from_app(app))
    backend.expire_invocation(inv_id, datetime.now(UTC) + timedelta(days=1))

    reader = backend
    reader.get_invocation(inv_id)
    reader.get_history(inv_id)
    assert reader.get_result(inv_id) == "y" * 5000
    reader.get_exception(child.invocation_id)
    list(reader.get_child_invocations(inv_id))
    if hasattr(reader, "get_invocations_by_parent_event"):
        list(reader.get_invocations_by_parent_event("no-such-event"))
    list(reader.get_invocation_ids_by_workflow())
    list(reader.get_invocation_ids_by_workflow(workflow_id=inv_id))
    list(reader.get_invocation_ids_by_workflow(workflow_type_key="query_coverage.workflow"))
    list(reader.get_invocation_ids_by_workflow(inv_id, "query_coverage.workflow"))
    start, end = datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1)
    list(reader.iter_history_in_timerange(start, end, batch_size=2))
    list(reader.iter_invocations_in_timerange(start, end, batch_size=2))
    list(reader.get_all_workflow_types())
    list(reader.get_all_workflow_runs())
    list(reader.get_workflow_runs(workflow.workflow_type))
    list(reader.get_workflow_sub_invocations(inv_id))
    assert reader.get_workflow_data(workflow, "large") == "z" * 5000
    reader.get_workflow_data(workflow, "missing", None)
    reader.get_runner_context(runner.runner_id)
    reader.get_runner_contexts([runner.runner_id, "r-missing"])
    list(reader.get_matching_runner_contexts(runner.runner_id[2:10]))
    reader.get_app_info()

    url = backend.conf.mongo_url
    monkeypatch.setenv("PYNENC__MONGO_URL", url)
    monkeypatch.setenv("PYNENC__MONGO_DATABASE", RUN_DATABASE)
    assert app.app_id in MongoStateBackend.discover_app_infos()
    status = cli.main(
        ["--url", url, "--database", RUN_DATABASE, "--app-id", app.app_id, "--dry-run"]
    )
    assert status == cli.EXIT_OK
    backend.purge()


def test_every_query_the_suite_issued_is_served_by_an_index(
    make_app: Callable[..., Pynenc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs last (see ``query_recorder.pytest_collection_modifyitems``): exercises every
    query path, then checks every query recorded in this session so far."""
    _exercise(make_app, monkeypatch)
    shapes = query_recorder.SESSION.shapes()
    assert set(schema.STATE_COLLECTIONS) <= {s.collection for s in shapes}
    unserved = query_recorder.SESSION.unserved()
    assert not unserved, "\n".join(query_recorder.report_lines(unserved, len(shapes)))
