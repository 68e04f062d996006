"""One MongoDB client per process and connection settings.

PyMongo's ``MongoClient`` is thread-safe and holds a connection pool, so a
process needs one per deployment; it is *not* fork-safe (PyMongo docs, "Is
PyMongo fork-safe?"). This registry therefore:

* creates clients lazily, keyed by (URL, database, server selection timeout,
  socket timeout);
* forgets every real client in a child right after ``fork`` (the child builds
  its own on first use; the parent's sockets are never touched by the child);
  a ``spawn`` child starts with an empty registry anyway;
* closes every client at interpreter exit (``atexit``), waiting at most
  :data:`CLOSE_TIMEOUT_SECONDS` in all (a client closing against a stalled server
  would otherwise hold the exit: ``close`` sends ``endSessions``).

``mongomock://<name>`` URLs select an in-process embedded store (mongomock):
one store per ``<name>`` per process, shared by every app that names it. After a
fork the child keeps a private copy of the store, as with pynenc's memory backend.
mongomock is not thread-safe (its collections are plain dicts that a concurrent
write changes under a reader), so every mongomock collection operation, and the
evaluation of a cursor's results, runs under one process-wide lock
(:func:`_serialize_mongomock`): pynenc's thread runners can share the store.

Clients are created with ``tz_aware=True, tzinfo=UTC``: dates come back as
timezone-aware UTC datetimes.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
import time
from datetime import UTC
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database

from pynenc_mongo import embedded
from pynenc_mongo.monitoring import LISTENER
from pynenc_mongo.urls import MOCK_SCHEME, option_names, parse_url, redact_url

APP_NAME = "pynenc-mongo"
#: Longest wait, in seconds, for all clients to close at interpreter exit.
CLOSE_TIMEOUT_SECONDS = 5.0

logger = logging.getLogger("pynenc_mongo")

_ClientKey = tuple[str, str, float, float | None]
_lock = threading.Lock()
_clients: dict[_ClientKey, MongoClient[dict[str, Any]]] = {}
#: The process id that created each registered client (see :func:`client_creator_pids`).
_creator_pids: dict[_ClientKey, int] = {}
_mock_stores: dict[str, Any] = {}


_MOCK_LOCK = threading.RLock()
#: mongomock ``Collection`` methods that read or change the store.
_MOCK_COLLECTION_METHODS = (
    "insert_one",
    "insert_many",
    "find_one",
    "find_one_and_update",
    "find_one_and_replace",
    "find_one_and_delete",
    "update_one",
    "update_many",
    "replace_one",
    "delete_one",
    "delete_many",
    "distinct",
    "aggregate",
    "count_documents",
    "estimated_document_count",
    "bulk_write",
    "create_index",
    "create_indexes",
    "drop_index",
    "drop_indexes",
    "list_indexes",
    "index_information",
    "drop",
    "rename",
)


def _locked(method: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        with _MOCK_LOCK:
            return method(*args, **kwargs)

    call.__name__ = getattr(method, "__name__", "call")
    call.__doc__ = method.__doc__
    call.__wrapped__ = method  # type: ignore[attr-defined]
    return call


def _serialize_mongomock() -> None:
    """Make the embedded store safe to share between threads (see the module docstring).

    Wraps mongomock's ``Collection`` methods and ``Cursor._compute_results`` (where
    a ``find`` actually reads the store) with :data:`_MOCK_LOCK`; idempotent.
    """
    from mongomock.collection import Collection as MockCollection
    from mongomock.collection import Cursor as MockCursor

    if getattr(MockCollection, "_pynenc_mongo_serialized", False):
        return
    for name in _MOCK_COLLECTION_METHODS:
        original = getattr(MockCollection, name, None)
        if original is not None:
            setattr(MockCollection, name, _locked(original))
    setattr(MockCursor, "_compute_results", _locked(MockCursor._compute_results))  # noqa: B010
    setattr(MockCollection, "_pynenc_mongo_serialized", True)  # noqa: B010


@functools.lru_cache(maxsize=64)
def _mock_store_key(url: str) -> str:
    """``mongomock://name/db?x`` -> ``name``: the store's identity (parsed once per URL:
    every operation of the backend asks for its client)."""
    return parse_url(url).hosts[0]


def get_client(
    url: str,
    database: str,
    timeout_seconds: float,
    socket_timeout_seconds: float | None = None,
) -> Any:
    """Return this process's client for these settings, creating it on first use.

    **Deadlines.** ``timeout_seconds`` bounds server selection (waiting for a
    suitable server: PyMongo's ``serverSelectionTimeoutMS``) and
    ``socket_timeout_seconds`` bounds each wait on an open connection (one send or
    one reply: ``socketTimeoutMS``). Together they bound one attempt of an
    operation; PyMongo retries a retryable read or write once (MongoDB manual,
    "Retryable Reads/Writes"), so an operation waits at most about twice their sum
    before :func:`pynenc_mongo.errors.with_retry` sees the error.

    PyMongo's client-side operation timeout (``timeoutMS``, CSOT) is not set by
    default on purpose: with it, PyMongo (4.20.1, checked) uses the *remaining
    deadline* for server selection instead of ``serverSelectionTimeoutMS``, so an
    unreachable server would be reported only after the whole deadline (a 5 s
    selection timeout becomes the deadline), and the driver's retries happen within
    that one deadline, which it also sends to the server as ``maxTimeMS``. Put
    ``timeoutMS`` in the URL to choose it anyway; ``socket_timeout_seconds`` is then
    not applied (nor when the URL sets ``socketTimeoutMS``: the URL wins).

    :param str url: ``mongodb://``, ``mongodb+srv://`` or ``mongomock://`` URL.
    :param str database: database name (part of the key: one client per pair).
    :param float timeout_seconds: server selection timeout in seconds.
    :param float | None socket_timeout_seconds: socket timeout in seconds
        (``mongo_socket_timeout_seconds``); None or 0 for none.
    :return: a ``pymongo.MongoClient`` or a ``mongomock.MongoClient`` (for which the
        timeouts mean nothing).
    :raises pynenc_mongo.urls.MongoUrlError: if the URL is malformed.
    """
    if url.startswith(MOCK_SCHEME):
        key = _mock_store_key(url)
        with _lock:
            store = _mock_stores.get(key)
            if store is None:
                mongomock = embedded.require("mongomock")
                _serialize_mongomock()
                store = mongomock.MongoClient(tz_aware=True)
                _mock_stores[key] = store
            return store
    socket_timeout = float(socket_timeout_seconds) if socket_timeout_seconds else None
    client_key = (url, database, float(timeout_seconds), socket_timeout)
    with _lock:
        client = _clients.get(client_key)
        if client is None:
            parse_url(url)  # refuse malformed URLs with a redacted message
            client = _new_client(url, timeout_seconds, socket_timeout)
            _clients[client_key] = client
            _creator_pids[client_key] = os.getpid()
        return client


def timeout_options(
    url: str, timeout_seconds: float, socket_timeout_seconds: float | None
) -> dict[str, Any]:
    """The driver options for these timeouts (see :func:`get_client`), shared by the
    synchronous and the asynchronous clients.

    :return: ``{"serverSelectionTimeoutMS": ..., "socketTimeoutMS": ...}``; the
        socket timeout is left out when None/0 or when the URL sets
        ``socketTimeoutMS`` or ``timeoutMS``.
    """
    options: dict[str, Any] = {"serverSelectionTimeoutMS": int(timeout_seconds * 1000)}
    if socket_timeout_seconds and not {"sockettimeoutms", "timeoutms"} & option_names(url):
        options["socketTimeoutMS"] = max(1, int(socket_timeout_seconds * 1000))
    return options


def _new_client(
    url: str, timeout_seconds: float, socket_timeout_seconds: float | None = None
) -> MongoClient[dict[str, Any]]:
    """Create a ``MongoClient`` (no connection yet: ``connect=False``).

    :raises MongoConfigError: an option PyMongo refuses only now (for example a
        ``tlsCAFile`` that cannot be read), naming ``mongo_url``, password redacted.
    :raises MongoUnavailableError: a ``mongodb+srv://`` name that does not resolve.
    """
    from pymongo.errors import ConfigurationError

    from pynenc_mongo.config import MongoConfigError
    from pynenc_mongo.errors import MongoUnavailableError, is_dns_failure

    try:
        return MongoClient(
            url,
            tz_aware=True,
            tzinfo=UTC,
            connect=False,
            appname=APP_NAME,
            event_listeners=[LISTENER],
            **timeout_options(url, timeout_seconds, socket_timeout_seconds),
        )
    except ConfigurationError as exc:
        if is_dns_failure(exc):
            raise MongoUnavailableError(
                f"MongoDB at {redact_url(url)} is not reachable: {exc}"
            ) from None
        raise MongoConfigError(f"mongo_url {redact_url(url)!r}: {exc}") from None
    except (OSError, ValueError, TypeError) as exc:
        raise MongoConfigError(
            f"mongo_url {redact_url(url)!r}: {type(exc).__name__}: {exc}"
        ) from None


def get_database(
    url: str,
    database: str,
    timeout_seconds: float,
    socket_timeout_seconds: float | None = None,
) -> Database[dict[str, Any]]:
    """The ``Database`` for these settings (see :func:`get_client`)."""
    client = get_client(url, database, timeout_seconds, socket_timeout_seconds)
    db: Database[dict[str, Any]] = client[database]
    return db


def mock_store(url: str) -> Any:
    """The embedded store behind a ``mongomock://`` URL (for the async path and tests)."""
    client = get_client(url, "", 0.0)
    assert embedded.is_embedded(client)
    return client


def drop_mock_store(url: str) -> None:
    """Forget the embedded store behind ``url`` (tests use it for a clean slate)."""
    with _lock:
        _mock_stores.pop(_mock_store_key(url), None)


def client_creator_pids() -> list[int]:
    """The process id that created each ``MongoClient`` this process's registry holds.

    After a ``fork`` the registry is emptied, so in any process every entry equals
    ``os.getpid()``: no client (and no socket) is shared across a fork. Tests check it
    from inside worker processes.

    :return: one process id per registered real client (mongomock stores excluded).
    """
    with _lock:
        return list(_creator_pids.values())


def close_all(timeout_seconds: float | None = None) -> None:
    """Close every real client of this process. Safe to call more than once.

    Each client closes in its own daemon thread, and the wait for all of them is
    bounded: ``close`` sends ``endSessions``, which against a stalled server would
    wait for the socket timeout (or forever without one). A client still closing
    when the time is up is left to the process's exit, as are all of them where no
    thread can be started (Python 3.12 at interpreter shutdown: the operating system
    closes the sockets).

    :param float | None timeout_seconds: longest wait in all; None for
        :data:`CLOSE_TIMEOUT_SECONDS`.
    """
    with _lock:
        clients = list(_clients.values())
        _clients.clear()
        _creator_pids.clear()
    if not clients:
        return
    budget = CLOSE_TIMEOUT_SECONDS if timeout_seconds is None else timeout_seconds
    deadline = time.monotonic() + budget
    threads = [
        threading.Thread(target=_close_quietly, args=(c,), name="pynenc-mongo-close", daemon=True)
        for c in clients
    ]
    try:
        for thread in threads:
            thread.start()
    except RuntimeError:  # no new threads at interpreter shutdown (Python 3.12's atexit)
        logger.debug("pynenc-mongo: at interpreter shutdown, clients left to the exit")
        return
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    left = sum(thread.is_alive() for thread in threads)
    if left:
        logger.warning(
            "pynenc-mongo: %d MongoDB clients did not close within %g s; left to the exit",
            left,
            budget,
        )


def _close_quietly(client: Any) -> None:
    try:
        client.close()
    except Exception as exc:  # noqa: BLE001 - closing is best effort
        logger.debug("pynenc-mongo: closing a client failed: %s", exc)


def _forget_after_fork() -> None:
    """In a forked child: drop the parent's clients without closing them.

    Closing would send ``endSessions`` on sockets the parent still owns; the
    parent's objects are simply abandoned and the child creates its own.
    """
    global _lock, _MOCK_LOCK
    _lock = threading.Lock()
    _MOCK_LOCK = threading.RLock()  # another parent thread may have held it
    _clients.clear()
    _creator_pids.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(close_all)
