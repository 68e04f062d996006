"""Configuration from every source, the builder method, discovery and redaction."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pynenc import Pynenc, PynencBuilder

from pynenc_mongo import MongoStateBackend, schema
from pynenc_mongo.config import ConfigStateBackendMongo, MongoConfigError, effective_database
from pynenc_mongo.discovery import NoMongoConfiguredError
from pynenc_mongo.urls import redact_url, strip_password

PASSWORD = "s3cr3t-Pa55"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No PYNENC__ env var leaks in; run from an empty directory (no [tool.pynenc])."""
    import os

    for key in list(os.environ):
        if key.startswith("PYNENC__"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


# --------------------------------------------------------------------- sources
def test_defaults() -> None:
    conf = ConfigStateBackendMongo()
    assert conf.mongo_url == "mongodb://localhost:27017"
    assert effective_database(conf) == "pynenc"
    assert conf.mongo_server_selection_timeout_seconds == 5.0
    assert conf.mongo_collection_prefix == "pynenc_"
    assert conf.mongo_create_indexes is True


def test_config_values() -> None:
    conf = ConfigStateBackendMongo(
        config_values={"mongo_url": "mongodb://h1/appdb", "mongo_collection_prefix": "x_"}
    )
    assert effective_database(conf) == "appdb"
    assert conf.mongo_collection_prefix == "x_"
    conf = ConfigStateBackendMongo(
        config_values={"mongo_url": "mongodb://h1/appdb", "mongo_database": "other"}
    )
    assert effective_database(conf) == "other"


@pytest.mark.parametrize("suffix", ["yaml", "json", "toml"])
def test_config_file(tmp_path: Path, suffix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "mongo_url": "mongodb://filehost:27018/filedb",
        "mongo_server_selection_timeout_seconds": 1.5,
        "mongo_create_indexes": False,
        "mongo_history_write_mode": "async",
    }
    path = tmp_path / f"pynenc.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(values))
    elif suffix == "yaml":
        path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items()))
    else:
        path.write_text(
            "".join(
                f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}\n"
                for k, v in values.items()
            )
        )
    for conf in (
        ConfigStateBackendMongo(config_filepath=str(path)),
        _via_env_filepath(monkeypatch, path),
    ):
        assert conf.mongo_url == values["mongo_url"]
        assert effective_database(conf) == "filedb"
        assert conf.mongo_server_selection_timeout_seconds == 1.5
        assert conf.mongo_create_indexes is False
        assert conf.mongo_history_write_mode == "async"


def _via_env_filepath(monkeypatch: pytest.MonkeyPatch, path: Path) -> ConfigStateBackendMongo:
    monkeypatch.setenv("PYNENC__FILEPATH", str(path))
    return ConfigStateBackendMongo()


def test_pyproject_tool_pynenc(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pynenc]\nmongo_url = "mongodb://pyproject-host/ppdb"\nmongo_retention_days = 7\n'
    )
    conf = ConfigStateBackendMongo()
    assert conf.mongo_url == "mongodb://pyproject-host/ppdb"
    assert conf.mongo_retention_days == 7.0


def test_env_vars_generic_and_class_specific(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYNENC__MONGO_URL", "mongodb://envhost/envdb")
    monkeypatch.setenv("PYNENC__MONGO_MAX_PENDING_WRITES", "77")
    conf = ConfigStateBackendMongo(config_values={"mongo_url": "mongodb://valueshost"})
    assert conf.mongo_url == "mongodb://envhost/envdb"  # env beats config_values
    assert conf.mongo_max_pending_writes == 77
    monkeypatch.setenv("PYNENC__CONFIGSTATEBACKENDMONGO__MONGO_URL", "mongodb://classhost")
    assert ConfigStateBackendMongo().mongo_url == "mongodb://classhost"  # class-specific wins


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("false", False),
        ("0", False),
        ("no", False),
        ("OFF", False),
        ("true", True),
        ("1", True),
        ("yes", True),
    ],
)
def test_booleans_from_env(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv("PYNENC__MONGO_CREATE_INDEXES", raw)
    assert ConfigStateBackendMongo().mongo_create_indexes is expected


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mongo_url": "http://user:" + PASSWORD + "@host"}, "mongo_url.*expected a URL"),
        ({"mongo_url": "mongodb://u:" + PASSWORD + "@h/?bogusOption=1"}, "bogusOption"),
        ({"mongo_url": "mongodb://u:" + PASSWORD + "@h:99999"}, "Port"),
        ({"mongo_url": 42}, "mongo_url: expected a string"),
        ({"mongo_create_indexes": "maybe"}, "mongo_create_indexes: expected a boolean"),
        ({"mongo_max_pending_writes": "many"}, "mongo_max_pending_writes: expected an integer"),
        ({"mongo_max_pending_writes": 0}, "mongo_max_pending_writes: expected at least 1"),
        ({"mongo_server_selection_timeout_seconds": -1}, "mongo_server_selection_timeout"),
        ({"mongo_history_write_mode": "later"}, "mongo_history_write_mode: expected one of"),
        ({"mongo_database": "bad.name"}, "mongo_database"),
        ({"mongo_collection_prefix": "$p"}, "mongo_collection_prefix"),
    ],
)
def test_bad_values_name_the_setting_without_password(values: dict[str, Any], message: str) -> None:
    with pytest.raises(MongoConfigError, match=message) as info:
        ConfigStateBackendMongo(config_values=values)
    assert PASSWORD not in str(info.value)


