"""pytest plugin: every query pynenc-mongo issues in the test session must be served
by an index of ``pynenc_mongo.schema.INDEXES``.

Registered from ``tests/conftest.py`` (``pytest_plugins``). Recording runs for the
whole session, on both test targets:

* mongomock (the default): the query methods of ``mongomock.collection.Collection``
  (``find``, ``find_one``, ``find_one_and_*``, ``update_*``, ``replace_one``,
  ``delete_*``, ``distinct``, ``count_documents``, ``aggregate``, ``bulk_write``)
  and ``Cursor.sort`` are wrapped, as :mod:`pynenc_mongo.monitoring` does;
* a real server (``PYNENC_MONGO_TEST_URL``): a PyMongo ``CommandListener``
  registered globally (``pymongo.monitoring.register``) reads the ``find``,
  ``findAndModify``, ``update``, ``delete``, ``distinct``, ``count`` and
  ``aggregate`` commands.

Only queries issued by pynenc-mongo's code are recorded (a frame of a
``pynenc_mongo`` module on the stack, :mod:`pynenc_mongo.monitoring` excepted):
the tests' own verification queries are not the backend's.

The rule (MongoDB manual, "The ESR (Equality, Sort, Range) Guideline" and "Use
Indexes to Sort Query Results"): a query is served by an index when its equality
fields (``$eq``, ``$in`` or a plain value) are the index's first fields in any
order, its sort fields (or the ``distinct`` key) come next in index order with
one consistent direction, and a range field (``$gt``/``$gte``/``$lt``/``$lte``,
``$regex``, ``$exists``) is either the first sort field or the index field right
after the equality and sort fields. ``_id`` equality is served by the default
``_id`` index. A query with no equality, sort or range (a collection scan) is
never served; operators the checker does not know make the query unserved too,
so a new kind of query needs a deliberate look.

At the end of the session (``pytest_sessionfinish``) every distinct recorded
query is checked and an unserved one fails the run with a report naming where it
was issued; ``tests/test_query_coverage.py`` runs the same check as a test
ordered last.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import mongomock.collection
import pytest
from bson.regex import Regex
from pymongo import monitoring

from pynenc_mongo.schema import ALL_COLLECTIONS, ID_INDEX_NAME, INDEXES, IndexSpec

COVERAGE_TEST = "test_every_query_the_suite_issued_is_served_by_an_index"

EQUALITY_OPERATORS = frozenset({"$eq", "$in"})
RANGE_OPERATORS = frozenset({"$gt", "$gte", "$lt", "$lte", "$regex", "$options", "$exists"})
_LOGICAL_BY_LENGTH = sorted(ALL_COLLECTIONS, key=len, reverse=True)
_ID_KEYS: tuple[tuple[str, int], ...] = (("_id", 1),)


# ---------------------------------------------------------------------------
# Query shapes and the checker
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class QueryShape:
    """What matters of one query for index selection.

    :ivar str collection: logical collection name.
    :ivar str operation: the method or command (``find``, ``update_one``, ...).
    :ivar frozenset equality: fields compared by equality (``$eq``/``$in``/value).
    :ivar frozenset ranges: fields with range, ``$regex`` or ``$exists`` conditions.
    :ivar tuple sort: ``((field, 1 | -1), ...)``.
    :ivar str | None distinct: the ``distinct`` key.
    :ivar tuple problems: operators the checker does not understand.
    :ivar str where: ``module:line in function`` of the pynenc-mongo caller.
    """

    collection: str
    operation: str
    equality: frozenset[str] = frozenset()
    ranges: frozenset[str] = frozenset()
    sort: tuple[tuple[str, int], ...] = ()
    distinct: str | None = None
    problems: tuple[str, ...] = ()
    where: str = ""

    def describe(self) -> str:
        """Readable one-liner for reports."""
        parts = [f"{self.collection}.{self.operation}"]
        parts.append(f"equality={sorted(self.equality)}")
        if self.ranges:
            parts.append(f"range={sorted(self.ranges)}")
        if self.sort:
            parts.append(f"sort={list(self.sort)}")
        if self.distinct:
            parts.append(f"distinct={self.distinct!r}")
        if self.problems:
            parts.append(f"problems={list(self.problems)}")
        return " ".join(parts) + (f"  <- {self.where}" if self.where else "")


def analyze_filter(
    query: Mapping[str, Any] | None,
) -> tuple[frozenset[str], frozenset[str], tuple[str, ...]]:
    """Split a query filter into equality fields, range fields and problems.

    :param Mapping | None query: a MongoDB query filter.
    :return: ``(equality, ranges, problems)``.
    """
    equality: set[str] = set()
    ranges: set[str] = set()
    problems: list[str] = []
    for key, value in (query or {}).items():
        if key == "$and" and isinstance(value, list):
            for part in value:
                eq, rng, prob = analyze_filter(part)
                equality |= eq
                ranges |= rng
                problems += prob
        elif key.startswith("$"):
            problems.append(f"top-level {key}")
        elif isinstance(value, Mapping) and any(str(k).startswith("$") for k in value):
            operators = set(value)
            if operators <= EQUALITY_OPERATORS and len(operators) == 1:
                equality.add(key)
            elif operators <= RANGE_OPERATORS:
                ranges.add(key)
            else:
                unknown = sorted(operators - EQUALITY_OPERATORS - RANGE_OPERATORS)
                problems.append(f"{key}: {', '.join(unknown) or sorted(operators)}")
        elif isinstance(value, re.Pattern | Regex):
            ranges.add(key)
        else:
            equality.add(key)
    return frozenset(equality), frozenset(ranges), tuple(problems)


def _serves(keys: tuple[tuple[str, int], ...], query: QueryShape) -> bool:
    fields = [name for name, _direction in keys]
    equality = query.equality
    if "_id" in equality and fields == ["_id"]:
        return True
    sort = [(name, direction) for name, direction in query.sort if name not in equality]
    if query.distinct and query.distinct not in equality and not sort:
        sort = [(query.distinct, 0)]  # any direction
    if not equality and not sort and not query.ranges:
        return False  # nothing bounds the scan: a collection scan
    position = len(equality)
    if set(fields[:position]) != equality:
        return False
    allowed: set[str] = set()
    if sort:
        span = keys[position : position + len(sort)]
        if [name for name, _d in span] != [name for name, _d in sort]:
            return False
        signs = {int(d1) * int(d2) for (_n1, d1), (_n2, d2) in zip(span, sort, strict=True) if d2}
        if len(signs) > 1:
            return False
        allowed.add(sort[0][0])
        position += len(sort)
    if position < len(fields):
        allowed.add(fields[position])
    return query.ranges <= allowed


def serving_index(query: QueryShape, indexes: Iterable[IndexSpec] = INDEXES) -> str | None:
    """The name of an index that serves ``query``, or None.

    :param QueryShape query: the query.
    :param Iterable[IndexSpec] indexes: the definitions (default ``schema.INDEXES``).
    :return: an index name (``_id_`` for the default index) or None.
    """
    specs = [spec for spec in indexes if spec.collection == query.collection]
    for spec in specs:
        # Equality on every key of a unique index: one document at most is examined,
        # whatever else the filter asks of it (a precondition, such as ``$ne``).
        if spec.unique and spec.partial_filter is None and not query.sort:
            if {name for name, _ in spec.keys} <= query.equality:
                return spec.name
    if query.problems:
        return None
    candidates = [(spec.name, spec.keys) for spec in specs]
    candidates.append((ID_INDEX_NAME, _ID_KEYS))
    for name, keys in candidates:
        if _serves(keys, query):
            return name
    return None


def logical_collection(name: str) -> str | None:
    """Logical name of a physical collection (by suffix), or None if not ours."""
    return next((logical for logical in _LOGICAL_BY_LENGTH if name.endswith(logical)), None)


def _sort_pairs(sort: Any) -> tuple[tuple[str, int], ...]:
    if not sort:
        return ()
    if isinstance(sort, str):
        return ((sort, 1),)
    items = sort.items() if isinstance(sort, Mapping) else sort
    pairs = []
    for item in items:
        name, direction = (item, 1) if isinstance(item, str) else item
        pairs.append((str(name), int(direction) if isinstance(direction, int | float) else 1))
    return tuple(pairs)


# ---------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------
@dataclass
class _Pending:
    """A recorded query; ``sort`` may be set later by ``Cursor.sort``."""

    collection: str
    operation: str
    equality: frozenset[str]
    ranges: frozenset[str]
    problems: tuple[str, ...]
    where: str
    sort: tuple[tuple[str, int], ...] = ()
    distinct: str | None = None

    def shape(self) -> QueryShape:
        return QueryShape(
            self.collection,
            self.operation,
            self.equality,
            self.ranges,
            self.sort,
            self.distinct,
            self.problems,
            self.where,
        )


#: pynenc-mongo modules that are generic helpers: they count as pynenc-mongo code, but
#: the report names their caller (monitoring's wrappers and the embedded client's lock
#: wrapper do not count at all: a test's own query passes through them). The store
#: layer is one: the report names the component that asked it.
_HELPER_MODULES = frozenset(
    {"pynenc_mongo.errors", "pynenc_mongo.operations", "pynenc_mongo.store"}
)


#: Wrappers every query passes through, whoever issued it.
_PASS_THROUGH_MODULES = frozenset({"pynenc_mongo.monitoring", "pynenc_mongo.client"})


def _caller_in_package() -> str | None:
    """``module:line in function`` of the pynenc_mongo frame that issued the query
    (helpers skipped), or None when no pynenc_mongo code is on the stack."""
    frame: Any = sys._getframe(2)
    helper = None
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if isinstance(module, str) and module.startswith("pynenc_mongo"):
            where = f"{module}:{frame.f_lineno} in {frame.f_code.co_name}"
            if module in _HELPER_MODULES:
                helper = helper or where
            elif module not in _PASS_THROUGH_MODULES:
                return where
        frame = frame.f_back
    return helper


@dataclass
class Recorder:
    """Collects :class:`_Pending` queries (thread-safe)."""

    queries: list[_Pending] = field(default_factory=list)
    scope_all: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(
        self,
        collection_name: str,
        operation: str,
        query: Mapping[str, Any] | None,
        sort: Any = None,
        distinct: str | None = None,
    ) -> _Pending | None:
        """Record one query if its collection is ours and pynenc-mongo issued it."""
        logical = logical_collection(collection_name)
        if logical is None:
            return None
        where = _caller_in_package()
        if where is None:
            if not self.scope_all:
                return None
            where = "(test code)"
        equality, ranges, problems = analyze_filter(query)
        pending = _Pending(
            logical, operation, equality, ranges, problems, where, _sort_pairs(sort), distinct
        )
        with self.lock:
            self.queries.append(pending)
        return pending

    def shapes(self) -> set[QueryShape]:
        """Every distinct recorded query."""
        with self.lock:
            return {pending.shape() for pending in self.queries}

    def unserved(self) -> list[QueryShape]:
        """Recorded queries no index serves, sorted for the report."""
        return sorted(
            (shape for shape in self.shapes() if serving_index(shape) is None),
            key=lambda s: s.describe(),
        )


SESSION = Recorder()
_active: list[Recorder] = [SESSION]
_in_call = threading.local()


def _current() -> Recorder:
    return _active[-1]


@contextmanager
def capture(scope_all: bool = False) -> Iterator[Recorder]:
    """Divert recording to a fresh :class:`Recorder` (for the checker's self-test;
    queries issued inside are not part of the session's check).

    :param bool scope_all: record queries issued by test code too.
    """
    recorder = Recorder(scope_all=scope_all)
    _active.append(recorder)
    try:
        yield recorder
    finally:
        _active.remove(recorder)


# -- mongomock ----------------------------------------------------------------
def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else None


_EXTRACT: dict[str, Callable[[tuple[Any, ...], dict[str, Any]], tuple[Any, Any, Any]]] = {
    "find": lambda a, k: (_arg(a, k, 0, "filter"), k.get("sort"), None),
    "find_one": lambda a, k: (_arg(a, k, 0, "filter"), k.get("sort"), None),
    "find_one_and_update": lambda a, k: (_arg(a, k, 0, "filter"), _arg(a, k, 3, "sort"), None),
    "find_one_and_replace": lambda a, k: (_arg(a, k, 0, "filter"), _arg(a, k, 3, "sort"), None),
    "find_one_and_delete": lambda a, k: (_arg(a, k, 0, "filter"), _arg(a, k, 2, "sort"), None),
    "update_one": lambda a, k: (_arg(a, k, 0, "filter"), None, None),
    "update_many": lambda a, k: (_arg(a, k, 0, "filter"), None, None),
    "replace_one": lambda a, k: (_arg(a, k, 0, "filter"), None, None),
    "delete_one": lambda a, k: (_arg(a, k, 0, "filter"), None, None),
    "delete_many": lambda a, k: (_arg(a, k, 0, "filter"), None, None),
    "count_documents": lambda a, k: (_arg(a, k, 0, "filter"), None, None),
    "distinct": lambda a, k: (_arg(a, k, 1, "filter"), None, _arg(a, k, 0, "key")),
}
#: Methods wrapped only so that the queries they make internally are not recorded.
_QUIET = (
    "insert_one",
    "insert_many",
    "estimated_document_count",
    "create_index",
    "create_indexes",
    "list_indexes",
    "index_information",
    "drop_index",
    "drop_indexes",
)


def _pipeline_query(pipeline: Any) -> tuple[Any, Any]:
    stages = list(pipeline or [])
    query = stages[0].get("$match") if stages and isinstance(stages[0], Mapping) else None
    sort = None
    if len(stages) > 1 and isinstance(stages[1], Mapping):
        sort = stages[1].get("$sort")
    return (query if query is not None else {}), sort


def _wrap(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def recorded(self: Any, *args: Any, **kwargs: Any) -> Any:
        outer = not getattr(_in_call, "busy", False)
        pending: _Pending | None = None
        if outer:
            recorder = _current()
            if name in _EXTRACT:
                query, sort, distinct = _EXTRACT[name](args, kwargs)
                if query is not None and not isinstance(query, Mapping):
                    query = {"_id": query}
                pending = recorder.add(self.name, name, query, sort, distinct)
            elif name == "aggregate":
                query, sort = _pipeline_query(_arg(args, kwargs, 0, "pipeline"))
                recorder.add(self.name, name, query, sort)
            elif name == "bulk_write":
                for request in _arg(args, kwargs, 0, "requests") or []:
                    query = getattr(request, "_filter", None)
                    if query is not None:
                        recorder.add(self.name, type(request).__name__, query)
        _in_call.busy = True
        try:
            result = original(self, *args, **kwargs)
        finally:
            _in_call.busy = not outer
        if pending is not None and name == "find":
            result._pynenc_query = pending
        return result

    recorded.__wrapped__ = original  # type: ignore[attr-defined]
    return recorded


def _wrap_sort(original: Callable[..., Any]) -> Callable[..., Any]:
    def sort(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        pending = getattr(self, "_pynenc_query", None)
        if pending is not None:
            pending.sort = _sort_pairs(getattr(self, "_sort", None))
        return result

    return sort


_originals: list[tuple[type, str, Any]] = []


def install_mongomock() -> None:
    """Wrap mongomock's query methods (idempotent)."""
    if _originals:
        return
    collection_cls = mongomock.collection.Collection
    for name in (*_EXTRACT, "aggregate", "bulk_write", *_QUIET):
        original = getattr(collection_cls, name)
        _originals.append((collection_cls, name, original))
        setattr(collection_cls, name, _wrap(name, original))
    cursor_cls = mongomock.collection.Cursor
    _originals.append((cursor_cls, "sort", cursor_cls.sort))
    cursor_cls.sort = _wrap_sort(cursor_cls.sort)


def uninstall_mongomock() -> None:
    """Restore mongomock's methods."""
    while _originals:
        owner, name, original = _originals.pop()
        setattr(owner, name, original)


# -- real server --------------------------------------------------------------
class CommandRecorder(monitoring.CommandListener):
    """Records the queries of the commands PyMongo sends (real server)."""

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        command = event.command
        name = event.command_name
        target = command.get(name)
        if not isinstance(target, str):
            return
        recorder = _current()
        if name == "find":
            recorder.add(target, "find", command.get("filter", {}), command.get("sort"))
        elif name == "findAndModify":
            recorder.add(target, "findAndModify", command.get("query", {}), command.get("sort"))
        elif name == "update":
            for update in command.get("updates", []):
                recorder.add(target, "update", update.get("q", {}))
        elif name == "delete":
            for delete in command.get("deletes", []):
                recorder.add(target, "delete", delete.get("q", {}))
        elif name == "distinct":
            recorder.add(target, "distinct", command.get("query", {}), None, command.get("key"))
        elif name == "count" and command.get("query"):
            recorder.add(target, "count", command.get("query"))
        elif name == "aggregate":
            query, sort = _pipeline_query(command.get("pipeline"))
            recorder.add(target, "aggregate", query, sort)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        """Not needed."""

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        """Not needed."""


def report_lines(unserved: list[QueryShape], checked: int) -> list[str]:
    """The failure report for unserved queries."""
    lines = [
        f"{len(unserved)} of {checked} distinct queries issued by pynenc-mongo are not "
        "served by any index in pynenc_mongo.schema.INDEXES:"
    ]
    lines += [f"  {shape.describe()}" for shape in unserved]
    lines.append(
        "Add an index to schema.INDEXES whose fields are the equality fields, then the sort "
        "fields, then a range field (or change the query); see tests/query_recorder.py."
    )
    return lines


# ---------------------------------------------------------------------------
# pytest hooks
# ---------------------------------------------------------------------------
_report_key = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    """Start recording for the whole session."""
    install_mongomock()
    monitoring.register(CommandRecorder())


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop recording (the global command listener stays; it records nothing then)."""
    uninstall_mongomock()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the query-coverage test last, after every other test issued its queries."""
    last = [item for item in items if item.name == COVERAGE_TEST]
    if last:
        items[:] = [item for item in items if item.name != COVERAGE_TEST] + last


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any recorded query is not served by an index."""
    shapes = SESSION.shapes()
    if not shapes:
        return
    unserved = SESSION.unserved()
    if unserved:
        session.config.stash[_report_key] = report_lines(unserved, len(shapes))
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    else:
        session.config.stash[_report_key] = [
            f"{len(shapes)} distinct queries issued by pynenc-mongo, each served by an index"
        ]


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print the query-coverage result."""
    lines = config.stash.get(_report_key, None)
    if not lines:
        return
    failed = len(lines) > 1
    terminalreporter.write_sep("-", "query coverage" + (" FAILED" if failed else ""))
    for line in lines:
        terminalreporter.write_line(line, red=failed)
