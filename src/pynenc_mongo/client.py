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

Clients are created with ``tz_aware=True, tzinfo=UTC``: dates come back as
timezone-aware UTC datetimes.
"""

from __future__ import annotations

import atexit
import os
import threading
from datetime import UTC
from typing import Any

import mongomock
from pymongo import MongoClient
from pymongo.database import Database

from pynenc_mongo.monitoring import LISTENER
from pynenc_mongo.urls import MOCK_SCHEME, parse_url

APP_NAME = "pynenc-mongo"

_lock = threading.Lock()
_clients: dict[tuple[str, str, float], MongoClient[dict[str, Any]]] = {}
_mock_stores: dict[str, Any] = {}


def _mock_store_key(url: str) -> str:
    """``mongomock://name/db?x`` -> ``name``: the store's identity."""
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
            client = MongoClient(
                url,
                tz_aware=True,
                tzinfo=UTC,
                connect=False,
                appname=APP_NAME,
                serverSelectionTimeoutMS=int(timeout_seconds * 1000),
                event_listeners=[LISTENER],
            )
            _clients[client_key] = client
        return client


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


def close_all() -> None:
    """Close every real client of this process. Safe to call more than once."""
    with _lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()


def _forget_after_fork() -> None:
    """In a forked child: drop the parent's clients without closing them.

    Closing would send ``endSessions`` on sockets the parent still owns; the
    parent's objects are simply abandoned and the child creates its own.
    """
    global _lock
    _lock = threading.Lock()
    _clients.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(close_all)
