"""Issue 16, item 4 (the client part): no wait on the server is unbounded.

* every operation attempt waits at most ``mongo_socket_timeout_seconds`` for the
  server on an open connection (PyMongo's ``socketTimeoutMS``, default 60 s),
  shown on the wire test server frozen with SIGSTOP (connections open, nothing
  answers): before, the read blocked until TCP keepalive gave up;
* closing the clients at interpreter exit waits a bounded time in all.

Why ``socketTimeoutMS`` and not ``timeoutMS`` by default: see
:func:`pynenc_mongo.client.get_client` (with ``timeoutMS`` PyMongo ignores
``serverSelectionTimeoutMS``; the last test here shows it).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError, ServerSelectionTimeoutError

from pynenc_mongo import aio
from pynenc_mongo import client as client_mod
from pynenc_mongo.config import ConfigStateBackendMongo, MongoConfigError
from pynenc_mongo.store import MongoStore

#: Nothing listens here (connections are refused at once).
CLOSED_URL = "mongodb://127.0.0.1:1"
#: Generous bound for "it returned" (never a speed target: the failure mode is forever).
RETURNED_WITHIN_SECONDS = 20.0


def _socket_timeout(client: Any) -> float | None:
    timeout: float | None = client.options.pool_options.socket_timeout
    return timeout


def _conf(**values: Any) -> ConfigStateBackendMongo:
    return ConfigStateBackendMongo(config_values={"mongo_url": CLOSED_URL, **values})


def test_the_store_client_has_a_socket_timeout_by_default() -> None:
    store = MongoStore(_conf(mongo_database="deadline_a"), "app")
    assert store.conf.mongo_socket_timeout_seconds == 60.0
    assert _socket_timeout(store.database.client) == 60.0


def test_socket_timeout_is_configurable_and_zero_disables() -> None:
    store = MongoStore(_conf(mongo_database="deadline_b", mongo_socket_timeout_seconds=2.5), "a")
    assert _socket_timeout(store.database.client) == 2.5
    off = MongoStore(_conf(mongo_database="deadline_c", mongo_socket_timeout_seconds=0), "a")
    assert _socket_timeout(off.database.client) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [(-1, "at least"), ("abc", "expected a number of seconds"), (float("nan"), "finite")],
)
def test_bad_socket_timeout_is_refused_naming_the_setting(value: Any, expected: str) -> None:
    with pytest.raises(MongoConfigError, match=f"mongo_socket_timeout_seconds.*{expected}"):
        _ = _conf(mongo_socket_timeout_seconds=value).mongo_socket_timeout_seconds


def test_the_url_wins() -> None:
    own = client_mod.get_client(f"{CLOSED_URL}/?socketTimeoutMS=1234", "deadline_d", 1.0, 60.0)
    assert _socket_timeout(own) == 1.234
    csot = client_mod.get_client(f"{CLOSED_URL}/?timeoutMS=3000", "deadline_e", 1.0, 60.0)
    assert _socket_timeout(csot) is None and csot.options.timeout == 3.0


def test_the_async_client_has_the_socket_timeout() -> None:
    client = aio._make_client(CLOSED_URL, "pymongo", 1.0, 2.5)
    try:
        assert _socket_timeout(client) == 2.5
    finally:
        asyncio.run(client.close())


def _run_bounded(func: Any) -> tuple[bool, list[Any]]:
    """Run ``func`` in a daemon thread; (returned in time, [result or error])."""
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(func())
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            out.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(RETURNED_WITHIN_SECONDS)
    return not thread.is_alive(), out


def test_a_stalled_server_fails_the_operation_instead_of_hanging(wire_server: Any) -> None:
    """Before: the read blocked on the open socket for as long as the server stayed
    frozen (no socket timeout at all)."""
    conf = ConfigStateBackendMongo(
        config_values={
            "mongo_url": wire_server.url,
            "mongo_database": "deadline_stall",
            "mongo_server_selection_timeout_seconds": 2,
            "mongo_socket_timeout_seconds": 1,
        }
    )
    store = MongoStore(conf, "app")
    collection = store.database["stall"]
    collection.find_one({})  # connected: the pool holds an open socket
    wire_server.pause()
    try:
        returned, out = _run_bounded(lambda: collection.find_one({"app_id": "app"}))
    finally:
        wire_server.resume()
    assert returned, "find_one still blocked on the frozen server"
    [error] = out
    assert isinstance(error, PyMongoError) and error.timeout, error


class _StuckClient:
    """A client whose ``close`` never returns (``endSessions`` to a stalled server)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def close(self) -> None:
        self.release.wait()


def test_closing_at_exit_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    stuck = _StuckClient()
    monkeypatch.setitem(client_mod._clients, ("mongodb://stuck", "db", 1.0, None), stuck)
    monkeypatch.setattr(client_mod, "CLOSE_TIMEOUT_SECONDS", 0.5, raising=False)
    try:
        returned, out = _run_bounded(client_mod.close_all)
        assert returned, "close_all waited for a client that never closes"
        assert out == [None]
    finally:
        stuck.release.set()


def test_stopping_the_loop_thread_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A guard: the loop thread's stop waits STOP_TIMEOUT_SECONDS in all."""

    class StuckAsyncClient:
        def close(self) -> Any:
            return asyncio.Event().wait()  # never set

    loop = aio.LoopThread()
    loop._clients[("mongodb://stuck", "db", "pymongo", 1.0, None)] = StuckAsyncClient()
    monkeypatch.setattr(aio, "STOP_TIMEOUT_SECONDS", 0.5)
    returned, _ = _run_bounded(loop.stop)
    assert returned
    loop.thread.join(RETURNED_WITHIN_SECONDS)
    assert not loop.thread.is_alive()


def test_with_timeout_ms_pymongo_ignores_the_server_selection_timeout() -> None:
    """Why ``timeoutMS`` is not the default: with it, an unreachable server is
    reported after the whole deadline, not after ``serverSelectionTimeoutMS``."""
    client: MongoClient[dict[str, Any]] = MongoClient(
        CLOSED_URL, connect=False, timeoutMS=1500, serverSelectionTimeoutMS=100
    )
    start = time.monotonic()
    try:
        with pytest.raises(ServerSelectionTimeoutError):
            client.db.c.find_one({})
    finally:
        client.close()
    assert time.monotonic() - start >= 1.0  # the deadline, not the 0.1 s selection
