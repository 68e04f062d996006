"""Lazy index creation by the backend and the ``mongo_create_indexes`` switch."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from index_helpers import Layout, make_layout
from pymongo.errors import OperationFailure
from pynenc import Pynenc

from pynenc_mongo import cli, indexes, schema
from pynenc_mongo.config import ConfigStateBackendMongo, MongoConfigError
from pynenc_mongo.errors import MongoIndexMissingError
from pynenc_mongo.indexes import SETUP_SCRIPT, inspect_collection
from pynenc_mongo.monitoring import count_operations

INDEX_COMMANDS = {"listIndexes", "createIndexes", "listCollections"}


@pytest.fixture
def layout(mongo_url: str) -> Iterator[Layout]:
    yield from make_layout(mongo_url)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "pynenc_mongo" and r.levelno == logging.WARNING
    ]


def _use_every_collection(app: Pynenc) -> None:
    backend: Any = app.state_backend
    backend.set_result("inv-1", "result")
    assert backend.get_result("inv-1") == "result"
    backend.purge()  # touches every collection of the layout


def test_lazy_creation_creates_every_index_once_per_process_and_collection(
    layout: Layout, make_app: Callable[..., Pynenc]
) -> None:
    """Default on: first use creates the collection's indexes (not the TTL ones);
    later uses, by this or another backend of the process, send no index command."""
    app = make_app(collection_prefix=layout.prefix)
    _use_every_collection(app)
    for logical in schema.STATE_COLLECTIONS:
        report = inspect_collection(layout.collection(logical), logical, retention=False)
        assert report.missing == [] and report.conflicts == [], logical
        assert not any(name.endswith("_ttl") for name in layout.index_names(logical))
    other = make_app(collection_prefix=layout.prefix)
    with count_operations() as ops:
        _use_every_collection(app)
        _use_every_collection(other)
    assert not INDEX_COMMANDS & set(ops.counts), ops.counts


def test_lazy_creation_includes_ttl_indexes_with_retention(
    layout: Layout, make_app: Callable[..., Pynenc]
) -> None:
    """``mongo_retention_days`` > 0: the TTL indexes (``expireAfterSeconds: 0``) too."""
    _use_every_collection(make_app(collection_prefix=layout.prefix, retention_days=2))
    for logical in schema.INVOCATION_OWNED:
        info = {i["name"]: i for i in layout.collection(logical).list_indexes()}
        assert info[f"{logical}_ttl"]["expireAfterSeconds"] == 0
        assert dict(info[f"{logical}_ttl"]["key"]) == {"expire_at": 1}


def _use_without_unique_writes(app: Pynenc) -> None:
    """Reads and deletes on every collection: what works without any index."""
    backend: Any = app.state_backend
    assert list(backend.get_history("inv-1")) == []
    backend.purge()  # touches every collection of the layout


def test_lazy_creation_off_without_indexes_refuses_only_race_unsafe_writes(
    layout: Layout, make_app: Callable[..., Pynenc], caplog: pytest.LogCaptureFixture
) -> None:
    """``mongo_create_indexes=False`` and no index: none is created; reads and deletes
    work; an upsert whose race-safety rests on a missing unique index is refused with
    an error naming the index and the setup script, writing nothing (issue 16, item
    12); one warning for the whole process names the setup script."""
    caplog.set_level(logging.WARNING, logger="pynenc_mongo")
    for _ in range(2):
        app = make_app(collection_prefix=layout.prefix, create_indexes=False)
        with pytest.raises(MongoIndexMissingError, match=rf"'app_invocation'.*{SETUP_SCRIPT}"):
            app.state_backend.set_result("inv-1", "result")
        _use_without_unique_writes(app)
    assert layout.collection(schema.RESULTS).count_documents({}) == 0
    for logical in schema.STATE_COLLECTIONS:
        assert layout.index_names(logical) <= {"_id_"}, logical
    [warning] = [w for w in _warnings(caplog) if "unique indexes missing" not in w]
    assert SETUP_SCRIPT in warning
    assert "mongo_create_indexes is off" in warning
    defined = len([spec for spec in schema.INDEXES if not spec.retention_only])
    assert f"{defined} indexes missing" in warning


def test_refused_write_works_once_an_operator_created_the_index(
    layout: Layout, make_app: Callable[..., Pynenc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running worker needs no restart: after the setup script created the missing
    unique index, the next write past the re-check interval looks again and works;
    within the interval no ``listIndexes`` is sent again."""
    backend: Any = make_app(collection_prefix=layout.prefix, create_indexes=False).state_backend
    with pytest.raises(MongoIndexMissingError):
        backend.set_result("inv-1", "result")
    with count_operations() as ops, pytest.raises(MongoIndexMissingError):
        backend.set_result("inv-1", "result")  # within the interval: no new check
    assert "listIndexes" not in ops.counts
    assert cli.main(layout.args()) == cli.EXIT_OK
    monkeypatch.setattr(indexes, "RECHECK_MISSING_SECONDS", 0.0)
    backend.set_result("inv-1", "result")
    assert backend.get_result("inv-1") == "result"


