"""Shared fixtures: every test runs on mongomock, or on a real server when
``PYNENC_MONGO_TEST_URL`` is set (one database per test run, dropped afterwards).

pynenc's own conformance fixtures come from ``pynenc_tests.conftest``; the
``app_instance`` fixture here replaces pynenc's memory/sqlite one with an app
whose state backend is ``MongoStateBackend`` (other components in memory).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Generator
from typing import Any

import pytest
from pynenc import Pynenc, PynencBuilder
from run_settings import REAL_URL, RUN_DATABASE

from wire_support import WireServer, WireServerUnavailable, start_wire_server

from pynenc_mongo import client as client_mod
from pynenc_mongo.indexes import forget_ensured

pytest_plugins = ["pynenc_tests.conftest", "query_recorder"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``real_server`` tests on mongomock (mongomock diverges from MongoDB there)."""
    if REAL_URL:
        return
    skip = pytest.mark.skip(reason="needs a real MongoDB server: set PYNENC_MONGO_TEST_URL")
    for item in items:
        if "real_server" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _drop_run_database() -> Generator[None, None, None]:
    """With a real server, drop this run's database at the end."""
    yield
    if REAL_URL:
        client_mod.get_client(REAL_URL, RUN_DATABASE, 10.0).drop_database(RUN_DATABASE)
    client_mod.close_all()


@pytest.fixture
def mongo_url() -> Generator[str, None, None]:
    """A URL with a clean store: a fresh mongomock store per test, or the real server."""
    if REAL_URL:
        yield REAL_URL
        return
    url = f"mongomock://test-{uuid.uuid4().hex[:12]}"
    yield url
    client_mod.drop_mock_store(url)
    forget_ensured()


@pytest.fixture
def make_app(mongo_url: str) -> Generator[Callable[..., Pynenc], None, None]:
    """Factory of apps on the test store: ``make_app(app_id=None, **mongo_options)``.

    Apps get a unique app_id unless one is given; all are purged at teardown.
    """
    apps: list[Pynenc] = []

    def factory(app_id: str | None = None, **options: Any) -> Pynenc:
        app = (
            PynencBuilder()
            .app_id(app_id or f"app-{uuid.uuid4().hex[:8]}")
            .memory()
            .mongo_state_backend(url=mongo_url, database=RUN_DATABASE, **options)
            .build()
        )
        apps.append(app)
        return app

    yield factory
    for app in apps:
        backend = app._state_backend
        if backend is not None:
            backend.purge()
            backend.close()


@pytest.fixture
def app_instance(make_app: Callable[..., Pynenc]) -> Pynenc:
    """pynenc's conformance fixture, on MongoStateBackend."""
    return make_app()


@pytest.fixture
def backend(app_instance: Pynenc) -> Any:
    """The ``MongoStateBackend`` of ``app_instance``."""
    return app_instance.state_backend


@pytest.fixture(scope="session")
def wire_server() -> Generator[WireServer, None, None]:
    """The local wire-protocol test server (``scripts/wire_server``), started once per
    run and stopped at the end; skips (with the launcher's one-line reason) where it
    cannot start (no Python >= 3.13)."""
    try:
        server = start_wire_server()
    except WireServerUnavailable as exc:
        pytest.skip(f"wire test server unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def server_url(request: pytest.FixtureRequest) -> str:
    """A server that many processes can share: ``PYNENC_MONGO_TEST_URL`` when set (a
    real server), else the local wire test server."""
    if REAL_URL:
        return REAL_URL
    server: WireServer = request.getfixturevalue("wire_server")
    return server.url
