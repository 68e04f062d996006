"""Issue 16, item 10: no credential of any config value reaches the stored app info.

The three black-box cases of the issue (a ``rediss://`` URL with ``?password=``, a
libpq DSN, a pre-signed URL) plus nested containers, no false positives on
ordinary values, and :func:`redact_config` removing at least what the state
backend's ``_without_secrets`` removes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from _fakes import raw
from pynenc import Pynenc
from pynenc.app_info import AppInfo

from pynenc_mongo import schema
from pynenc_mongo.redaction import (
    is_secret_parameter,
    known_setting_names,
    redact_config,
    redact_text,
)
from pynenc_mongo.urls import SCHEMES, strip_password

SECRET = "S3CRET"

BLACK_BOX = {
    "broker_url": f"rediss://cache.example:6380/0?password={SECRET}",
    "orchestrator_dsn": f"host=db user=app password={SECRET} dbname=x",
    "sqs_queue_url": (
        "https://sqs.eu-west-1.amazonaws.com/1234/q?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential=AKIA{SECRET}%2F20260101%2Feu-west-1%2Fsqs%2Faws4_request"
        f"&X-Amz-Signature={SECRET}&X-Amz-Expires=900"
    ),
}


def _no_secret(value: Any) -> None:
    assert SECRET not in repr(value), value


def test_black_box_cases_are_redacted() -> None:
    safe = redact_config(BLACK_BOX)
    _no_secret(safe)
    assert safe["broker_url"] == "rediss://cache.example:6380/0?password=***"
    assert safe["orchestrator_dsn"] == "host=db user=app password=*** dbname=x"
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in safe["sqs_queue_url"]
    assert "X-Amz-Signature=***" in safe["sqs_queue_url"]
    assert "X-Amz-Expires=900" in safe["sqs_queue_url"]


@pytest.mark.parametrize(
    "text",
    [
        f"postgresql://app:{SECRET}@db:5432/x?sslmode=require",
        f"host=db password='{SECRET} with spaces' dbname=x",
        f"host=db password = {SECRET}",
        f"Server=db;Database=x;Uid=app;Pwd={SECRET};",
        f"jdbc:postgresql://db/x?user=app&password={SECRET}",
        f"https://acct.blob.core.windows.net/c/b?sv=2024&sig={SECRET}",
        f"https://storage.googleapis.com/b/o?X-Goog-Signature={SECRET}",
        f"https://api.example/v1?access_token={SECRET}&page=2",
        f"https://api.example/v1?key={SECRET}",
        f"redis://:{SECRET}@cache:6379/0",
        f"amqp://guest:{SECRET}@rabbit//",
        f"mongodb://u:{SECRET}@h/db?authSource=admin",
        f"host=db sslpassword={SECRET}",
        f"https://x.cloudfront.net/f?Signature={SECRET}&Key-Pair-Id=K",
    ],
)
def test_credentials_in_any_string_are_redacted(text: str) -> None:
    _no_secret(redact_text(text))


@pytest.mark.parametrize(
    "text",
    [
        "mongodb://h1:27017,h2:27017/db?authSource=admin&replicaSet=rs0",
        "https://example.com/path?page=2&sort=asc",
        "host=db user=app dbname=x sslmode=require",
        "monkey",
        "a = b",
        "bypass=1 tokenizer=bert passive=yes",
        "redis://cache:6379/0",
        "key_prefix",
        "x" * 100,
        "",
    ],
)
def test_ordinary_values_are_unchanged(text: str) -> None:
    assert redact_text(text) == text


def test_nested_containers_are_walked() -> None:
    value = {
        "nested": {"inner": [f"host=db password={SECRET}"], "db_password": SECRET},
        "pairs": (f"https://x/y?token={SECRET}",),
        "choices": {f"https://x/y?sig={SECRET}", "plain"},
        "frozen": frozenset({f"redis://:{SECRET}@h"}),
        "number": 3,
        "flag": True,
        "none": None,
    }
    safe = redact_config(value)
    _no_secret(safe)
    assert safe["number"] == 3 and safe["flag"] is True and safe["none"] is None
    assert "db_password" not in safe["nested"]
    assert isinstance(safe["pairs"], tuple) and isinstance(safe["choices"], set)
    assert isinstance(safe["frozen"], frozenset) and "plain" in safe["choices"]


def test_allow_list_keeps_only_known_settings() -> None:
    names = known_setting_names()
    assert {"mongo_url", "app_id"} <= names
    safe = redact_config({"mongo_url": "mongodb://h/db", "some_plugin_dsn": "x"}, allowed=names)
    assert safe == {"mongo_url": "mongodb://h/db"}


def test_secret_parameter_names() -> None:
    for name in ("password", "X-Amz-Signature", "X-Amz-Security-Token", "sslPassword", "sig"):
        assert is_secret_parameter(name), name
    for name in ("authSource", "authMechanism", "page", "sslmode", "bypass", "user"):
        assert not is_secret_parameter(name), name


OLD_CASES: list[Any] = [
    {"api_token": SECRET, "db_password": SECRET, "session_cookie": SECRET, "plain": 1},
    {"redis_url": f"redis://:{SECRET}@cache:6379/0"},
    f"mongomock://someone:{SECRET}@store",
    f"mongodb://u:{SECRET}@h/x?tlsCertificateKeyFilePassword={SECRET}",
    [f"user:{SECRET}@host"],
    (f"amqp://guest:{SECRET}@rabbit//",),
    {f"http://a:{SECRET}@h"},
    {"auth_source": "admin", "authors": "me", "my_key": SECRET},
]


_OLD_SECRET_KEY = re.compile(
    r"pass(word)?|passwd|pwd|secret|token|credential|api_?key|private_?key|auth(?!ors?\b)|"
    r"(^|_)key$|cookie|session|signature",
    re.IGNORECASE,
)
_OLD_URL_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*@|^[^/?#\s]*:[^/?#\s]*@")


def _previous_scrub(value: Any, key: Any = None) -> Any:
    """The state backend's scrub before :mod:`pynenc_mongo.redaction` (commit 532698a),
    kept as the baseline :func:`redact_config` must cover. A copy with secrets removed:

    * values under keys that look secret (password, secret, token, credential,
      api key, private key) are dropped, unless the key names a URL;
    * strings that are URLs with user info (any scheme: ``mongodb://``,
      ``mongomock://``, ``redis://``...) lose their password and secret options
      (:func:`~pynenc_mongo.urls.strip_password`, or ``***`` for other schemes);
    * dicts, lists, tuples and sets are walked.
    """
    if isinstance(value, str):
        if _OLD_URL_USERINFO.search(value) or value.startswith(SCHEMES):
            return strip_password(value)
        return value
    if isinstance(value, dict):
        safe: dict[Any, Any] = {}
        for k, v in value.items():
            if isinstance(k, str) and _OLD_SECRET_KEY.search(k) and "url" not in k.lower():
                continue
            safe[k] = _previous_scrub(v, k)
        return safe
    if isinstance(value, list):
        return [_previous_scrub(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_previous_scrub(v) for v in value)
    if isinstance(value, set | frozenset):
        return type(value)(_previous_scrub(v) for v in value)
    return value


@pytest.mark.parametrize("value", OLD_CASES)
def test_superset_of_the_state_backends_scrub(value: Any) -> None:
    """Whatever ``_without_secrets`` removes, ``redact_config`` removes too."""
    old = _previous_scrub(value)
    new = redact_config(value)
    _no_secret(old)
    _no_secret(new)
    if isinstance(value, dict):
        assert set(new) <= set(old)


def _stored_config(app: Pynenc) -> Any:
    backend: Any = app.state_backend
    config = dict(app.config_values)
    config.update(BLACK_BOX)
    backend.store_app_info(AppInfo(app_id=app.app_id, module="tests", config_values=config))
    docs = list(raw(backend, schema.APP_INFOS).find({schema.F_APP: app.app_id}))
    assert docs
    return docs


def test_stored_app_info_keeps_the_shape_of_redacted_values(
    make_app: Callable[..., Pynenc],
) -> None:
    """The state backend stores app info through :func:`redact_config`: a DSN keeps
    everything but its password."""
    app = make_app()
    _no_secret(_stored_config(app))
    stored = app.state_backend.get_app_info().config_values
    assert stored["orchestrator_dsn"] == "host=db user=app password=*** dbname=x"


def test_stored_app_info_holds_no_secret_black_box(make_app: Callable[..., Pynenc]) -> None:
    _no_secret(_stored_config(make_app()))
