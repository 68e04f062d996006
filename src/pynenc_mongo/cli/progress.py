"""Progress of index builds, read from ``$currentOp`` while ``createIndexes`` runs."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from pynenc_mongo.indexes import (
    UNAUTHORIZED,
)

# ---------------------------------------------------------------------------
# Progress of index builds ($currentOp)
# ---------------------------------------------------------------------------
#: The phase in a ``$currentOp`` ``msg`` such as ``"Index Build: scanning collection
#: Index Build: scanning collection: 450/1000 45%"``.
_PHASE = re.compile(r"Index Build:\s*(.+?)(?=\s*Index Build|:|$)")


def describe_build_progress(operations: Iterable[Mapping[str, Any]]) -> str | None:
    """Summarize ``$currentOp`` documents of an index build.

    MongoDB reports a build's ``progress: {done, total}`` (documents or keys) and a
    ``msg`` such as ``"Index Build: scanning collection"`` (MongoDB manual,
    "$currentOp", output fields ``progress`` and ``msg``).

    :param Iterable[Mapping] operations: documents from ``$currentOp``.
    :return: e.g. ``"45% (450,000/1,000,000) scanning collection"``, the bare
        ``msg``, or None when nothing describes a build.
    """
    message = None
    for op in operations:
        msg = op.get("msg")
        phase = ""
        if isinstance(msg, str) and msg:
            phases = _PHASE.findall(msg)
            phase = phases[-1].strip() if phases else ""
            message = message or msg
        progress = op.get("progress")
        if isinstance(progress, Mapping):
            try:
                done, total = float(progress.get("done", 0)), float(progress.get("total", 0))
            except (TypeError, ValueError):
                continue
            if total > 0:
                text = f"{100 * done / total:.0f}% ({int(done):,}/{int(total):,})"
                return f"{text} {phase}".strip()
    return message


class BuildProgress:
    """Polls ``$currentOp`` (on the ``admin`` database) for the index builds of one
    collection. Best effort: without the ``inprog`` privilege it falls back to
    ``allUsers: false`` (the user's own operations, always allowed); where
    ``$currentOp`` is not available (mongomock, some hosted tiers) it gives up
    quietly and :meth:`poll` returns None.

    :param Collection collection: the collection whose indexes are being built.
    """

    def __init__(self, collection: Collection[Any]) -> None:
        self._client = collection.database.client
        self._namespace = f"{collection.database.name}.{collection.name}"
        self._all_users = True
        self.enabled = True

    def _pipeline(self) -> list[dict[str, Any]]:
        return [
            {"$currentOp": {"allUsers": self._all_users, "idleConnections": False}},
            {
                "$match": {
                    "ns": self._namespace,
                    "$or": [
                        {"command.createIndexes": {"$exists": True}},
                        {"msg": {"$regex": "^Index Build"}},
                    ],
                }
            },
        ]

    def poll(self) -> str | None:
        """One ``$currentOp`` round trip.

        :return: a summary (see :func:`describe_build_progress`) or None.
        """
        if not self.enabled:
            return None
        try:
            operations = list(self._client.admin.aggregate(self._pipeline()))
        except OperationFailure as exc:
            if exc.code == UNAUTHORIZED and self._all_users:
                self._all_users = False
                return self.poll()
            self.enabled = False
            return None
        except Exception:  # noqa: BLE001 - progress is optional; never fail a build for it
            self.enabled = False
            return None
        return describe_build_progress(operations)


def run_with_progress[T](
    work: Callable[[], T],
    poll: Callable[[], str | None],
    report: Callable[[str], None],
    interval_seconds: float,
) -> T:
    """Run ``work()`` in a thread, calling ``report`` with a progress line every
    ``interval_seconds`` until it returns.

    :param work: the blocking call (``createIndexes``).
    :param poll: returns a progress summary or None (see :class:`BuildProgress`).
    :param report: receives lines such as ``"building (10 s): 45% (...)"``.
    :param float interval_seconds: seconds between lines.
    :return: what ``work`` returned.
    :raises BaseException: whatever ``work`` raised.
    """
    outcome: dict[str, Any] = {}
    finished = threading.Event()

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = exc
        finally:
            finished.set()

    started = time.monotonic()
    thread = threading.Thread(target=target, name="pynenc-mongo-index-build", daemon=True)
    thread.start()
    while not finished.wait(interval_seconds):
        summary = poll()
        elapsed = time.monotonic() - started
        report(f"building ({elapsed:.0f} s)" + (f": {summary}" if summary else ""))
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value
