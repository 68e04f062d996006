"""MongoBroker's own tests: the 4 cases of pynenc's unit suite that build memory or
SQLite apps, re-run on MongoDB, plus order, isolation, config and document shape.
They run on mongomock, and on a server when ``PYNENC_MONGO_TEST_URL`` is set."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pynenc import Pynenc
from pynenc.exceptions import ConfigError
from pynenc_tests.unit.broker import test_broker_all_instances as suite
from pynenc_tests.util import capture_logs

from pynenc_mongo.broker import LEGACY_BROKER, MongoBroker, next_seq
from pynenc_mongo.schema.broker import BROKER_QUEUE

needs_queues = pytest.mark.skipif(
    LEGACY_BROKER, reason="pynenc 0.2.x: the broker has no queues or priorities"
)

QUEUE_CONFIG = {
    "queues": ("default", "payments", "reports"),
    "priority_rules": (
        {"task_id": f"{suite.__name__}.payment_task", "priority": 50.0},
        {"task_id": f"{suite.__name__}.report_task", "priority": -10.0},
    ),
}


@pytest.fixture
def queue_app(make_mongo_app: Callable[..., Pynenc]) -> Pynenc:
    """pynenc's ``build_queue_app`` configuration, on MongoDB."""
    return make_mongo_app(**QUEUE_CONFIG)


@needs_queues
def test_named_queue_filtering_and_priority(queue_app: Pynenc) -> None:
    app = queue_app
    default = suite.bind_task(app, suite.default_task)
    payment = suite.bind_task(app, suite.payment_task)
    urgent = suite.bind_task(app, suite.urgent_payment_task)
    report = suite.bind_task(app, suite.report_task)
    default_inv = default()
    payment_inv = payment()
    urgent_inv = urgent()
    report_inv = report()
    assert app.broker.count_invocations(("default",)) == 1
    assert app.broker.count_invocations(("payments",)) == 2
    assert app.broker.count_invocations(("reports",)) == 1
    assert app.broker.count_invocations(("payments", "reports")) == 3
    assert app.broker.count_invocations() == 4
    assert app.broker.retrieve_invocation("payments") == urgent_inv.invocation_id
    assert app.broker.retrieve_invocation("payments") == payment_inv.invocation_id
    assert app.broker.retrieve_invocation("default") == default_inv.invocation_id
    assert app.broker.retrieve_invocation("reports") == report_inv.invocation_id
    assert app.broker.retrieve_invocation("payments") is None


@needs_queues
def test_broker_retrieves_from_one_queue_at_a_time(queue_app: Pynenc) -> None:
    app = queue_app
    default = suite.bind_task(app, suite.default_task)
    payment = suite.bind_task(app, suite.payment_task)
    urgent = suite.bind_task(app, suite.urgent_payment_task)
    default_1 = default()
    payment_inv = payment()
    urgent_inv = urgent()
    default_2 = default()
    with pytest.raises(ConfigError, match="Invalid queue name"):
        app.broker.retrieve_invocation("*")
    with pytest.raises(ConfigError, match="Invalid queue name"):
        app.broker.count_invocations(("*",))
    assert app.broker.retrieve_invocation("payments") == urgent_inv.invocation_id
    assert app.broker.retrieve_invocation("default") == default_1.invocation_id
    assert app.broker.retrieve_invocation("payments") == payment_inv.invocation_id
    assert app.broker.retrieve_invocation("default") == default_2.invocation_id


@needs_queues
def test_strict_broker_rejects_unknown_task_queue(make_mongo_app: Callable[..., Pynenc]) -> None:
    app = make_mongo_app(queues=("default",), raise_on_queue_mismatch=True)
    missing = suite.bind_task(app, suite.missing_queue_task)
    with pytest.raises(ConfigError, match="not configured in broker.queues"):
        missing()
    assert app.broker.count_invocations(("default",)) == 0


@needs_queues
def test_broker_warns_but_routes_unknown_queue_by_default(queue_app: Pynenc) -> None:
    app = queue_app
    missing = suite.bind_task(app, suite.missing_queue_task)
    with capture_logs(app.logger) as log_buffer:
        invocation = missing()
    assert "not configured in broker.queues: missing" in log_buffer.getvalue()
    assert app.broker.retrieve_invocation("missing") == invocation.invocation_id


