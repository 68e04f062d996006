"""Fixtures of the orchestrator tests: apps whose orchestrator is ``MongoOrchestrator``.

``app_instance`` (pynenc's conformance fixture) is overridden here: the state backend
and the orchestrator are on MongoDB (the ``mongo_url`` store: mongomock, or the server
of ``PYNENC_MONGO_TEST_URL``), the broker, trigger and client data store in memory.
The builder's ``.mongo_state_backend()`` selects only the state backend (the full-stack selection is
a later issue), so ``orchestrator_cls`` is set in the builder's config values.

pynenc's integration suite needs the task fixtures of
``pynenc_tests.integration.orchestrator.conftest``; ``pytest_plugins`` is only allowed
in the root conftest, so they are imported here instead.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import pytest
from orch_workers import orchestrator_app
from pynenc import Pynenc
from pynenc_tests.integration.orchestrator.conftest import *  # noqa: F403  (task fixtures)


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
