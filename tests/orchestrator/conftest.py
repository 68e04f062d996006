"""Fixtures of the orchestrator tests: apps whose orchestrator is ``MongoOrchestrator``.

``app_instance`` (pynenc's conformance fixture) is overridden here: the state backend
and the orchestrator are on MongoDB (the ``mongo_url`` store: mongomock, or the server
of ``PYNENC_MONGO_TEST_URL``), the broker, trigger and client data store in memory.
The builder's ``.mongo()`` selects only the state backend (the full-stack selection is
a later issue), so ``orchestrator_cls`` is set in the builder's config values.

pynenc's integration suite needs the task fixtures of
``pynenc_tests.integration.orchestrator.conftest``; ``pytest_plugins`` is only allowed
in the root conftest, so they are imported here instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Generator
from typing import Any

import pytest
from pynenc import Pynenc, PynencBuilder
from pynenc_tests.integration.orchestrator.conftest import (  # noqa: F401  (fixtures)
    dummy_invocation_io,
    task_concat_io,
    task_dummy_io,
    task_key_arg_io,
    task_mirror_io,
    task_running_key_arg_io,
    task_sum_io,
)
from run_settings import RUN_DATABASE


def orchestrator_app(url: str, app_id: str | None = None, **config: Any) -> Pynenc:
    """An app on ``url`` with ``MongoOrchestrator`` and ``MongoStateBackend``.

    :param str url: the Mongo URL.
    :param str | None app_id: the app id (a unique one by default).
    :param config: more config values (e.g. ``max_pending_seconds``).
    :return: the app (components created lazily).
    """
    builder = (
        PynencBuilder()
        .app_id(app_id or f"orch-{uuid.uuid4().hex[:8]}")
        .memory()
        .mongo(url=url, database=RUN_DATABASE)
    )
    builder._config["orchestrator_cls"] = "MongoOrchestrator"
    builder._config.update(config)
    return builder.build()


@pytest.fixture
def make_orchestrator_app(mongo_url: str) -> Generator[Callable[..., Pynenc], None, None]:
    """Factory of apps on the test store (purged at teardown)."""
    apps: list[Pynenc] = []

    def factory(app_id: str | None = None, **config: Any) -> Pynenc:
        app = orchestrator_app(mongo_url, app_id, **config)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        if app._orchestrator is not None:
            app.orchestrator.purge()
        if app._state_backend is not None:
            app.state_backend.purge()
            app.state_backend.close()


@pytest.fixture
def app_instance(make_orchestrator_app: Callable[..., Pynenc]) -> Pynenc:
    """pynenc's conformance fixture, with MongoOrchestrator and MongoStateBackend."""
    app = make_orchestrator_app()
    assert type(app.orchestrator).__name__ == "MongoOrchestrator"
    return app
