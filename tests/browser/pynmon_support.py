"""Helpers of the browser tests (see ``conftest.py`` for the fixtures).

The workload's ground truth (:class:`MonitorData`), the server log collector
(:class:`ServerLog`), the query audit (:class:`QueryAudit`, :func:`unserved_queries`)
and what Chromium needs (:func:`find_chromium`, the CDN asset routes).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
#: Where the screenshots go (named in the README).
SCREENSHOT_DIR = ROOT / "artifacts" / "screenshots"
#: Per-page summary (status, time, backend operations), next to the screenshots.
REPORT_FILE = ROOT / "artifacts" / "pynmon-pages.txt"
ASSETS_DIR = Path(os.environ.get("PYNMON_ASSETS_DIR", ROOT / ".cache" / "pynmon-assets"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Bounds on every wait (seconds).
SERVER_START_TIMEOUT = 20.0
PAGE_TIMEOUT_MS = 20_000


def find_chromium() -> str | None:
    """The chromium binary: ``$PYNENC_MONGO_CHROMIUM``, then ``chromium`` on PATH."""
    for candidate in (os.environ.get("PYNENC_MONGO_CHROMIUM", ""), "chromium", "chromium-browser"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


# ---------------------------------------------------------------------------
# The workload's data, read back from the backend
# ---------------------------------------------------------------------------
@dataclass
class InvocationFacts:
    """One invocation as the backend stores it."""

    invocation_id: str
    task_key: str
    func_name: str
    statuses: list[str]  # history, in order, upper case as pynmon shows them
    runner_ids: list[str]  # runner context of each history entry
    parent_id: str | None
    workflow_id: str | None
    first_ts: datetime
    last_ts: datetime

    @property
    def final_status(self) -> str:
        """The last status in the history."""
        return self.statuses[-1]


@dataclass
class MonitorData:
    """What the workload left in the backend (the ground truth for the pages)."""

    app: Any
    runs: list[list[str]]  # per workload run: its top-level invocation ids, in order
    thread_runner_ids: list[str]  # one ThreadRunner per run
    invocations: dict[str, InvocationFacts] = field(default_factory=dict)
    children: dict[str, list[str]] = field(default_factory=dict)
    workflow_runs: list[str] = field(default_factory=list)
    workflow_sub_invocations: dict[str, list[str]] = field(default_factory=dict)
    workflow_data: dict[str, dict[str, Any]] = field(default_factory=dict)
    runner_contexts: dict[str, Any] = field(default_factory=dict)

    def top(self, run: int, func_name: str) -> InvocationFacts:
        """The top-level invocation of ``func_name`` in workload run ``run`` (0-based)."""
        for inv_id in self.runs[run]:
            if self.invocations[inv_id].func_name == func_name:
                return self.invocations[inv_id]
        raise KeyError(func_name)

    @property
    def start(self) -> datetime:
        """The first history timestamp of the runs."""
        return min(f.first_ts for f in self.invocations.values())

    @property
    def end(self) -> datetime:
        """The last history timestamp of the runs."""
        return max(f.last_ts for f in self.invocations.values())


def read_back(data: MonitorData) -> None:
    """Fill ``data`` from what the backend of ``data.app`` holds."""
    from pynenc_mongo import schema

    backend = data.app.state_backend
    backend.wait_for_all_async_operations()
    for inv_id in backend.get_invocation_ids_by_workflow():
        invocation = backend.get_invocation(inv_id)
        history = backend.get_history(inv_id)
        workflow = invocation.workflow
        data.invocations[inv_id] = InvocationFacts(
            invocation_id=inv_id,
            task_key=invocation.task.task_id.key,
            func_name=invocation.task.task_id.func_name,
            statuses=[h.status_record.status.value.upper() for h in history],
            runner_ids=[h.runner_context_id for h in history],
            parent_id=invocation.parent_invocation_id,
            workflow_id=workflow.workflow_id if workflow else None,
            first_ts=history[0].timestamp,
            last_ts=history[-1].timestamp,
        )
        data.children[inv_id] = sorted(backend.get_child_invocations(inv_id))
    for run in backend.get_all_workflow_runs():
        data.workflow_runs.append(run.workflow_id)
        data.workflow_sub_invocations[run.workflow_id] = sorted(
            backend.get_workflow_sub_invocations(run.workflow_id)
        )
        data.workflow_data[run.workflow_id] = {
            key: backend.get_workflow_data(run, key) for key in ("status", "order.id", "total")
        }
    runner_ids = sorted({r for f in data.invocations.values() for r in f.runner_ids})
    data.runner_contexts = {c.runner_id: c for c in backend.get_runner_contexts(runner_ids)}
    stored = backend.collection(schema.RUNNER_CONTEXTS).count_documents({"app_id": backend.app_id})
    assert stored == len(data.runner_contexts), "a history entry names an unstored runner"


# ---------------------------------------------------------------------------
# Server-side evidence: error logs, HTTP statuses, backend queries
# ---------------------------------------------------------------------------
class ServerLog(logging.Handler):
    """Collects ERROR records (any logger) and uvicorn's access records (statuses)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.errors: list[str] = []
        self.requests: list[tuple[str, int]] = []  # (request line, status)

    def emit(self, record: logging.LogRecord) -> None:
        """Keep errors and access lines."""
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            args = record.args
            if len(args) >= 5:
                self.requests.append((f"{args[1]} {args[2]}", int(str(args[4]))))
            return
        if record.levelno >= logging.ERROR:
            self.errors.append(f"{record.name}: {self.format(record)}")

    def mark(self) -> tuple[int, int]:
        """Positions to take the records of one page from."""
        return len(self.errors), len(self.requests)

    def since(self, mark: tuple[int, int]) -> tuple[list[str], list[tuple[str, int]]]:
        """Errors and requests after ``mark``."""
        return self.errors[mark[0] :], self.requests[mark[1] :]


