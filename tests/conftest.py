"""Shared fixtures and the test modes: every test runs on mongomock (``embedded``),
on the local wire-protocol test server (``wire``) or on a real server (``real``) when
``PYNENC_MONGO_TEST_URL`` is set (one database per test run, dropped afterwards);
see ``run_settings`` and the README's "Testing" section.

Markers (registered here):

* ``embedded_only(reason)``: needs mongomock internals; skipped in wire/real mode.
* ``real_server(reason)``: needs a real mongod; skipped in embedded and wire mode.
* ``wire_gap(gap)``: hits a known gap of the wire test server (an emulator);
  skipped in wire mode, naming the gap.
* ``wire``: needs a server shared by OS processes (``server_url``, or its own wire
  server); ``scripts/test`` runs these in its wire pass only.

The terminal summary counts the tests that ran in each mode (a test on a wire
server of its own counts as ``wire``); with ``PYNENC_MONGO_TEST_COUNTS_FILE`` set
the counts are appended there as one JSON line (``scripts/test`` adds them up).

pynenc's own conformance fixtures come from ``pynenc_tests.conftest``; the
``app_instance`` fixture here replaces pynenc's memory/sqlite one with an app
whose state backend is ``MongoStateBackend`` (other components in memory).
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from collections.abc import Callable, Generator
from typing import Any

import pytest
from pynenc import Pynenc, PynencBuilder
from run_settings import MODE, REAL_URL, RUN_DATABASE
from wire_support import WireServer, WireServerUnavailable, start_wire_server

from pynenc_mongo import client as client_mod
from pynenc_mongo.indexes import forget_ensured

pytest_plugins = ["pynenc_tests.conftest", "query_recorder", "session_exit"]


MARKERS = (
    "embedded_only(reason): needs mongomock internals; runs in embedded mode only",
    "wire_gap(gap): hits a known gap of the wire test server; skipped in wire mode",
    "wire: needs a server shared by OS processes (the wire test server or a real one)",
    "conformance: pynenc's conformance suites (tests/test_conformance_*.py; set here)",
)
#: Fixtures that put a test on a wire server (its own or the run's).
WIRE_FIXTURES = frozenset({"server_url", "wire_server"})
_ran_key = pytest.StashKey[Counter[str]]()
_skipped_key = pytest.StashKey[Counter[str]]()


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers and the per-mode counters."""
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    config.stash[_ran_key] = Counter()
    config.stash[_skipped_key] = Counter()


def _reason(item: pytest.Item, name: str, default: str) -> str:
    marker = item.get_closest_marker(name)
    if marker is None:
        return default
    text = marker.args[0] if marker.args else marker.kwargs.get("reason", "")
    return str(text) or default


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip what this mode cannot run, each with its reason (see the module docstring)."""
    for item in items:
        if item.path.name.startswith("test_conformance_"):
            item.add_marker(pytest.mark.conformance)
        if "real_server" in item.keywords and MODE != "real":
            why = _reason(item, "real_server", "mongomock and the emulator diverge here")
            where = "mongomock" if MODE == "embedded" else "the wire test server (an emulator)"
            item.add_marker(
                pytest.mark.skip(
                    reason=f"needs a real MongoDB server, not {where}: {why} "
                    "(set PYNENC_MONGO_TEST_URL)"
                )
            )
        elif "embedded_only" in item.keywords and MODE != "embedded":
            why = _reason(item, "embedded_only", "inspects mongomock")
            item.add_marker(pytest.mark.skip(reason=f"embedded mode only: {why}"))
        elif "wire_gap" in item.keywords and MODE == "wire":
            gap = _reason(item, "wire_gap", "an emulator gap")
            item.add_marker(pytest.mark.skip(reason=f"wire test server gap: {gap}"))


def item_mode(item: pytest.Item) -> str:
    """The mode a test runs in: the run's, or ``wire`` for a test on its own wire server."""
    if MODE == "embedded" and (
        item.get_closest_marker("wire") is not None
        or WIRE_FIXTURES & set(getattr(item, "fixturenames", ()))
    ):
        return "wire"
    return MODE


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Count each test once: in its mode, as run (passed or failed) or skipped."""
    config = _CONFIG.get("config")
    if config is None:
        return
    mode = _MODES.get(report.nodeid, MODE)
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        key = _ran_key if report.outcome != "skipped" else _skipped_key
        config.stash[key][mode] += 1


_CONFIG: dict[str, pytest.Config] = {}
_MODES: dict[str, str] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    """Remember each collected test's mode (for the counts)."""
    _CONFIG["config"] = session.config
    for item in session.items:
        _MODES[item.nodeid] = item_mode(item)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print how many tests ran in each mode (and append them to the counts file)."""
    ran, skipped = config.stash.get(_ran_key, Counter()), config.stash.get(_skipped_key, Counter())
    modes = sorted(set(ran) | set(skipped))
    terminalreporter.write_sep("-", "tests per mode")
    for mode in modes:
        terminalreporter.write_line(f"{mode}: {ran[mode]} ran, {skipped[mode]} skipped")
    if not modes:
        terminalreporter.write_line(f"{MODE}: 0 ran")
    counts_file = os.environ.get("PYNENC_MONGO_TEST_COUNTS_FILE", "")
    if counts_file:
        import importlib.metadata

        line = {
            "pynenc": importlib.metadata.version("pynenc"),
            "mode": MODE,
            "ran": dict(ran),
            "skipped": dict(skipped),
        }
        with open(counts_file, "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")


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
