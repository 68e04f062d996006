"""Fixtures for the trigger tests: apps whose trigger is ``MongoTrigger``.

``app_instance`` (pynenc's conformance fixture) is overridden here: the state backend
and the trigger are on MongoDB (the ``mongo_url`` store), the other components in
memory. The trigger is selected by name through the config (``trigger_cls``), as a
deployment would; the builder's ``.mongo_state_backend()`` does not select it (yet).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import pytest
from pynenc import Pynenc
from trigger_support import build_trigger_app, dispose


@pytest.fixture
def make_trigger_app(mongo_url: str) -> Generator[Callable[..., Pynenc], None, None]:
    """Factory of apps with MongoTrigger on the test store; all purged at teardown."""
    apps: list[Pynenc] = []

    def factory(app_id: str | None = None, **config: Any) -> Pynenc:
        app = build_trigger_app(mongo_url, app_id, **config)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        dispose(app)


@pytest.fixture
def app_instance(make_trigger_app: Callable[..., Pynenc]) -> Pynenc:
    """pynenc's conformance fixture: an app whose trigger is MongoTrigger."""
    app = make_trigger_app()
    assert type(app.trigger).__name__ == "MongoTrigger", type(app.trigger)
    return app