@dataclass
class QueryRecord:
    """One query sent to a collection: filter, and sort when the cursor was sorted."""

    collection: str
    operation: str
    filter: dict[str, Any]
    sort: list[tuple[str, int]] | None = None


class QueryAudit:
    """Records the filters (and cursor sorts) of every mongomock query while active.

    The embedded store has no ``explain``; :func:`unserved_queries` checks each
    recorded query against :data:`pynenc_mongo.schema.INDEXES` instead.
    """

    READ_METHODS = (
        "find",
        "find_one",
        "distinct",
        "count_documents",
        "find_one_and_update",
        "update_one",
        "update_many",
        "replace_one",
        "delete_many",
    )

    def __init__(self) -> None:
        self.records: list[QueryRecord] = []
        self._lock = threading.Lock()
        self._local = threading.local()

    @contextmanager
    def active(self) -> Iterator[QueryAudit]:
        """Patch mongomock's Collection and Cursor for the ``with`` block."""
        import mongomock.collection as mc

        originals: dict[tuple[type, str], Any] = {}

        def wrap(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
            def recorded(coll: Any, *args: Any, **kwargs: Any) -> Any:
                outer = not getattr(self._local, "busy", False)
                if outer:
                    if name == "distinct":
                        filter_ = args[1] if len(args) > 1 else kwargs.get("filter")
                    else:
                        filter_ = args[0] if args else kwargs.get("filter")
                    with self._lock:
                        self.records.append(QueryRecord(coll.name, name, dict(filter_ or {})))
                self._local.busy = True
                try:
                    return original(coll, *args, **kwargs)
                finally:
                    self._local.busy = not outer

            return recorded

        def wrap_sort(original: Callable[..., Any]) -> Callable[..., Any]:
            def sort(cursor: Any, key_or_list: Any, direction: Any = None) -> Any:
                keys = (
                    list(key_or_list)
                    if isinstance(key_or_list, list)
                    else [(key_or_list, direction or 1)]
                )
                with self._lock:
                    self.records.append(
                        QueryRecord(
                            cursor.collection.name,
                            "find+sort",
                            dict(cursor._spec or {}),
                            [(k, int(d)) for k, d in keys],
                        )
                    )
                return original(cursor, key_or_list, direction)

            return sort

        for name in self.READ_METHODS:
            originals[(mc.Collection, name)] = getattr(mc.Collection, name)
            setattr(mc.Collection, name, wrap(name, getattr(mc.Collection, name)))
        originals[(mc.Cursor, "sort")] = mc.Cursor.sort
        mc.Cursor.sort = wrap_sort(mc.Cursor.sort)
        try:
            yield self
        finally:
            for (cls, name), original in originals.items():
                setattr(cls, name, original)


def index_serving(logical: str, filter_: dict[str, Any], sort: list[tuple[str, int]] | None) -> Any:
    """The index that serves the query, or None: the session query audit's rule
    (``tests/query_recorder.serving_index``: equality fields, then sort fields, then one
    range field, ESR; ``_id`` equality by MongoDB's ``_id`` index; an empty filter by
    none, since it reads every app's documents)."""
    import query_recorder

    if not filter_:
        return None
    equality = set()
    ranges = set()
    for key, cond in filter_.items():
        ops = set(cond) if isinstance(cond, dict) and all(k.startswith("$") for k in cond) else None
        if ops is None or ops <= {"$eq", "$in"}:
            equality.add(key)
        else:
            ranges.add(key)
    shape = query_recorder.QueryShape(
        collection=logical,
        operation="find",
        equality=frozenset(equality),
        ranges=frozenset(ranges),
        sort=tuple(sort or ()),
    )
    return query_recorder.serving_index(shape)


def unserved_queries(records: list[QueryRecord]) -> list[str]:
    """Describe each recorded query that no index in ``schema.INDEXES`` serves."""
    from pynenc_mongo import schema

    names = {v: k for k, v in schema.CollectionNames().names.items()}
    problems = []
    for rec in records:
        logical = names.get(rec.collection)
        if logical is None:
            continue  # not one of ours
        if index_serving(logical, rec.filter, rec.sort) is None:
            problems.append(f"{logical}.{rec.operation} filter={rec.filter} sort={rec.sort}")
    return sorted(set(problems))


# ---------------------------------------------------------------------------
# pynmon on a loopback port
# ---------------------------------------------------------------------------
def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---------------------------------------------------------------------------
# Headless Chromium
# ---------------------------------------------------------------------------
MATERIAL_ICONS_CSS = """@font-face { font-family: 'Material Icons'; font-style: normal;
  font-weight: 400; src: url(https://fonts.gstatic.com/s/materialicons/material-icons.woff2)
  format('woff2'); }
.material-icons { font-family: 'Material Icons'; font-weight: normal; font-style: normal;
  font-size: 24px; line-height: 1; letter-spacing: normal; text-transform: none;
  display: inline-block; white-space: nowrap; word-wrap: normal; direction: ltr;
  -webkit-font-feature-settings: 'liga'; -webkit-font-smoothing: antialiased; }
"""
#: CDN URL prefix -> (file in ASSETS_DIR or None for inline CSS, content type)
ASSET_ROUTES = {
    "https://cdn.jsdelivr.net/npm/bootstrap@5.3.0/dist/css/bootstrap.min.css": (
        "bootstrap.min.css",
        "text/css",
    ),
    "https://cdn.jsdelivr.net/npm/bootstrap@5.3.0/dist/js/bootstrap.bundle.min.js": (
        "bootstrap.bundle.min.js",
        "application/javascript",
    ),
    "https://unpkg.com/htmx.org@1.9.2": ("htmx.min.js", "application/javascript"),
    "https://fonts.googleapis.com/icon?family=Material+Icons": (None, "text/css"),
    "https://fonts.gstatic.com/s/materialicons/": ("material-icons.woff2", "font/woff2"),
}


@dataclass
class Browser:
    """The Playwright context plus what its requests to the outside met."""

    context: Any
    assets_served: bool
    blocked: set[str] = field(default_factory=set)


def run_window(data: MonitorData) -> tuple[datetime, datetime]:
    """The runs' time range, padded by a second on each side."""
    return data.start - timedelta(seconds=1), data.end + timedelta(seconds=1)
