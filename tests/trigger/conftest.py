"""Fixtures for the trigger tests: apps whose trigger is ``MongoTrigger``.

``app_instance`` (pynenc's conformance fixture) is overridden here: the state backend
and the trigger are on MongoDB (the ``mongo_url`` store), the other components in
memory. The trigger is selected by name through the config (``trigger_cls``), as a
deployment would; the builder's ``.mongo()`` does not select it (yet).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Generator

import pytest
from pynenc import Pynenc, PynencBuilder
from run_settings import RUN_DATABASE

from pynenc_mongo import MongoTrigger


def build_trigger_app(url: str, app_id: str | None = None, database: str = RUN_DATABASE) -> Pynenc:
    """An app on ``url``: MongoStateBackend and MongoTrigger, the rest in memory.

    :param str url: the MongoDB URL (``mongomock://...`` or a server).
    :param str | None app_id: the app id (default: a unique one).
    :param str database: the database.
    :return: the app (its trigger is created on first use).
    """
    builder = (
        PynencBuilder()
        .app_id(app_id or f"trg-{uuid.uuid4().hex[:8]}")
        .memory()
        .mongo(url=url, database=database)
    )
    builder._config["trigger_cls"] = "MongoTrigger"
    return builder.build()


def dispose(app: Pynenc) -> None:
    """Purge what ``app`` stored (trigger and state backend) and close its backend."""
    trigger = app._trigger
    if isinstance(trigger, MongoTrigger):
        trigger._purge()
    backend = app._state_backend
    if backend is not None:
        backend.purge()
        backend.close()


@pytest.fixture
def make_trigger_app(mongo_url: str) -> Generator[Callable[..., Pynenc], None, None]:
    """Factory of apps with MongoTrigger on the test store; all purged at teardown."""
    apps: list[Pynenc] = []

    def factory(app_id: str | None = None) -> Pynenc:
        app = build_trigger_app(mongo_url, app_id)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        dispose(app)


@pytest.fixture
def app_instance(make_trigger_app: Callable[..., Pynenc]) -> Pynenc:
    """pynenc's conformance fixture: an app whose trigger is MongoTrigger."""
    app = make_trigger_app()
    assert isinstance(app.trigger, MongoTrigger), type(app.trigger)
    return app
