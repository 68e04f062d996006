"""MongoDB round trips of MongoBroker and MongoClientDataStore.

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/broker_round_trips.py [--invocations 500]

Uses the embedded store (``mongomock://``) unless ``PYNENC_MONGO_TEST_URL`` is set,
in which case a scratch database on that server is used and dropped afterwards.
Counts MongoDB commands with :func:`pynenc_mongo.monitoring.count_operations`
(warm-up first, so lazy index creation is not counted) and prints:

* routing: round trips to route N invocations in one ``route_invocations`` call;
* claim: round trips per claimed invocation (``retrieve_invocation`` until empty),
  and the wall time per claim;
* idle: round trips of one idle runner loop iteration of pynenc's own pick-up path
  (``orchestrator.get_invocations_to_run``, memory orchestrator, so only the
  broker's polls reach MongoDB), with 1 and with 3 queues;
* client data store: round trips of the first store of a large value (inline and
  pieces), of a repeated store in the same process, and of a read.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
import uuid
from typing import Any

from pynenc import Pynenc, PynencBuilder
from pynenc.runner.runner_context import RunnerContext

import pynenc_mongo  # noqa: F401  (defines the components)
from pynenc_mongo.client import get_client
from pynenc_mongo.monitoring import count_operations


def make_app(url: str, database: str, **config: Any) -> Pynenc:
    """An app with broker, client data store and state backend on ``url``."""
    builder = (
        PynencBuilder()
        .app_id(f"bench-broker-{uuid.uuid4().hex[:6]}")
        .memory()
        .mongo_state_backend(url=url, database=database)
    )
    builder._config.update(
        {"broker_cls": "MongoBroker", "client_data_store_cls": "MongoClientDataStore"}
    )
    if config:
        builder.custom_config(**config)
    # One component on MongoDB, the rest in memory, on purpose: every operation counted
    # is then this component's. The builder's full-stack validator refuses such a
    # half-configured app (right for deployments: several processes cannot share
    # memory components); in this one process it is what the measurement needs.
    from pynenc import Pynenc as _Pynenc

    return _Pynenc(config_values=builder._config)


def broker_figures(url: str, database: str, invocations: int) -> dict[str, float]:
    """Routing, claim and idle round trips."""
    app = make_app(url, database, queues=("default", "high", "low"))
    broker = app.broker
    broker.route_invocation("warm-up", "default", 0.0)
    broker.retrieve_invocation("default")
    ids = [f"bench-{n}" for n in range(invocations)]
    with count_operations() as route_ops:
        broker.route_invocations(ids, "default", 0.0)
    with count_operations() as claim_ops:
        started = time.perf_counter()
        claimed = 0
        while broker.retrieve_invocation("default") is not None:
            claimed += 1
        claim_seconds = time.perf_counter() - started
    assert claimed == invocations, (claimed, invocations)
    ctx = RunnerContext(runner_cls="BenchRunner", runner_id="bench-runner")
    idle: dict[int, float] = {}
    for queues in (("default",), ("default", "high", "low")):
        iterations = 20
        with count_operations() as idle_ops:
            for _ in range(iterations):
                list(
                    app.orchestrator.get_invocations_to_run(
                        1,
                        ctx,
                        queue_provider=lambda q=queues: q,
                        on_queue_retrieved=lambda _q: None,
                    )
                )
        idle[len(queues)] = idle_ops.total / iterations
    broker.purge()
    return {
        "route_round_trips": float(route_ops.total),
        # The last, empty poll that ends the drain is included (pynenc's runners
        # make it too when a queue drains).
        "claim_round_trips_per_invocation": claim_ops.total / invocations,
        "claim_ms_per_invocation": 1000 * claim_seconds / (invocations + 1),
        "idle_round_trips_per_iteration_1_queue": idle[1],
        "idle_round_trips_per_iteration_3_queues": idle[3],
    }


def client_data_figures(url: str, database: str) -> dict[str, float]:
    """First store, repeated store and read of an inline and a pieces value."""
    app = make_app(url, database, mongo_inline_value_max_bytes=64 * 1024)
    cds = app.client_data_store
    out: dict[str, float] = {}
    for label, size in (("inline_10kb", 10_000), ("pieces_1mb", 1_000_000)):
        value = (hashlib.sha256(label.encode()).hexdigest() * (size // 64 + 1))[:size]
        warm = "w" + value[1:]
        cds._store("warm:" + label, warm)  # type: ignore[attr-defined]
        key = "__pynenc__client_data__:" + hashlib.sha256(value.encode()).hexdigest()
        with count_operations() as first:
            cds._store(key, value)  # type: ignore[attr-defined]
        with count_operations() as again:
            for _ in range(10):
                cds._store(key, value)  # type: ignore[attr-defined]
        with count_operations() as read:
            assert cds._retrieve(key) == value  # type: ignore[attr-defined]
        out[f"{label}_first_store_round_trips"] = float(first.total)
        out[f"{label}_repeated_store_round_trips"] = again.total / 10
        out[f"{label}_read_round_trips"] = float(read.total)
    cds.purge()
    app.state_backend.purge()
    return out


def main() -> None:
    """Parse arguments, run the measurements, print one line per figure."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--invocations", type=int, default=500)
    args = parser.parse_args()
    real = os.environ.get("PYNENC_MONGO_TEST_URL", "").strip()
    url = real or f"mongomock://bench-{uuid.uuid4().hex[:8]}"
    database = f"pynenc_bench_{uuid.uuid4().hex[:8]}"
    try:
        figures = {
            **broker_figures(url, database, args.invocations),
            **client_data_figures(url, database),
        }
    finally:
        if real:
            get_client(real, database, 10.0).drop_database(database)
    print(f"target: {'server' if real else 'embedded store (mongomock)'}")
    for name, value in figures.items():
        print(f"{name}: {value:.3f}")


if __name__ == "__main__":
    main()
