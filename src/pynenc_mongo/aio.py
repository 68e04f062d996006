"""The background event loop and the asynchronous MongoDB clients.

One asyncio event loop runs in one daemon thread per process
(``pynenc-mongo-async``), started lazily on first use. It owns this process's
asynchronous clients, one per (URL, database, driver):

* ``pymongo`` (default): PyMongo's ``AsyncMongoClient`` (stable since PyMongo
  4.13, the successor of Motor, which reached end of life on 2026-05-14);
* ``motor``: Motor's ``AsyncIOMotorClient``, when selected by
  ``mongo_async_driver`` and installed (``pip install pynenc-mongo[motor]``);
* ``mongomock://`` URLs: mongomock-motor's ``AsyncMongoMockClient`` wrapping the
  same in-process store as the synchronous client, so tests exercise the real
  asynchronous code path.

After a ``fork`` the child starts a new loop and new clients on first use (the
parent's loop thread does not exist in the child); a ``spawn`` child starts
empty. At interpreter exit the history writers flush first (see
:mod:`pynenc_mongo.async_writes`), then the clients close and the loop stops.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import threading
import time
from collections.abc import Coroutine
from datetime import UTC
from typing import Any

from pynenc_mongo import embedded
from pynenc_mongo.client import APP_NAME, mock_store, timeout_options
from pynenc_mongo.config import MongoConfigError
from pynenc_mongo.monitoring import LISTENER
from pynenc_mongo.urls import MOCK_SCHEME, parse_url

THREAD_NAME = "pynenc-mongo-async"
#: Longest wait, in seconds, for :meth:`LoopThread.stop` in all (closing the clients,
#: then the loop thread ending); the thread is a daemon, so the exit goes on after.
STOP_TIMEOUT_SECONDS = 10.0


class LoopThread:
    """An asyncio event loop running forever in one daemon thread."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self._clients: dict[tuple[str, str, str, float, float | None], Any] = {}
        self._clients_lock = threading.Lock()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self.thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    def submit[T](self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop from any other thread.

        :return: a ``concurrent.futures.Future`` with the coroutine's result.
        """
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def client(
        self,
        url: str,
        database: str,
        driver: str,
        timeout_seconds: float,
        socket_timeout_seconds: float | None = None,
    ) -> Any:
        """The loop's asynchronous client for these settings.

        Call it from a thread other than the loop's (issue 16, item 3): creating a
        client is synchronous work (option parsing, and for ``mongodb+srv://`` URLs
        PyMongo's SRV and TXT DNS lookups), which must not stall the shared loop. The
        clients bind to the loop on their first operation (PyMongo's
        ``AsyncMongoClient`` and Motor both defer it), so one created here serves
        the loop.

        :param float timeout_seconds: server selection timeout in seconds.
        :param float | None socket_timeout_seconds: socket timeout in seconds
            (``mongo_socket_timeout_seconds``; see :func:`pynenc_mongo.client.get_client`
            for the deadlines); None or 0 for none.
        :raises MongoConfigError: ``motor`` selected but not installed.
        """
        socket_timeout = float(socket_timeout_seconds) if socket_timeout_seconds else None
        key = (url, database, driver, float(timeout_seconds), socket_timeout)
        with self._clients_lock:
            client = self._clients.get(key)
            if client is None:
                client = _make_client(url, driver, timeout_seconds, socket_timeout)
                self._clients[key] = client
            return client

    async def _close_clients(self) -> None:
        with self._clients_lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            result = client.close()
            if asyncio.iscoroutine(result):
                await result

    def stop(self, timeout_seconds: float | None = None) -> None:
        """Close the clients and stop the loop, waiting at most ``timeout_seconds`` in
        all (None: :data:`STOP_TIMEOUT_SECONDS`). A client that does not close in time
        (a stalled server) is abandoned; the loop is stopped anyway."""
        if not self.thread.is_alive():
            return
        budget = STOP_TIMEOUT_SECONDS if timeout_seconds is None else timeout_seconds
        deadline = time.monotonic() + budget
        if threading.current_thread() is not self.thread:
            try:
                self.submit(self._close_clients()).result(timeout=budget)
            except Exception:  # noqa: BLE001 - closing is best effort at shutdown
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=max(0.0, deadline - time.monotonic()))


def _make_client(
    url: str, driver: str, timeout_seconds: float, socket_timeout_seconds: float | None = None
) -> Any:
    if url.startswith(MOCK_SCHEME):
        mongomock_motor = embedded.require("mongomock_motor")
        return mongomock_motor.AsyncMongoMockClient(mock_mongo_client=mock_store(url))
    parse_url(url)
    options: dict[str, Any] = {
        "tz_aware": True,
        "tzinfo": UTC,
        "appname": APP_NAME,
        "event_listeners": [LISTENER],
        **timeout_options(url, timeout_seconds, socket_timeout_seconds),
    }
    if driver == "motor":
        try:
            from motor.motor_asyncio import AsyncIOMotorClient
        except ImportError:
            raise MongoConfigError(
                "mongo_async_driver: 'motor' is selected but Motor is not installed; "
                "install pynenc-mongo[motor] or use the default 'pymongo'"
            ) from None
        return AsyncIOMotorClient(url, **options)
    from pymongo import AsyncMongoClient

    return AsyncMongoClient(url, **options)


_lock = threading.Lock()
_loop_thread: LoopThread | None = None


def loop_thread() -> LoopThread:
    """This process's loop thread, started on first use (and anew after a fork)."""
    global _loop_thread
    current = _loop_thread
    if current is not None and current.pid == os.getpid() and current.thread.is_alive():
        return current
    with _lock:
        current = _loop_thread
        if current is None or current.pid != os.getpid() or not current.thread.is_alive():
            current = LoopThread()
            _loop_thread = current
        return current


def run[T](coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule ``coro`` on this process's loop thread; see :meth:`LoopThread.submit`."""
    return loop_thread().submit(coro)


async def run_async[T](coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` run on the loop thread, from any other event loop.

    The caller's loop is never blocked: it awaits a wrapped future.
    """
    return await asyncio.wrap_future(run(coro))


def stop_loop_thread() -> None:
    """Stop this process's loop thread if it runs (interpreter exit, tests)."""
    global _loop_thread
    with _lock:
        current, _loop_thread = _loop_thread, None
    if current is not None and current.pid == os.getpid():
        current.stop()


def _forget_after_fork() -> None:
    global _lock, _loop_thread
    _lock = threading.Lock()
    _loop_thread = None


os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(stop_loop_thread)