# --------------------------------------------------------------------- builder
def test_builder_selects_backend_and_composes_with_sqlite(tmp_path: Path) -> None:
    app = (
        PynencBuilder()
        .app_id(f"builder-{uuid.uuid4().hex[:6]}")
        .sqlite(str(tmp_path / "db.sqlite"))
        .mongo_state_backend(url="mongomock://builder", database="bdb", collection_prefix="b_")
        .build()
    )
    assert app.conf.state_backend_cls == "MongoStateBackend"
    assert app.conf.orchestrator_cls == "SQLiteOrchestrator"
    assert app.conf.broker_cls == "SQLiteBroker"
    backend = app.state_backend
    assert isinstance(backend, MongoStateBackend)
    assert backend.database_name == "bdb"
    assert backend.collection_name(schema.HISTORY) == "b_history"
    backend.purge()


def test_builder_with_no_arguments_uses_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYNENC__MONGO_URL", "mongomock://from-env/envdb")
    app = (
        PynencBuilder()
        .app_id(f"env-only-{uuid.uuid4().hex[:6]}")
        .memory()
        .mongo_state_backend()
        .build()
    )
    backend = app.state_backend
    assert isinstance(backend, MongoStateBackend)
    assert backend.database_name == "envdb"
    backend.purge()


def test_builder_refuses_unknown_option_and_bad_value() -> None:
    with pytest.raises(TypeError, match="unknown option.*colection_prefix"):
        PynencBuilder().mongo_state_backend(url="mongomock://x", colection_prefix="y")
    with pytest.raises(MongoConfigError, match="mongo_retention_days"):
        PynencBuilder().mongo_state_backend(url="mongomock://x", retention_days="forever")


def test_state_backend_cls_in_plain_config_values() -> None:
    app = Pynenc(
        config_values={
            "app_id": f"plain-{uuid.uuid4().hex[:6]}",
            "state_backend_cls": "MongoStateBackend",
            "mongo_url": "mongomock://plain",
        }
    )
    assert isinstance(app.state_backend, MongoStateBackend)
    app.state_backend.purge()


# --------------------------------------------------------------------- discovery
def test_discovery_without_configuration_says_so() -> None:
    with pytest.raises(NoMongoConfiguredError, match="PYNENC__MONGO_URL") as info:
        MongoStateBackend.discover_app_infos()
    assert isinstance(info.value, ValueError)  # pynenc's monitor catches ValueError


def test_discovery_finds_the_apps_in_the_configured_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = f"mongomock://discovery-{uuid.uuid4().hex[:6]}/discdb"
    apps = [
        PynencBuilder().app_id(f"disc-{i}").memory().mongo_state_backend(url=url).build()
        for i in range(3)
    ]
    for app in apps:
        assert app.state_backend is not None  # building it stores the app info
    other = (
        PynencBuilder()
        .app_id("elsewhere")
        .memory()
        .mongo_state_backend(url=url, database="otherdb")
        .build()
    )
    assert other.state_backend is not None
    monkeypatch.setenv("PYNENC__MONGO_URL", url)
    found = MongoStateBackend.discover_app_infos()
    assert sorted(found) == ["disc-0", "disc-1", "disc-2"]
    assert found["disc-1"].config_values is not None
    monkeypatch.delenv("PYNENC__MONGO_URL")
    config = tmp_path / "conf.json"
    config.write_text(json.dumps({"mongo_url": url, "mongo_database": "otherdb"}))
    monkeypatch.setenv("PYNENC__FILEPATH", str(config))
    assert sorted(MongoStateBackend.discover_app_infos()) == ["elsewhere"]


# --------------------------------------------------------------------- redaction
def test_password_absent_from_repr_app_info_and_logs(
    make_app: Callable[..., Pynenc], caplog: pytest.LogCaptureFixture
) -> None:
    url = f"mongodb://alice:{PASSWORD}@127.0.0.1:1/redactdb?authSource=admin"
    assert PASSWORD not in redact_url(url) and PASSWORD not in strip_password(url)
    app = (
        PynencBuilder()
        .app_id(f"redact-{uuid.uuid4().hex[:6]}")
        .memory()
        .mongo_state_backend(url=url, server_selection_timeout_seconds=0.2)
        .build()
    )
    with caplog.at_level(logging.DEBUG):
        backend = MongoStateBackend(app)
        texts = [repr(backend), repr(backend.conf), str(backend.conf.safe_dict())]
        from pynenc.app_info import AppInfo

        info = AppInfo.from_app(app)
        safe = backend._safe_config_values(info.config_values)
        texts.append(json.dumps(schema.encode_config_value(safe)))
        with pytest.raises(ConnectionError) as failure:
            backend.get_app_info()
        texts.append(str(failure.value))
    texts.append(caplog.text)
    for text in texts:
        assert PASSWORD not in text
    assert "127.0.0.1:1" in str(failure.value)
    assert (
        safe is not None
        and safe["mongo_url"] == "mongodb://alice@127.0.0.1:1/redactdb?authSource=admin"
    )


def test_app_info_config_values_with_sets_round_trip(make_app: Callable[..., Pynenc]) -> None:
    app = make_app()
    backend: Any = app.state_backend
    from pynenc.app_info import AppInfo

    values = {
        "trigger_task_modules": {"b", "a"},
        "t": (1, "x"),
        "raw": b"\x00\xff",
        "nested": {"a.b": [frozenset({1})], "$k": None},
        "mongo_url": "mongomock://x",
        "db_password": "hide-me",
    }
    backend.store_app_info(AppInfo(app_id=app.app_id, module="m", config_values=values))
    got = backend.get_app_info().config_values
    assert got["trigger_task_modules"] == {"a", "b"}
    assert got["t"] == (1, "x")
    assert got["raw"] == b"\x00\xff"
    assert got["nested"] == {"a.b": [frozenset({1})], "$k": None}
    assert "db_password" not in got
