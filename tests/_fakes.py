"""Test helpers: DTO builders and collection stand-ins that inject faults.

``FaultyCollection`` wraps a real collection (mongomock, or PyMongo against a
server) and raises PyMongo's own network errors a set number of times before
delegating; ``after=True`` applies the operation first and then raises, which
is a lost reply: the write happened but the client does not know. Cursors
returned by ``find`` fail the way PyMongo's do: once a cursor has raised a
connection error it is dead and yields nothing more.

``SizeLimitedCollection`` enforces MongoDB's 16 MiB document limit on writes,
which mongomock does not (MongoDB manual, "BSON Document Size"): inserts raise
``DocumentTooLarge`` like PyMongo does before sending, updates raise the
server's ``OperationFailure`` code 17419.
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import bson
from pymongo.errors import AutoReconnect, DocumentTooLarge, OperationFailure

MAX_BSON = 16 * 1024 * 1024

WRITE_METHODS = (
    "insert_one",
    "insert_many",
    "update_one",
    "update_many",
    "replace_one",
    "find_one_and_update",
    "delete_many",
)


def make_dtos(
    inv_id: str | None = None,
    arguments: dict[str, str] | None = None,
    *,
    module: str = "tests.module",
    func_name: str = "task",
    parent: str | None = None,
    workflow_id: str | None = None,
) -> tuple[Any, Any]:
    """An ``(InvocationDTO, CallDTO)`` pair as pynenc builds them (0.2.3 and 0.4)."""
    from pynenc.identifiers.call_id import CallId
    from pynenc.identifiers.task_id import TaskId
    from pynenc.models.call_dto import CallDTO
    from pynenc.models.invocation_dto import InvocationDTO
    from pynenc.workflow.workflow_identity import WorkflowIdentity

    inv_id = inv_id or str(uuid.uuid4())
    task_id = TaskId(module, func_name)
    call_id = CallId(task_id=task_id, args_id=f"args-{inv_id}")
    workflow = WorkflowIdentity(workflow_id=workflow_id or inv_id, workflow_type=task_id)
    inv = InvocationDTO(
        invocation_id=inv_id, call_id=call_id, workflow=workflow, parent_invocation_id=parent
    )
    return inv, CallDTO(call_id=call_id, serialized_arguments=dict(arguments or {}))


def workflow_identity(workflow_id: str) -> Any:
    """A ``WorkflowIdentity`` for workflow-data calls."""
    from pynenc.identifiers.task_id import TaskId
    from pynenc.workflow.workflow_identity import WorkflowIdentity

    return WorkflowIdentity(workflow_id=workflow_id, workflow_type=TaskId("tests.module", "wf"))


class FaultPlan:
    """How many times each method fails, and how (thread-safe).

    :param dict failures: method name -> number of failures left.
    :param exc_factory: builds the exception to raise.
    :param bool after: apply the operation, then raise (a lost reply).
    """

    def __init__(
        self,
        failures: dict[str, int] | None = None,
        exc_factory: Callable[[str], BaseException] | None = None,
        after: bool = False,
    ) -> None:
        self.failures = dict(failures or {})
        self.exc_factory = exc_factory or (lambda name: AutoReconnect(f"fake: {name} lost"))
        self.after = after
        self.raised: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, name: str) -> BaseException | None:
        """The exception to raise for this call of ``name``, or None."""
        with self._lock:
            left = self.failures.get(name, 0)
            if left <= 0:
                return None
            self.failures[name] = left - 1
            self.raised[name] = self.raised.get(name, 0) + 1
            return self.exc_factory(name)


class FaultyCursor:
    """A cursor that fails like PyMongo's: after a connection error it is dead.

    The plan's ``find`` failures hit the first document, ``getmore`` ones any later one.
    """

    def __init__(self, make: Callable[[], Any], plan: FaultPlan) -> None:
        self._make = make
        self._plan = plan
        self._sort: list[Any] = []
        self._batch: int | None = None
        self._iter: Iterator[dict[str, Any]] | None = None
        self._dead = False

    def sort(self, *args: Any, **kwargs: Any) -> FaultyCursor:
        self._sort.append((args, kwargs))
        return self

    def batch_size(self, size: int) -> FaultyCursor:
        self._batch = size
        return self

    def __iter__(self) -> FaultyCursor:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._dead:
            raise StopIteration
        if self._iter is None:
            exc = self._plan.take("find")
            if exc is not None:
                self._dead = True
                raise exc
            cursor = self._make()
            for args, kwargs in self._sort:
                cursor = cursor.sort(*args, **kwargs)
            self._iter = iter(cursor)
        else:
            exc = self._plan.take("getmore")  # the connection drops mid-cursor
            if exc is not None:
                self._dead = True
                raise exc
        doc: dict[str, Any] = next(self._iter)
        return doc


class FaultyCollection:
    """A collection whose methods raise network errors per a :class:`FaultPlan`."""

    def __init__(self, inner: Any, plan: FaultPlan) -> None:
        self._inner = inner
        self._plan = plan

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name == "find":

            def find(*args: Any, **kwargs: Any) -> FaultyCursor:
                return FaultyCursor(lambda: attr(*args, **kwargs), self._plan)

            return find
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            exc = self._plan.take(name)
            if exc is not None and not self._plan.after:
                raise exc
            result = attr(*args, **kwargs)
            if exc is not None:
                raise exc
            return result

        return call


def install_faults(monkeypatch: Any, backend: Any, plan: FaultPlan) -> None:
    """Make every collection ``backend`` uses (through its store) a
    :class:`FaultyCollection` with ``plan``."""
    original = backend.store.collection

    def faulty(logical: str) -> FaultyCollection:
        return FaultyCollection(original(logical), plan)

    monkeypatch.setattr(backend.store, "collection", faulty)


def _set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        doc = doc.setdefault(part, {})
    doc[parts[-1]] = value


class SizeLimitedCollection:
    """A collection that refuses documents over 16 MiB, as MongoDB does."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @staticmethod
    def _check_insert(doc: dict[str, Any]) -> None:
        size = len(bson.encode(doc))
        if size > MAX_BSON:
            raise DocumentTooLarge(f"BSON document too large ({size} bytes)")

    def _check_update(self, filter_: dict[str, Any], update: dict[str, Any]) -> None:
        current = self._inner.find_one(filter_) or {}
        after = copy.deepcopy(current)
        for path, value in update.get("$set", {}).items():
            _set_path(after, path, value)
        size = len(bson.encode(after))
        if size > MAX_BSON:
            raise OperationFailure(
                f"Resulting document after update is larger than {MAX_BSON}", code=17419
            )

    def insert_one(self, doc: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        self._check_insert(doc)
        return self._inner.insert_one(doc, *args, **kwargs)

    def insert_many(self, docs: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        for doc in docs:
            self._check_insert(doc)
        return self._inner.insert_many(docs, *args, **kwargs)

    def replace_one(self, filter_: dict[str, Any], doc: dict[str, Any], *a: Any, **k: Any) -> Any:
        self._check_insert(doc)
        return self._inner.replace_one(filter_, doc, *a, **k)

    def update_one(self, filter_: dict[str, Any], update: dict[str, Any], *a: Any, **k: Any) -> Any:
        self._check_update(filter_, update)
        return self._inner.update_one(filter_, update, *a, **k)

    def find_one_and_update(
        self, filter_: dict[str, Any], update: dict[str, Any], *a: Any, **k: Any
    ) -> Any:
        self._check_update(filter_, update)
        return self._inner.find_one_and_update(filter_, update, *a, **k)


def install_size_limit(monkeypatch: Any, backend: Any) -> None:
    """Make every collection ``backend`` uses enforce the 16 MiB document limit."""
    original = backend.store.collection

    def limited(logical: str) -> SizeLimitedCollection:
        return SizeLimitedCollection(original(logical))

    monkeypatch.setattr(backend.store, "collection", limited)


def raw(backend: Any, logical: str) -> Any:
    """The unwrapped collection (fault-free) for assertions."""
    from pynenc_mongo.store import MongoStore

    return MongoStore.collection(backend.store, logical)


def largest_document(backend: Any) -> int:
    """Size in bytes of the largest document the backend has stored, all collections."""
    from pynenc_mongo import schema

    largest = 0
    for logical in schema.STATE_COLLECTIONS:
        for doc in raw(backend, logical).find({"app_id": backend.app_id}):
            largest = max(largest, len(bson.encode(doc)))
    return largest


def build_raw_app(mongo_url: str, database: str, app_id: str | None = None, **options: Any) -> Any:
    """An app like conftest's ``make_app`` builds, but with pynenc's client data
    store disabled: every serialized value, however large, reaches the backend
    (pynenc 0.4 would otherwise keep large ones in its own store)."""
    from pynenc import PynencBuilder

    return (
        PynencBuilder()
        .app_id(app_id or f"app-{uuid.uuid4().hex[:8]}")
        .memory()
        .disable_client_data_store()
        .mongo_state_backend(url=mongo_url, database=database, **options)
        .build()
    )


def raw_app_fixture() -> Any:
    """A ``make_raw_app`` fixture for a test module: ``make_raw_app = raw_app_fixture()``.

    Like conftest's ``make_app`` (apps purged at teardown), built by :func:`build_raw_app`.
    """
    import pytest
    from run_settings import RUN_DATABASE

    @pytest.fixture
    def make_raw_app(mongo_url: str) -> Iterator[Callable[..., Any]]:
        apps: list[Any] = []

        def factory(app_id: str | None = None, **options: Any) -> Any:
            app = build_raw_app(mongo_url, RUN_DATABASE, app_id, **options)
            apps.append(app)
            return app

        yield factory
        for app in apps:
            backend = app._state_backend
            if backend is not None:
                backend.purge()
                backend.close()

    return make_raw_app
