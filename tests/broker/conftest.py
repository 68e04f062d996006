"""Fixtures for the broker and client data store tests.

``app_instance`` (pynenc's conformance fixture) is replaced here by an app whose
broker is ``MongoBroker``, whose client data store is ``MongoClientDataStore`` and
whose state backend is ``MongoStateBackend``, all on the ``mongo_url`` store
(mongomock, or the server in ``PYNENC_MONGO_TEST_URL``); orchestrator and trigger
stay in memory (their Mongo components are other issues). The components are
selected through config values (``broker_cls``, ``client_data_store_cls``), not
the builder: full-stack selection is a later issue.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Generator
from typing import Any

import pytest
from pynenc import Pynenc, PynencBuilder
from run_settings import RUN_DATABASE

import pynenc_mongo  # noqa: F401  (defines MongoBroker and MongoClientDataStore)

MONGO_COMPONENTS = {
    "broker_cls": "MongoBroker",
    "client_data_store_cls": "MongoClientDataStore",
}


def mongo_builder(url: str, app_id: str | None = None, **config: Any) -> PynencBuilder:
    """A builder for an app with broker, client data store and state backend on ``url``.

    :param str url: the MongoDB (or mongomock) URL.
    :param str | None app_id: the app id (unique by default).
    :param config: extra config values (``queues=...``, ``priority_rules=...``).
    :return: the builder (call ``.build()``).
    """
    builder = (
        PynencBuilder()
        .app_id(app_id or f"broker-{uuid.uuid4().hex[:8]}")
        .memory()
        .mongo_state_backend(url=url, database=RUN_DATABASE)
    )
    builder._config.update(MONGO_COMPONENTS)
    if config:
        builder.custom_config(**config)
    return builder


@pytest.fixture
def make_mongo_app(mongo_url: str) -> Generator[Callable[..., Pynenc], None, None]:
    """Factory ``make_mongo_app(app_id=None, **config)`` of apps on the test store;
    every app is purged at teardown."""
    apps: list[Pynenc] = []

    def factory(app_id: str | None = None, **config: Any) -> Pynenc:
        app = mongo_builder(mongo_url, app_id, **config).build()
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.broker.purge()
        app.client_data_store.purge()
        app.state_backend.purge()
        app.state_backend.close()  # type: ignore[attr-defined]


@pytest.fixture
def app_instance(make_mongo_app: Callable[..., Pynenc]) -> Pynenc:
    """pynenc's conformance fixture: broker and client data store on MongoDB."""
    app = make_mongo_app()
    assert type(app.broker).__name__ == "MongoBroker"
    assert type(app.client_data_store).__name__ == "MongoClientDataStore"
    return app
