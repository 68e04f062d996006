"""One MongoDB client per process and connection settings.

PyMongo's ``MongoClient`` is thread-safe and holds a connection pool, so a
process needs one per deployment; it is *not* fork-safe (PyMongo docs, "Is
PyMongo fork-safe?"). This registry therefore:

* creates clients lazily, keyed by (URL, database, server selection timeout);
* forgets every real client in a child right after ``fork`` (the child builds
  its own on first use; the parent's sockets are never touched by the child);
  a ``spawn`` child starts with an empty registry anyway;
* closes every client at interpreter exit (``atexit``).

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
import os
import threading
from datetime import UTC
from typing import Any

import mongomock
from pymongo import MongoClient
from pymongo.database import Database

from pynenc_mongo.monitoring import LISTENER
from pynenc_mongo.urls import MOCK_SCHEME, parse_url, redact_url

APP_NAME = "pynenc-mongo"

_lock = threading.Lock()
_clients: dict[tuple[str, str, float], MongoClient[dict[str, Any]]] = {}
#: The process id that created each registered client (see :func:`client_creator_pids`).
_creator_pids: dict[tuple[str, str, float], int] = {}
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


_serialize_mongomock()


@functools.lru_cache(maxsize=64)
def _mock_store_key(url: str) -> str:
    """``mongomock://name/db?x`` -> ``name``: the store's identity (parsed once per URL:
    every operation of the backend asks for its client)."""
    return parse_url(url).hosts[0]


def get_client(url: str, database: str, timeout_seconds: float) -> Any:
    """Return this process's client for these settings, creating it on first use.

    :param str url: ``mongodb://``, ``mongodb+srv://`` or ``mongomock://`` URL.
    :param str database: database name (part of the key: one client per pair).
    :param float timeout_seconds: server selection timeout in seconds.
    :return: a ``pymongo.MongoClient`` or a ``mongomock.MongoClient``.
    :raises pynenc_mongo.urls.MongoUrlError: if the URL is malformed.
    """
    if url.startswith(MOCK_SCHEME):
        key = _mock_store_key(url)
        with _lock:
            store = _mock_stores.get(key)
            if store is None:
                store = mongomock.MongoClient(tz_aware=True)
                _mock_stores[key] = store
            return store
    client_key = (url, database, float(timeout_seconds))
    with _lock:
        client = _clients.get(client_key)
        if client is None:
            parse_url(url)  # refuse malformed URLs with a redacted message
            client = _new_client(url, timeout_seconds)
            _clients[client_key] = client
            _creator_pids[client_key] = os.getpid()
        return client


def _new_client(url: str, timeout_seconds: float) -> MongoClient[dict[str, Any]]:
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
            serverSelectionTimeoutMS=int(timeout_seconds * 1000),
            event_listeners=[LISTENER],
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


def get_database(url: str, database: str, timeout_seconds: float) -> Database[dict[str, Any]]:
    """The ``Database`` for these settings (see :func:`get_client`)."""
    db: Database[dict[str, Any]] = get_client(url, database, timeout_seconds)[database]
    return db


def mock_store(url: str) -> Any:
    """The embedded store behind a ``mongomock://`` URL (for the async path and tests)."""
    client = get_client(url, "", 0.0)
    assert isinstance(client, mongomock.MongoClient)
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


def close_all() -> None:
    """Close every real client of this process. Safe to call more than once."""
    with _lock:
        clients = list(_clients.values())
        _clients.clear()
        _creator_pids.clear()
    for client in clients:
        client.close()


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
