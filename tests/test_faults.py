"""A server that is unreachable, refuses the credentials, or is lost mid-run.

The fakes (``_fakes.FaultyCollection``) raise PyMongo's own network errors
(``AutoReconnect``, ``NetworkTimeout``) a set number of times before delegating
to the real collection; ``after=True`` lets the write happen and then raises,
which is a lost reply. Afterwards every document is checked, unwrapped.
"""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from _fakes import (
    WRITE_METHODS,
    FaultPlan,
    install_faults,
    make_dtos,
    raw,
    raw_app_fixture,
    workflow_identity,
)
from pymongo.errors import (
    AutoReconnect,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from pynenc_mongo import schema
from pynenc_mongo.errors import (
    RETRY_ATTEMPTS,
    MongoAuthenticationError,
    MongoUnavailableError,
)
from pynenc_mongo.state_backend import MongoStateBackend
from pynenc_mongo.store import MongoStore

make_raw_app = raw_app_fixture()
PASSWORD = "KNOWNPASS"
ALL_METHODS = (*WRITE_METHODS, "find", "find_one", "distinct")
STATUSES = ("REGISTERED", "PENDING", "RUNNING", "SUCCESS")


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the retry policy (attempts) but not its waiting."""
    from pynenc_mongo import errors

    monkeypatch.setattr(errors, "RETRY_WAIT_MIN_SECONDS", 0.0005)
    monkeypatch.setattr(errors, "RETRY_WAIT_MAX_SECONDS", 0.001)


def _status(name: str) -> Any:
    from pynenc.invocation.status import InvocationStatus, InvocationStatusRecord

    return InvocationStatusRecord(status=InvocationStatus[name], runner_id="runner-1")


def _ctx() -> Any:
    from pynenc.runner.runner_context import RunnerContext

    return RunnerContext(runner_cls="TestRunner", runner_id="runner-1")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _arm(plan: FaultPlan, times: int) -> None:
    plan.failures = dict.fromkeys(ALL_METHODS, times)


@pytest.mark.parametrize("after", [False, True], ids=["fail-before", "lost-reply"])
def test_lost_server_mid_run_loses_and_duplicates_nothing(
    make_raw_app: Any, monkeypatch: Any, after: bool
) -> None:
    app = make_raw_app(inline_value_max_bytes=1024)
    backend: MongoStateBackend = app.state_backend
    plan = FaultPlan(
        exc_factory=lambda name: (
            NetworkTimeout(f"fake: {name} timed out")
            if name.startswith("find")
            else AutoReconnect(f"fake: {name} lost")
        ),
        after=after,
    )
    install_faults(monkeypatch, backend, plan)
    big = "B" * 5000 + "".join(chr(0x41 + i % 26) for i in range(20_000))
    ids = ["inv-1", "inv-2", "inv-3"]
    wf = workflow_identity("inv-1")

    def each(op: Any, *args: Any) -> None:
        _arm(plan, RETRY_ATTEMPTS - 1)  # every method fails 4 times, the 5th attempt works
        op(*args)

    for inv_id in ids:
        inv, call = make_dtos(inv_id, {"a": '"small"', "b": big}, parent="root")
        each(backend._upsert_invocations, [(inv, call)])
        for status in STATUSES:
            each(backend.add_history, inv_id, _status(status), _ctx())
        each(backend._set_result, inv_id, f'"{inv_id}:{big}"')
    each(backend._set_exception, "inv-2", '"boom"')
    each(backend.set_workflow_data, wf, "small", 1)
    each(backend.set_workflow_data, wf, "large", big)
    each(backend.store_workflow_run, wf)
    each(backend.store_workflow_sub_invocation, "inv-1", "inv-2")
    assert sum(plan.raised.values()) > 40

    # Every document exactly once.
    def count(logical: str, **filter_: Any) -> int:
        return int(raw(backend, logical).count_documents({"app_id": app.app_id, **filter_}))

    assert count(schema.INVOCATIONS) == 3
    assert count(schema.HISTORY) == 3 * len(STATUSES)
    assert count(schema.RESULTS) == 3
    assert count(schema.EXCEPTIONS) == 1
    assert count(schema.WORKFLOW_RUNS) == 1
    assert count(schema.WORKFLOW_SUB_INVOCATIONS) == 1
    assert count(schema.RUNNER_CONTEXTS) == 1

    # Reads under the same faults, from a backend with no cache, get everything.
    reader = make_raw_app(app_id=app.app_id).state_backend
    install_faults(monkeypatch, reader, plan)
    for inv_id in ids:
        _arm(plan, RETRY_ATTEMPTS - 1)
        _, call = reader._get_invocation(inv_id)
        assert call.serialized_arguments == {"a": '"small"', "b": big}
        _arm(plan, RETRY_ATTEMPTS - 1)
        history = reader.get_history(inv_id)
        assert [h.status_record.status.name for h in history] == list(STATUSES)
        _arm(plan, RETRY_ATTEMPTS - 1)
        assert reader._get_result(inv_id) == f'"{inv_id}:{big}"'
    _arm(plan, RETRY_ATTEMPTS - 1)
    assert reader._get_exception("inv-2") == '"boom"'
    _arm(plan, RETRY_ATTEMPTS - 1)
    assert reader.get_workflow_data(wf, "large") == big
    _arm(plan, RETRY_ATTEMPTS - 1)
    assert sorted(reader.get_child_invocations("root")) == ids
    _arm(plan, RETRY_ATTEMPTS - 1)
    assert list(reader.get_workflow_sub_invocations("inv-1")) == ["inv-2"]
    _arm(plan, RETRY_ATTEMPTS - 1)
    assert [c.runner_id for c in reader.get_matching_runner_contexts("runner")] == ["runner-1"]
    _arm(plan, RETRY_ATTEMPTS - 1)
    assert [w.workflow_id for w in reader.get_all_workflow_runs()] == ["inv-1"]
    start, end = datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1)
    _arm(plan, RETRY_ATTEMPTS - 1)
    entries = [h for batch in reader.iter_history_in_timerange(start, end, 2) for h in batch]
    assert len(entries) == 3 * len(STATUSES)
    _arm(plan, RETRY_ATTEMPTS - 1)
    found = [i for batch in reader.iter_invocations_in_timerange(start, end, 1) for i in batch]
    assert sorted(found) == ids


def test_cursor_lost_while_reading_is_reopened_not_truncated(
    make_app: Any, monkeypatch: Any
) -> None:
    """A PyMongo cursor that lost its connection is dead: re-reading it would give
    an empty list. The read must start again with a new cursor."""
    backend = make_app().state_backend
    for i in range(5):
        inv, call = make_dtos(f"child-{i}", {}, parent="parent")
        backend._upsert_invocations([(inv, call)])
    plan = FaultPlan({"find": 2})
    install_faults(monkeypatch, backend, plan)
    assert sorted(backend.get_child_invocations("parent")) == [f"child-{i}" for i in range(5)]
    assert plan.raised == {"find": 2}


def test_history_iteration_resumes_after_losing_the_cursor_midway(
    make_app: Any, monkeypatch: Any
) -> None:
    backend = make_app().state_backend
    for i in range(6):
        backend.add_history(f"inv-{i}", _status("REGISTERED"), _ctx())
    plan = FaultPlan()
    install_faults(monkeypatch, backend, plan)
    start, end = datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1)
    batches = backend.iter_history_in_timerange(start, end, 2)
    first = next(batches)
    plan.failures = {"getmore": 1, "find": 1}  # the cursor dies, and so does the first re-open
    rest = [h for batch in batches for h in batch]
    assert plan.raised == {"getmore": 1, "find": 1}
    ids = [h.invocation_id for h in first + rest]
    assert ids == [f"inv-{i}" for i in range(6)]


def test_errors_beyond_the_retries_are_clear_and_the_app_recovers(
    make_app: Any, monkeypatch: Any
) -> None:
    backend = make_app(outage_tolerance_seconds=0).state_backend  # 0: attempts-based policy
    plan = FaultPlan({"find_one_and_update": 100})
    install_faults(monkeypatch, backend, plan)
    with pytest.raises(MongoUnavailableError, match="connection failed") as info:
        backend._set_result("inv", '"value"')
    assert backend.describe_target() in str(info.value)
    assert plan.raised["find_one_and_update"] == RETRY_ATTEMPTS
    plan.failures = {}
    backend._set_result("inv", '"value"')  # the same backend works once the server is back
    assert backend._get_result("inv") == '"value"'


def test_refused_credentials_give_an_authentication_error_without_retrying(
    make_app: Any, monkeypatch: Any
) -> None:
    backend = make_app().state_backend
    plan = FaultPlan(
        {"find_one": 10},
        exc_factory=lambda _name: OperationFailure("Authentication failed.", code=18),
    )
    install_faults(monkeypatch, backend, plan)
    with pytest.raises(MongoAuthenticationError, match="refused the credentials"):
        backend._get_result("inv")
    assert plan.raised == {"find_one": 1}


def test_unreachable_server_fails_within_the_timeout_naming_host_and_cause() -> None:
    from pynenc import PynencBuilder

    port = _free_port()
    timeout = 0.5
    app = (
        PynencBuilder()
        .app_id("unreachable")
        .memory()
        .mongo_state_backend(
            url=f"mongodb://user:{PASSWORD}@127.0.0.1:{port}/db",
            server_selection_timeout_seconds=timeout,
            outage_tolerance_seconds=0,  # no waiting out the outage: fail on the first timeout
        )
        .build()
    )
    started = time.monotonic()
    with pytest.raises(MongoUnavailableError) as info:
        _ = app.state_backend  # pynenc stores the app info on creation
    assert time.monotonic() - started < timeout + 2.0
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "refused" in message.lower()
    assert PASSWORD not in message
    backend = app.state_backend
    start, end = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    for call_ in (
        lambda: backend._get_result("x"),
        lambda: list(backend.iter_history_in_timerange(start, end)),
        lambda: list(backend.iter_invocations_in_timerange(start, end)),
        backend.purge,
    ):
        started = time.monotonic()
        with pytest.raises(MongoUnavailableError, match=f"127.0.0.1:{port}") as info:
            call_()
        assert time.monotonic() - started < timeout + 2.0
        assert PASSWORD not in str(info.value)


def test_app_info_is_stored_once_the_server_is_back(make_app: Any, monkeypatch: Any) -> None:
    """pynenc stores the app info when it creates the backend; if the server is
    down then, the next operation that reaches it stores it."""
    down = {"on": True}
    original = MongoStore.collection

    def maybe_down(self: MongoStore, logical: str) -> Any:
        if down["on"]:
            raise ServerSelectionTimeoutError("127.0.0.1:1: [Errno 111] Connection refused")
        return original(self, logical)

    monkeypatch.setattr(MongoStore, "collection", maybe_down)
    app = make_app()
    with pytest.raises(MongoUnavailableError, match="not reachable"):
        _ = app.state_backend
    backend = app.state_backend  # pynenc keeps the backend; no restart needed
    down["on"] = False
    backend._set_result("inv", '"ok"')
    info = backend.get_app_info()
    assert info.app_id == app.app_id
    assert raw(backend, schema.APP_INFOS).count_documents({"app_id": app.app_id}) == 1
