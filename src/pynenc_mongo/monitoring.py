"""Counting the MongoDB operations the backend issues.

On a real server a PyMongo ``CommandListener`` (PyMongo docs,
``pymongo.monitoring``) counts every command sent, ``getMore`` included: each is
one round trip. Every client made by :mod:`pynenc_mongo.client` carries it.

The embedded store (mongomock) sends no commands, so :func:`count_operations`
also wraps mongomock's ``Collection`` methods for its duration; each call of a
method that would be one command on a server counts once (a ``find`` counts
once, as its first batch; mongomock has no ``getMore``).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import mongomock.collection
from pymongo import monitoring

#: mongomock Collection methods that are one command each on a real server.
MOCK_COUNTED_METHODS = (
    "insert_one",
    "insert_many",
    "find",
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
    "bulk_write",
    "create_index",
    "list_indexes",
)
#: Commands that are driver housekeeping, not backend operations.
IGNORED_COMMANDS = frozenset(
    {
        "hello",
        "ismaster",
        "isMaster",
        "ping",
        "endSessions",
        "buildInfo",
        "saslStart",
        "saslContinue",
        "killCursors",
    }
)


class OperationCounter:
    """Thread-safe counts of operations by kind (``insert``, ``find``, ``update``...)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, kind: str) -> None:
        """Count one operation of ``kind``."""
        with self._lock:
            self.counts[kind] += 1

    @property
    def total(self) -> int:
        """All operations counted so far."""
        with self._lock:
            return sum(self.counts.values())


_active: list[OperationCounter] = []
_active_lock = threading.Lock()


def _record(kind: str) -> None:
    for counter in list(_active):
        counter.add(kind)


class _Listener(monitoring.CommandListener):
    """Counts started commands on real clients while a counter is active."""

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if _active and event.command_name not in IGNORED_COMMANDS:
            _record(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        """Not counted."""

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        """Not counted."""


LISTENER = _Listener()

_MOCK_KIND = {
    "insert_one": "insert",
    "insert_many": "insert",
    "find_one": "find",
    "find_one_and_update": "findAndModify",
    "find_one_and_replace": "findAndModify",
    "find_one_and_delete": "findAndModify",
    "update_one": "update",
    "update_many": "update",
    "replace_one": "update",
    "delete_one": "delete",
    "delete_many": "delete",
    "count_documents": "aggregate",
    "create_index": "createIndexes",
    "list_indexes": "listIndexes",
}
_originals: dict[str, Callable[..., Any]] = {}
_depth = 0


def _wrap(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    kind = _MOCK_KIND.get(name, name)

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        busy = getattr(_in_call, "busy", False)
        if _active and not busy:
            _record(kind)
        _in_call.busy = True  # mongomock methods call each other: count the outer one
        try:
            return original(self, *args, **kwargs)
        finally:
            _in_call.busy = busy

    return counted


_in_call = threading.local()


@contextmanager
def count_operations() -> Iterator[OperationCounter]:
    """Count MongoDB operations issued (by any thread) inside the ``with`` block.

    :return: (as the context value) an :class:`OperationCounter` whose ``counts``
        map operation kind (MongoDB command name) to how many were issued.
    """
    global _depth
    counter = OperationCounter()
    with _active_lock:
        if _depth == 0:
            for name in MOCK_COUNTED_METHODS:
                original = getattr(mongomock.collection.Collection, name)
                _originals[name] = original
                setattr(mongomock.collection.Collection, name, _wrap(name, original))
        _depth += 1
        _active.append(counter)
    try:
        yield counter
    finally:
        with _active_lock:
            _active.remove(counter)
            _depth -= 1
            if _depth == 0:
                for name, original in _originals.items():
                    setattr(mongomock.collection.Collection, name, original)
                _originals.clear()
