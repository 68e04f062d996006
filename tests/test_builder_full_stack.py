"""``.mongo()`` puts all five components on MongoDB; ``.mongo_state_backend()`` only the
state; pynenc-mongo 0.3.0's builder keywords and settings; the half-stack validator."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from pynenc import PynencBuilder

from pynenc_mongo import (
    MongoBroker,
    MongoClientDataStore,
    MongoConfigError,
    MongoOrchestrator,
    MongoStateBackend,
    MongoTrigger,
)
from pynenc_mongo.builder import FULL_STACK


def test_mongo_selects_all_five_components_and_allows_process_runners() -> None:
    builder = PynencBuilder().app_id("full").mongo(url="mongomock://full").process_runner()
    assert builder._using_memory_components is False
    app = builder.build()
    for key, name in FULL_STACK.items():
        assert app.config_values[key] == name
    assert isinstance(app.state_backend, MongoStateBackend)
    assert isinstance(app.orchestrator, MongoOrchestrator)
    assert isinstance(app.broker, MongoBroker)
    assert isinstance(app.trigger, MongoTrigger)
    assert isinstance(app.client_data_store, MongoClientDataStore)


def test_mongo_state_backend_keeps_the_other_components() -> None:
    app = PynencBuilder().sqlite("/tmp/x.db").mongo_state_backend(url="mongomock://s").build()
    assert app.config_values["state_backend_cls"] == "MongoStateBackend"
    assert app.config_values["broker_cls"] == "SQLiteBroker"
    assert app.config_values["orchestrator_cls"] == "SQLiteOrchestrator"


def test_the_030_keywords_become_a_url() -> None:
    app = (
        PynencBuilder()
        .mongo(
            host="db1",
            port=27018,
            db="legacy",
            username="u@x",
            password="p/w:1",
            auth_source="admin",
        )
        .build()
    )
    url = app.config_values["mongo_url"]
    assert url == "mongodb://u%40x:p%2Fw%3A1@db1:27018/?authSource=admin"
    assert unquote(url.split("@", 1)[0].split(":")[2]) == "p/w:1"
    assert app.config_values["mongo_database"] == "legacy"


def test_url_and_030_keywords_together_are_refused() -> None:
    with pytest.raises(ValueError, match="either url or host"):
        PynencBuilder().mongo(url="mongodb://a/", host="b")


@pytest.mark.parametrize(
    ("setting", "replacement"),
    [
        ("mongo_host", "mongo_url"),
        ("mongo_db", "mongo_database"),
        ("mongo_password", "mongo_url"),
        ("mongo_auth_source", "authSource"),
    ],
)
def test_030_settings_fail_with_one_line_naming_the_replacement(
    setting: str, replacement: str
) -> None:
    app = (
        PynencBuilder()
        .app_id("legacy")
        .mongo(url="mongomock://legacy")
        .custom_config(**{setting: "SECRET-VALUE"})
        .build()
    )
    with pytest.raises(MongoConfigError) as info:
        _ = app.state_backend
    message = str(info.value)
    assert "\n" not in message and setting in message and replacement in message
    assert "0.3.0" in message and "SECRET-VALUE" not in message


def test_030_component_methods_select_their_component() -> None:
    app = (
        PynencBuilder()
        .memory()
        .mongo_state_backend(url="mongomock://c")
        .mongo_client_data_store(min_size_to_cache=2048)
        .mongo_trigger()
        .build()
    )
    assert app.config_values["client_data_store_cls"] == "MongoClientDataStore"
    assert app.config_values["trigger_cls"] == "MongoTrigger"
    assert app.config_values["min_size_to_cache"] == 2048
    with pytest.raises(ValueError, match=r"call \.mongo\(url\) first"):
        PynencBuilder().memory().mongo_trigger()


def test_half_configured_stack_is_refused_for_process_runners() -> None:
    builder = (
        PynencBuilder()
        .mongo(url="mongomock://half")
        .custom_config(broker_cls="MemBroker")
        .process_runner()
    )
    with pytest.raises(ValueError, match="half-configured MongoDB stack.*broker_cls=MemBroker"):
        builder.build()
    # In one process the same mix is allowed (each component's own tests use it).
    PynencBuilder().memory().custom_config(broker_cls="MongoBroker").thread_runner().build()
