"""Credentials appear nowhere: logs, exception messages, reprs, stored app info,
the demo's output. Every check greps for one known password."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from _fakes import raw
from pynenc import PynencBuilder

from pynenc_mongo import schema
from pynenc_mongo.config import MongoConfigError
from pynenc_mongo.errors import MongoBackendError

PASSWORD = "KNOWNPASS"
#: Fragments of the password as it may be split by a malformed URL.
FRAGMENTS = (PASSWORD, "KNOWN/PASS", "KNOWN?PASS", "PASS@")


def _clean(text: str) -> None:
    for fragment in FRAGMENTS:
        assert fragment not in text, f"{fragment!r} leaked in: ...{text[:2000]}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run(code: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PYNENC__")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


DEMO_HARNESS = """
    import logging, sys
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, force=True)
    for name in ("pynenc_mongo", "pymongo", "pynenc", "cistell"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    from pynenc_mongo.demo.__main__ import main
    rc = main()
    from pynenc.app_info import AppInfo
    from pynenc_mongo.demo import workload
    backend = workload.app.state_backend
    backend.store_app_info(AppInfo.from_app(workload.app))
    print("APP_INFO", list(backend.collection("app_infos").find({}, {"_id": 0})))
    print("REPR", repr(backend), repr(backend.conf), str(backend.conf), backend.describe_target())
    logging.getLogger("pynenc_mongo").debug("config %s", backend.conf)
    sys.exit(rc)
"""


@pytest.mark.slow
def test_full_demo_run_at_debug_level_never_shows_the_password() -> None:
    """The demo workload on the embedded store, its URL carrying a password."""
    result = _run(
        DEMO_HARNESS,
        {
            "PYNENC__MONGO_URL": f"mongomock://demo-user:{PASSWORD}@redaction-demo",
            "PYNENC__LOGGING_LEVEL": "debug",
        },
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "summary:" in result.stdout and "APP_INFO" in result.stdout
    assert output.count("\n") > 100  # DEBUG logging really was on
    assert "demo-user" in result.stdout  # the URL (without its password) is shown
    _clean(output)


def test_demo_against_an_unreachable_server_fails_cleanly() -> None:
    port = _free_port()
    result = _run(
        "from pynenc_mongo.demo.__main__ import main; import sys; sys.exit(main())",
        {
            "PYNENC__MONGO_URL": f"mongodb://user:{PASSWORD}@127.0.0.1:{port}/demo",
            "PYNENC__MONGO_SERVER_SELECTION_TIMEOUT_SECONDS": "0.5",
        },
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"127.0.0.1:{port}" in result.stderr and "not reachable" in result.stderr
    assert "Traceback" not in output
    _clean(output)


def test_demo_with_a_malformed_url_fails_cleanly() -> None:
    result = _run(
        "from pynenc_mongo.demo.__main__ import main; import sys; sys.exit(main())",
        {"PYNENC__MONGO_URL": "mongodb://user:KNOWN/PASS@127.0.0.1:1/demo"},
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "mongo_url" in result.stderr
    _clean(output)


def _unreachable_app(**options: Any) -> Any:
    return (
        PynencBuilder()
        .app_id("redaction")
        .memory()
        .mongo_state_backend(
            url=f"mongodb://user:{PASSWORD}@127.0.0.1:{_free_port()}/db?authSource=admin",
            server_selection_timeout_seconds=0.3,
            **options,
        )
        .build()
    )


def test_errors_reprs_and_logs_never_show_the_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    app = _unreachable_app()
    with pytest.raises(MongoBackendError) as info:
        _ = app.state_backend
    texts += [str(info.value), repr(info.value)]
    backend = app.state_backend
    texts += [repr(backend), repr(backend.conf), str(backend.conf), backend.describe_target()]
    for call_ in (backend.purge, lambda: backend._get_result("x"), backend.get_app_info):
        with pytest.raises(MongoBackendError) as info:
            call_()
        texts += [str(info.value), repr(info.value)]
        assert info.value.__cause__ is None and info.value.__suppress_context__
    for url in (
        f"mongodb://user:{PASSWORD}@h/?nope=1",
        "mongodb://user:KNOWN/PASS@h",
        "mongodb://user:KNOWN?PASS@h",
        f"user:{PASSWORD}@h",
    ):
        with pytest.raises(MongoConfigError) as config_info:
            PynencBuilder().memory().mongo_state_backend(url=url)
        texts += [str(config_info.value), repr(config_info.value)]
    texts.append(caplog.text)
    assert "127.0.0.1" in " ".join(texts)  # the host is named
    _clean("\n".join(texts))


def test_stored_app_info_holds_no_secret(mongo_url: str) -> None:
    from pynenc.app_info import AppInfo

    if not mongo_url.startswith("mongomock://"):
        pytest.skip("the embedded store's URL is the one that can carry a password here")
    url = mongo_url.replace("mongomock://", f"mongomock://someone:{PASSWORD}@")
    app = PynencBuilder().app_id("appinfo-secrets").memory().mongo_state_backend(url=url).build()
    backend = app.state_backend
    config = dict(app.config_values)
    config.update(
        {
            "redis_url": f"redis://:{PASSWORD}@cache:6379/0",
            "api_token": PASSWORD,
            "nested": {"db_password": PASSWORD, "urls": [f"mongodb://u:{PASSWORD}@h/x"]},
            "pairs": (f"amqp://guest:{PASSWORD}@rabbit//",),
        }
    )
    backend.store_app_info(AppInfo(app_id=app.app_id, module="tests", config_values=config))
    docs = list(raw(backend, schema.APP_INFOS).find({}))
    assert docs
    _clean(repr(docs))
    stored = backend.get_app_info().config_values
    assert stored["mongo_url"].startswith("mongomock://someone@")
    assert stored["redis_url"] == "redis://***@cache:6379/0"
    assert stored["nested"] == {"urls": ["mongodb://u@h/x"]}
    backend.purge()