def test_fifo_within_priority_across_batches_and_single_routes(app_instance: Pynenc) -> None:
    broker = app_instance.broker
    ids = [f"id-{n:04d}" for n in range(300)]
    broker._route_invocations(ids[:150], "default", 1.5)
    for invocation_id in ids[150:160]:
        broker._route_invocation(invocation_id, "default", 1.5)
    broker._route_invocations(ids[160:], "default", 1.5)
    broker._route_invocation("urgent", "default", 1.75)  # float priorities compare exactly
    broker._route_invocation("late", "default", -0.25)
    out = [broker.retrieve_invocation() for _ in range(303)]
    assert out == ["urgent", *ids, "late", None]


def test_seq_is_strictly_increasing_even_when_the_clock_stalls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("pynenc_mongo.broker.time.time_ns", lambda: 1_000)
    first = next_seq(3)
    second = next_seq()
    assert second == first + 3
    with pytest.raises(ValueError, match="count: expected at least 1"):
        next_seq(0)


def test_purge_touches_this_app_only(make_mongo_app: Callable[..., Pynenc]) -> None:
    app_a = make_mongo_app()
    app_b = make_mongo_app()
    app_a.broker._route_invocations(["a1", "a2"], "default", 0.0)
    app_b.broker._route_invocations(["b1"], "default", 0.0)
    app_a.broker.purge()
    assert app_a.broker.count_invocations() == 0
    assert app_b.broker.count_invocations() == 1
    assert app_a.broker.retrieve_invocation() is None
    assert app_b.broker.retrieve_invocation() == "b1"


@needs_queues
def test_queues_are_read_on_every_call(app_instance: Pynenc) -> None:
    broker = app_instance.broker
    broker.route_invocation("x", "extra", 0.0)
    assert broker.count_invocations() == 0  # "extra" not configured yet
    broker.conf.queues = ("extra", "default")
    assert broker.count_invocations() == 1
    assert broker.retrieve_invocation() == "x"  # None means conf.queues[0]


def test_message_document_shape(app_instance: Pynenc) -> None:
    broker = app_instance.broker
    assert isinstance(broker, MongoBroker)
    broker._route_invocation("shape", "default", 2.0)
    doc = broker.store.collection(BROKER_QUEUE).find_one({"app_id": app_instance.app_id})
    assert doc is not None
    assert set(doc) == {"_id", "app_id", "queue", "priority", "seq", "invocation_id"}
    assert (doc["queue"], doc["priority"], doc["invocation_id"]) == ("default", 2.0, "shape")
    assert isinstance(doc["seq"], int) and doc["seq"] > 0
    assert "MongoBroker" in repr(broker) and "database=" in repr(broker)


def test_route_rejects_non_string_ids(app_instance: Pynenc) -> None:
    with pytest.raises(TypeError, match="invocation_id: expected a str, got dict"):
        app_instance.broker._route_invocations([{"$gt": ""}], "default", 0.0)  # type: ignore[list-item]
    assert app_instance.broker.count_invocations() == 0


def test_empty_batch_and_empty_queue_list(app_instance: Pynenc) -> None:
    broker = app_instance.broker
    broker._route_invocations([], "default", 0.0)
    assert broker.count_invocations(()) == 0
    assert broker.count_invocations() == 0


@pytest.mark.real_server  # mongomock has no query planner
def test_claim_is_an_index_scan_without_sort(app_instance: Pynenc) -> None:
    """``explain`` of the claim's filter and sort: IXSCAN on the broker index, no
    in-memory SORT, a handful of keys examined with 200 messages queued."""
    broker = app_instance.broker
    broker._route_invocations([f"e{n}" for n in range(200)], "default", 0.0)
    collection = broker.store.collection(BROKER_QUEUE)
    plan = collection.find(
        {"app_id": app_instance.app_id, "queue": "default"},
        sort=[("priority", -1), ("seq", 1), ("_id", 1)],
        limit=1,
    ).explain()
    text = str(plan)
    if "mongoeco" in str(collection.database.client.admin.command("buildInfo")):
        pytest.skip("the wire test server has no query planner")
    assert "IXSCAN" in text and "'stage': 'SORT'" not in text
    assert plan["executionStats"]["totalKeysExamined"] <= 2


@pytest.mark.skipif(not LEGACY_BROKER, reason="pynenc 0.2.x API only")
def test_legacy_public_routing_is_fifo_on_default(app_instance: Pynenc) -> None:
    """pynenc 0.2.x: ``route_invocation(id)`` / ``route_invocations(ids)`` queue on
    ``default`` with priority 0, retrieved in routing order."""
    broker = app_instance.broker
    broker.route_invocation("one")  # type: ignore[call-arg]
    broker.route_invocations(["two", "three", "one"])  # type: ignore[call-arg]
    assert broker.count_invocations() == 4
    assert [broker.retrieve_invocation() for _ in range(5)] == ["one", "two", "three", "one", None]
