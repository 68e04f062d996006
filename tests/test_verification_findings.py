"""Cases found by an independent fresh-clone review; each whole kind is fixed here."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from pymongo.errors import ConfigurationError, ServerSelectionTimeoutError
from pynenc import Pynenc, PynencBuilder
from pynenc.identifiers.task_id import TaskId
from pynenc.workflow.workflow_identity import WorkflowIdentity

from pynenc_mongo.config import ConfigStateBackendMongo, MongoConfigError
from pynenc_mongo.errors import MongoUnavailableError, translate

PASSWORD = "V3ry-S3cret"


@pytest.mark.embedded_only("checks the thread safety of the embedded (mongomock) store")
def test_embedded_store_is_safe_to_share_between_threads(make_app: Callable[..., Pynenc]) -> None:
    """mongomock alone raises 'dictionary changed size during iteration' here."""
    backend: Any = make_app().state_backend
    workflow = WorkflowIdentity(workflow_id="wf-race", workflow_type=TaskId("m", "f"))
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(150):
                backend.set_workflow_data(workflow, f"k{t}-{i}", i)
                assert backend.get_workflow_data(workflow, f"k{t}-{i}") == i
                backend.set_result(f"inv-{t}-{i}", i)
                assert backend.get_result(f"inv-{t}-{i}") == i
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert backend.get_workflow_data(workflow, "k7-149") == 149


def test_srv_name_that_does_not_resolve_is_an_unreachable_server() -> None:
    exc = ConfigurationError("The DNS query name does not exist: _mongodb._tcp.nowhere.invalid.")
    mapped = translate(exc, "mongodb+srv://u:***@nowhere.invalid/")
    assert isinstance(mapped, MongoUnavailableError)
    assert "nowhere.invalid" in str(mapped)
    other = ConfigurationError("Unknown option foo")
    assert translate(other, "x") is other  # a real configuration error stays one


def test_unreachable_message_names_the_server_selection_timeout() -> None:
    exc = ServerSelectionTimeoutError(
        "127.0.0.1:1: [Errno 111] Connection refused (configured timeouts: socketTimeoutMS: "
        "20000.0ms, connectTimeoutMS: 20000.0ms), Timeout: 0.5s, Topology Description: <...>"
    )
    text = str(translate(exc, "mongodb://127.0.0.1:1"))
    assert "server selection timeout 0.5 s" in text
    assert "socketTimeoutMS" not in text and "Topology" not in text


def test_unreadable_tls_file_is_a_configuration_error() -> None:
    url = f"mongodb://u:{PASSWORD}@127.0.0.1:1/?tls=true&tlsCAFile=/nonexistent/ca.pem"
    with pytest.raises(MongoConfigError, match="mongo_url.*tlsCAFile.*not readable") as info:
        ConfigStateBackendMongo(config_values={"mongo_url": url})
    assert PASSWORD not in str(info.value)


def test_database_name_that_is_not_utf8_names_the_setting() -> None:
    with pytest.raises(MongoConfigError, match="mongo_database"):
        PynencBuilder().memory().mongo_state_backend(url="mongomock://x", database="\udc80")


def test_empty_boolean_env_var_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYNENC__MONGO_CREATE_INDEXES", "")
    with pytest.raises(MongoConfigError, match="mongo_create_indexes: expected a boolean"):
        ConfigStateBackendMongo()


@pytest.mark.parametrize(
    "key", ["auth", "authorization", "my_key", "session_cookie", "jwt_signature"]
)
def test_secret_looking_config_keys_are_not_stored(
    make_app: Callable[..., Pynenc], key: str
) -> None:
    from pynenc.app_info import AppInfo

    app = make_app()
    backend: Any = app.state_backend
    values = {key: f"Bearer {PASSWORD}", "author": "kept", "keyboard": "kept"}
    backend.store_app_info(AppInfo(app_id=app.app_id, module="m", config_values=values))
    stored = backend.get_app_info().config_values
    assert key not in stored and stored["author"] == "kept" and stored["keyboard"] == "kept"
    raw = backend.collection("app_infos").find_one({"app_id": app.app_id})
    assert PASSWORD not in repr(raw)
