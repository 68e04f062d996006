"""Counting the MongoDB operations the backend issues.

On a real server a PyMongo ``CommandListener`` (PyMongo docs,
``pymongo.monitoring``) counts every command sent, ``getMore`` included: each is
one round trip. Every client made by :mod:`pynenc_mongo.client` carries it.

The embedded store (mongomock) sends no commands, so :func:`count_operations`
also wraps mongomock's ``Collection`` methods for its duration; each call of a
method that would be one command on a server counts once (a ``find`` counts
once, as its first batch; mongomock has no ``getMore``).

Besides counts, a counter measures the time spent inside the store: from each
command's start to its reply on a real server (a round trip plus the server's
work), inside each counted mongomock call on the embedded store. ``seconds``
sums every operation's time (over all threads); ``busy_seconds`` is the wall
time during which at least one operation was in progress; ``cpu_seconds`` is
the CPU time this process spent inside the embedded store (mongomock's work,
which a real server does on its own machine; zero on real servers, where the
driver's own work stays outside the store).
"""

from __future__ import annotations

import importlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pymongo import monitoring

from pynenc_mongo import embedded

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
    """Thread-safe counts of operations by kind (``insert``, ``find``, ``update``...)
    and the time spent inside the store (see the module docstring).

    :ivar Counter counts: operations by kind (MongoDB command name).
    :ivar float seconds: time inside store operations, summed over operations.
    :ivar float busy_seconds: wall time with at least one operation in progress.
    :ivar float cpu_seconds: CPU time of this process inside the embedded store.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.seconds = 0.0
        self.busy_seconds = 0.0
        self.cpu_seconds = 0.0

    def add(self, kind: str) -> None:
        """Count one operation of ``kind``."""
        with self._lock:
            self.counts[kind] += 1

    def add_time(self, seconds: float) -> None:
        """Add one operation's duration."""
        with self._lock:
            self.seconds += seconds

    def add_busy(self, seconds: float) -> None:
        """Add a stretch of wall time during which operations were in progress."""
        with self._lock:
            self.busy_seconds += seconds

    def add_cpu(self, seconds: float) -> None:
        """Add CPU time spent inside the embedded store."""
        with self._lock:
            self.cpu_seconds += seconds

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


# Operations in progress (any thread), for ``busy_seconds``.
_inside_lock = threading.Lock()
_inside = 0
_busy_since = 0.0


def _enter() -> float:
    """An operation starts: returns its start time."""
    global _inside, _busy_since
    now = time.perf_counter()
    with _inside_lock:
        if _inside == 0:
            _busy_since = now
        _inside += 1
    return now


def _leave(started: float, cpu: float = 0.0) -> None:
    """The operation that started at ``started`` ended, having used ``cpu`` seconds
    of this thread's CPU time inside the embedded store."""
    global _inside
    now = time.perf_counter()
    with _inside_lock:
        _inside -= 1
        busy = now - _busy_since if _inside == 0 else 0.0
    for counter in list(_active):
        counter.add_time(now - started)
        if busy:
            counter.add_busy(busy)
        if cpu:
            counter.add_cpu(cpu)


class _Listener(monitoring.CommandListener):
    """Counts and times started commands on real clients while a counter is active."""

    def __init__(self) -> None:
        self._started: dict[tuple[int, Any], float] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if _active and event.command_name not in IGNORED_COMMANDS:
            _record(event.command_name)
            self._started[(event.request_id, event.connection_id)] = _enter()

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        """Times the command, if it was counted."""
        self._finished(event.request_id, event.connection_id)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        """Times the command, if it was counted."""
        self._finished(event.request_id, event.connection_id)

    def _finished(self, request_id: int, connection_id: Any) -> None:
        started = self._started.pop((request_id, connection_id), None)
        if started is not None:
            _leave(started)


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


def _wrap(original: Callable[..., Any], kind: str | None) -> Callable[..., Any]:
    """Wrap a mongomock method: count it as one ``kind`` operation (when ``kind`` is
    given) and time it, unless it runs inside another wrapped call (mongomock
    methods call each other: only the outer one counts). ``kind=None`` times without
    counting: a ``find`` runs when its cursor is first read, after the counted
    ``find`` call has returned."""

    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        busy = getattr(_in_call, "busy", False)
        started = None
        cpu = 0.0
        if _active and not busy:
            if kind is not None:
                _record(kind)
            started = _enter()
            cpu = time.thread_time()
        _in_call.busy = True
        try:
            return original(self, *args, **kwargs)
        finally:
            _in_call.busy = busy
            if started is not None:
                _leave(started, time.thread_time() - cpu)

    return wrapped


_in_call = threading.local()
#: mongomock's cursor method that runs a query (timed, not counted).
_CURSOR_QUERY = "_compute_results"
_cursor_original: list[Callable[..., Any]] = []


def _mongomock_collection() -> Any:
    """``mongomock.collection`` when the embedded store is installed, else None."""
    if not embedded.installed():
        return None
    return importlib.import_module("mongomock.collection")


@contextmanager
def count_operations() -> Iterator[OperationCounter]:
    """Count MongoDB operations issued (by any thread) inside the ``with`` block.

    :return: (as the context value) an :class:`OperationCounter` whose ``counts``
        map operation kind (MongoDB command name) to how many were issued.
    """
    global _depth
    counter = OperationCounter()
    mock = _mongomock_collection()
    with _active_lock:
        if _depth == 0 and mock is not None:
            for name in MOCK_COUNTED_METHODS:
                original = getattr(mock.Collection, name)
                _originals[name] = original
                setattr(
                    mock.Collection,
                    name,
                    _wrap(original, _MOCK_KIND.get(name, name)),
                )
            compute = getattr(mock.Cursor, _CURSOR_QUERY)
            _cursor_original.append(compute)
            setattr(mock.Cursor, _CURSOR_QUERY, _wrap(compute, None))
        _depth += 1
        _active.append(counter)
    try:
        yield counter
    finally:
        with _active_lock:
            _active.remove(counter)
            _depth -= 1
            if _depth == 0 and mock is not None:
                for name, original in _originals.items():
                    setattr(mock.Collection, name, original)
                _originals.clear()
                setattr(mock.Cursor, _CURSOR_QUERY, _cursor_original.pop())
