"""Issue 16, items 7 (least privilege) and 12 (unique indexes), in the shared layers.

mongomock never refuses a privilege, so the server's reply is faked: the
collection class's ``list_indexes`` / ``create_indexes`` / write methods raise
``OperationFailure`` code 13 (Unauthorized), as MongoDB does for a role without
the ``listIndexes`` / ``createIndex`` / ``insert`` actions. The same tests run
against a real server (the driver's collection class is patched the same way).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from index_helpers import Layout, make_layout
from pymongo.errors import NetworkTimeout, OperationFailure
from pynenc import Pynenc

from pynenc_mongo import indexes, schema
from pynenc_mongo.errors import MongoIndexMissingError
from pynenc_mongo.indexes import SETUP_SCRIPT, UniqueIndexState
from pynenc_mongo.store import MongoStore

UNIQUE_RESULTS = "app_invocation"


@pytest.fixture
def layout(mongo_url: str) -> Iterator[Layout]:
    yield from make_layout(mongo_url)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "pynenc_mongo" and r.levelno == logging.WARNING
    ]


def _refuse(name: str) -> Callable[..., Any]:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise OperationFailure(
            f"not authorized on db to execute command {{ {name}: ... }}",
            code=13,
            details={"ok": 0, "errmsg": f"not authorized to execute {name}", "code": 13},
        )

    return refuse


def _collection_class(layout: Layout) -> type[Any]:
    return type(layout.collection(schema.RESULTS))


def _deny(monkeypatch: pytest.MonkeyPatch, layout: Layout, *methods: str) -> None:
    cls = _collection_class(layout)
    for method in methods:
        monkeypatch.setattr(cls, method, _refuse(method))


def _store(app: Pynenc) -> MongoStore:
    backend: Any = app.state_backend
    return MongoStore(backend.conf, app.app_id)


def _work(app: Pynenc) -> None:
    backend: Any = app.state_backend
    backend.set_result("inv-1", "result")
    assert backend.get_result("inv-1") == "result"
    backend.set_exception("inv-2", RuntimeError("boom"))
    assert "boom" in str(backend.get_exception("inv-2"))


# ---------------------------------------------------------------- item 7
def test_list_indexes_refused_the_app_builds_and_works_warning_once(
    layout: Layout,
    make_app: Callable[..., Pynenc],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before the fix building the app raised OperationFailure code 13 (listIndexes in
    store_app_info's first collection use), and so did every operation after it."""
    _deny(monkeypatch, layout, "list_indexes")
    caplog.set_level(logging.WARNING, logger="pynenc_mongo")
    app = make_app(collection_prefix=layout.prefix)
    _work(app)
    _work(app)
    listed = [w for w in _warnings(caplog) if "not authorized to list the indexes" in w]
    assert len(listed) == 1, _warnings(caplog)
    assert SETUP_SCRIPT in listed[0]


