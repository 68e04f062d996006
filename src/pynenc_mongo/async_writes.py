"""History writers: synchronous, or asynchronous with per-invocation tracking.

(The asynchronous writer is added below the synchronous one.)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pynenc_mongo.state_backend import MongoStateBackend


class HistoryWriter(Protocol):
    """What the backend needs from a history writer."""

    def submit(self, docs: list[dict[str, Any]]) -> None:
        """Write (or schedule) history documents."""

    def wait(self, invocation_id: str) -> None:
        """Block until this invocation's writes issued so far are durable."""

    def wait_all(self) -> None:
        """Block until every write issued so far is durable."""

    def close(self) -> None:
        """Flush and stop."""

    def is_stale(self) -> bool:
        """True in a forked child: the writer must be re-created there."""


class SyncHistoryWriter:
    """Writes each batch before returning (pynenc 0.4's contract)."""

    def __init__(self, backend: MongoStateBackend) -> None:
        self._backend = backend
        self._pid = os.getpid()

    def submit(self, docs: list[dict[str, Any]]) -> None:
        """Insert ``docs`` now, in one ``insert_many``."""
        self._backend.write_history_now(docs)

    def wait(self, invocation_id: str) -> None:
        """Nothing is ever pending: returns at once."""

    def wait_all(self) -> None:
        """Nothing is ever pending: returns at once."""

    def close(self) -> None:
        """Nothing to flush."""

    def is_stale(self) -> bool:
        """True after a fork (harmless for this writer, but keeps one rule)."""
        return self._pid != os.getpid()


def make_history_writer(backend: MongoStateBackend) -> HistoryWriter:
    """Build the writer that ``mongo_history_write_mode`` selects."""
    return SyncHistoryWriter(backend)