def test_refused_invocation_is_refused_at_once_and_never_written_later(
    layout: Layout, make_app: Callable[..., Pynenc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An invocation refused for its missing unique index is refused to the caller,
    is not deferred: later reads in the thread work, and it is not written once the
    index exists (the fresh-clone review: it used to fail every later operation of
    the thread, then land as an orphan)."""
    from _fakes import make_dtos

    backend: Any = make_app(collection_prefix=layout.prefix, create_indexes=False).state_backend
    with pytest.raises(MongoIndexMissingError, match="'app_invocation'"):
        backend._upsert_invocations([make_dtos("inv-refused")])
    assert list(backend.get_history("inv-refused")) == []  # a read: no flush, no refusal
    assert backend._get_invocation("inv-refused") is None
    assert cli.main(layout.args()) == cli.EXIT_OK
    monkeypatch.setattr(indexes, "RECHECK_MISSING_SECONDS", 0.0)
    backend._upsert_invocations([make_dtos("inv-later")])
    backend._flush_deferred(every_thread=True)
    stored = {d["invocation_id"] for d in layout.collection(schema.INVOCATIONS).find()}
    assert stored == {"inv-later"}


def test_lazy_creation_off_is_silent_when_the_script_created_the_indexes(
    layout: Layout, make_app: Callable[..., Pynenc], caplog: pytest.LogCaptureFixture
) -> None:
    """The operator's setup: the script creates the indexes, the backend only checks."""
    assert cli.main(layout.args()) == cli.EXIT_OK
    caplog.set_level(logging.WARNING, logger="pynenc_mongo")
    with count_operations() as ops:
        _use_every_collection(make_app(collection_prefix=layout.prefix, create_indexes=False))
    assert _warnings(caplog) == []
    assert "createIndexes" not in ops.counts


def test_create_indexes_setting_from_env_var(
    layout: Layout, make_app: Callable[..., Pynenc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``PYNENC__MONGO_CREATE_INDEXES`` turns lazy creation off; bad values are refused
    with an error naming the setting and the value."""
    monkeypatch.setenv("PYNENC__MONGO_CREATE_INDEXES", "false")
    assert ConfigStateBackendMongo().mongo_create_indexes is False
    _use_without_unique_writes(make_app(collection_prefix=layout.prefix))
    assert layout.index_names(schema.RESULTS) <= {"_id_"}
    monkeypatch.setenv("PYNENC__MONGO_CREATE_INDEXES", "maybe")
    with pytest.raises(MongoConfigError, match="mongo_create_indexes.*'maybe'"):
        ConfigStateBackendMongo()


def test_lazy_creation_leaves_a_conflicting_index_alone_and_warns(
    layout: Layout, make_app: Callable[..., Pynenc], caplog: pytest.LogCaptureFixture
) -> None:
    """The same keys under another name: MongoDB would refuse a second index, so the
    backend creates the others, keeps working and warns naming the script."""
    layout.collection(schema.RESULTS).create_index(
        [("app_id", 1), ("invocation_id", 1)], name="ops_results", unique=True
    )
    caplog.set_level(logging.WARNING, logger="pynenc_mongo")
    _use_every_collection(make_app(collection_prefix=layout.prefix))
    assert layout.index_names(schema.RESULTS) == {"_id_", "ops_results"}
    assert "app_task" in layout.index_names(schema.INVOCATIONS)
    [warning] = _warnings(caplog)
    assert "ops_results" in warning and f"{SETUP_SCRIPT} --check" in warning


def test_lazy_creation_not_authorized_warns_once_and_works(
    layout: Layout,
    make_app: Callable[..., Pynenc],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the createIndex privilege (code 13) the backend keeps working, warning
    once (issue 16, item 7): reads and deletes work; only the upserts that rest on a
    missing unique index are refused (item 12)."""

    def refuse(collection: Any, specs: Any) -> list[str]:
        raise OperationFailure("not authorized to execute command createIndexes", code=13)

    monkeypatch.setattr(indexes, "create_indexes", refuse)
    caplog.set_level(logging.WARNING, logger="pynenc_mongo")
    app = make_app(collection_prefix=layout.prefix)
    with pytest.raises(MongoIndexMissingError, match="'app_invocation'"):
        app.state_backend.set_result("inv-1", "result")
    _use_without_unique_writes(app)
    # Besides: one warning per collection naming its missing unique indexes (issue 16).
    [warning] = [w for w in _warnings(caplog) if "unique indexes missing" not in w]
    assert "not authorized" in warning
    assert SETUP_SCRIPT in warning and "PYNENC__MONGO_CREATE_INDEXES=false" in warning