def test_list_and_create_refused_with_creation_off_works_and_stops_asking(
    layout: Layout,
    make_app: Callable[..., Pynenc],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``mongo_create_indexes=false``: the layout check is refused once, warned once,
    and not repeated before every operation."""
    calls: list[str] = []
    refuse = _refuse("listIndexes")

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append("listIndexes")
        return refuse(*args, **kwargs)

    cls = _collection_class(layout)
    monkeypatch.setattr(cls, "list_indexes", counting)
    monkeypatch.setattr(cls, "create_indexes", _refuse("createIndexes"))
    caplog.set_level(logging.WARNING, logger="pynenc_mongo")
    app = make_app(collection_prefix=layout.prefix, create_indexes=False)
    _work(app)
    first = len(calls)
    _work(app)
    assert len(calls) == first == 1
    assert len([w for w in _warnings(caplog) if "not authorized to list" in w]) == 1


def test_read_only_monitor_reads_through_the_store(
    layout: Layout, make_app: Callable[..., Pynenc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A role with ``find`` only (no listIndexes, createIndex or any write): reads work."""
    writer = make_app(collection_prefix=layout.prefix, inline_value_max_bytes=1024)
    writer_store = _store(writer)
    filter_ = writer_store.app_filter(invocation_id="inv-1")
    writer_store.write_value(schema.RESULTS, filter_, "value", "inv-1", "x" * 5000)
    indexes.forget_ensured()  # the monitor is another process: nothing ensured yet
    _deny(
        monkeypatch,
        layout,
        "list_indexes",
        "create_indexes",
        "insert_one",
        "insert_many",
        "update_one",
        "find_one_and_update",
        "delete_many",
    )
    monitor = _store(writer)
    found, text = monitor.read_value(schema.RESULTS, filter_, "value")
    assert found and text == "x" * 5000  # stored as pieces: two collections read


# ---------------------------------------------------------------- item 12
def test_unique_index_missing_with_creation_off_is_warned_and_refused(
    layout: Layout, make_app: Callable[..., Pynenc], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pynenc_mongo")
    app = make_app(collection_prefix=layout.prefix, create_indexes=False)
    store = _store(app)
    assert store.unique_state(schema.RESULTS, UNIQUE_RESULTS) is UniqueIndexState.MISSING
    with pytest.raises(MongoIndexMissingError) as info:
        store.require_unique(schema.RESULTS, UNIQUE_RESULTS)
    message = str(info.value)
    assert UNIQUE_RESULTS in message and SETUP_SCRIPT in message
    assert info.value.collection == layout.prefix + schema.RESULTS
    with pytest.raises(MongoIndexMissingError):
        store.require_unique(schema.INVOCATIONS)  # every unique index of the collection
    with pytest.raises(MongoIndexMissingError):  # the state backend requires it (item 12)
        _work(app)
    [warning] = _warnings(caplog)
    assert f"{layout.prefix}{schema.RESULTS}.{UNIQUE_RESULTS}" in warning
    assert "Unique indexes among them" in warning and SETUP_SCRIPT in warning


def test_unique_index_creation_refused_is_warned_and_refused(
    layout: Layout,
    make_app: Callable[..., Pynenc],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _deny(monkeypatch, layout, "create_indexes")
    caplog.set_level(logging.WARNING, logger="pynenc_mongo")
    app = make_app(collection_prefix=layout.prefix)
    with pytest.raises(MongoIndexMissingError, match=SETUP_SCRIPT):
        _work(app)  # the results upsert rests on the missing unique index (item 12)
    store = _store(app)
    with pytest.raises(MongoIndexMissingError, match=SETUP_SCRIPT):
        store.require_unique(schema.RESULTS, UNIQUE_RESULTS)
    unique = [w for w in _warnings(caplog) if "unique indexes missing" in w]
    assert any(f"{layout.prefix}{schema.RESULTS}.{UNIQUE_RESULTS}" in w for w in unique)
    assert all(SETUP_SCRIPT in w for w in unique)
    count = len(unique)
    with pytest.raises(MongoIndexMissingError):
        _work(app)
    assert len([w for w in _warnings(caplog) if "unique indexes missing" in w]) == count


def test_unique_index_present_passes(layout: Layout, make_app: Callable[..., Pynenc]) -> None:
    app = make_app(collection_prefix=layout.prefix)
    store = _store(app)
    for logical in schema.STATE_COLLECTIONS:
        store.require_unique(logical)
    assert store.unique_state(schema.RESULTS, UNIQUE_RESULTS) is UniqueIndexState.PRESENT
    with pytest.raises(KeyError, match="not a unique index"):
        store.require_unique(schema.RESULTS, "app_task")


def test_unique_index_under_another_name_counts_as_present(
    layout: Layout, make_app: Callable[..., Pynenc]
) -> None:
    layout.collection(schema.RESULTS).create_index(
        [("app_id", 1), ("invocation_id", 1)], name="ops_results", unique=True
    )
    store = _store(make_app(collection_prefix=layout.prefix))
    store.require_unique(schema.RESULTS, UNIQUE_RESULTS)


def test_non_unique_index_in_the_way_counts_as_missing(
    layout: Layout, make_app: Callable[..., Pynenc]
) -> None:
    layout.collection(schema.RESULTS).create_index(
        [("app_id", 1), ("invocation_id", 1)], name="ops_results"
    )
    store = _store(make_app(collection_prefix=layout.prefix))
    with pytest.raises(MongoIndexMissingError, match="app_invocation"):
        store.require_unique(schema.RESULTS, UNIQUE_RESULTS)


def test_unique_index_unverified_is_not_refused_but_warned(
    layout: Layout,
    make_app: Callable[..., Pynenc],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _deny(monkeypatch, layout, "list_indexes")
    caplog.set_level(logging.WARNING, logger="pynenc_mongo")
    store = _store(make_app(collection_prefix=layout.prefix))
    assert store.unique_state(schema.RESULTS, UNIQUE_RESULTS) is UniqueIndexState.UNVERIFIED
    store.require_unique(schema.RESULTS, UNIQUE_RESULTS)
    store.require_unique(schema.RESULTS, UNIQUE_RESULTS)
    assert len([w for w in _warnings(caplog) if "could not be verified" in w]) == 1


def test_the_warning_comes_again_in_a_new_process(
    layout: Layout, make_app: Callable[..., Pynenc], caplog: pytest.LogCaptureFixture
) -> None:
    """Once per process, not once ever: a new process (simulated by forgetting this
    process's index knowledge, as a fresh interpreter has none) warns again."""
    caplog.set_level(logging.WARNING, logger="pynenc_mongo")
    with pytest.raises(MongoIndexMissingError):  # the state backend requires it (item 12)
        _work(make_app(collection_prefix=layout.prefix, create_indexes=False))
    indexes.forget_ensured()
    with pytest.raises(MongoIndexMissingError):
        _work(make_app(collection_prefix=layout.prefix, create_indexes=False))
    assert len([w for w in _warnings(caplog) if "Unique indexes among them" in w]) == 2


def test_index_build_outliving_the_socket_timeout_is_warned_not_raised(
    layout: Layout,
    make_app: Callable[..., Pynenc],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A lazy build on a large collection can outlive ``mongo_socket_timeout_seconds``:
    the server goes on building; the operation must not fail, nor ask again."""
    calls: list[int] = []

    def slow(*_args: Any, **_kwargs: Any) -> Any:
        calls.append(1)
        raise NetworkTimeout("timed out")

    monkeypatch.setattr(_collection_class(layout), "create_indexes", slow)
    caplog.set_level(logging.WARNING, logger="pynenc_mongo")
    app = make_app(collection_prefix=layout.prefix)
    _work(app)
    first = len(calls)
    _work(app)
    assert len(calls) == first
    assert any("did not finish within" in w for w in _warnings(caplog))
    assert _store(app).unique_state(schema.RESULTS, UNIQUE_RESULTS) is UniqueIndexState.UNVERIFIED
