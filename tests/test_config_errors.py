"""Bad configuration: every bad value fails when the config is read, with an
error naming the setting and what was expected, and never the password."""

from __future__ import annotations

from typing import Any

import pytest
from pynenc import PynencBuilder

from pynenc_mongo.config import ConfigStateBackendMongo, MongoConfigError, check_unknown_settings
from pynenc_mongo.urls import redact_url, strip_password

PASSWORD = "KNOWNPASS"

BAD_URLS = [
    # (url, text the message must contain)
    (f"mongodb://user:{PASSWORD}@h/?foo=bar", "'foo'"),
    (f"mongodb://user:{PASSWORD}@h/?maxPoolSize=abc", "maxpoolsize must be an integer"),
    (f"mongodb://user:{PASSWORD}@h/?retryWrites=maybe", "retrywrites"),
    (f"mongodb://user:{PASSWORD}@h:99999", "Port must be an integer"),
    (f"mongodb://user:{PASSWORD}@", "no host"),
    ("mongodb://user:KNOWN/PASS@h", "escaped"),
    ("mongodb://user:KNOWN?PASS@h/db", "escaped"),
    ("mongodb://user:KNOWN@PASS@h", "escaped"),
    (f"user:{PASSWORD}@localhost", "expected a URL starting with"),
    (f"MONGODB://user:{PASSWORD}@h", "expected a URL starting with"),
    (f"http://user:{PASSWORD}@h", "expected a URL starting with"),
    (f"mongodb+srv://user:{PASSWORD}@a,b/", "exactly one host"),
    (f"mongodb://user:{PASSWORD}@h/" + "d" * 70, "63 bytes"),
    (f"mongodb://user:{PASSWORD}@h/bad$name", "bad database name"),
    ("", "non-empty"),
]


@pytest.mark.parametrize(("url", "expected"), BAD_URLS)
def test_malformed_urls_fail_at_configuration_time_without_the_password(
    url: str, expected: str
) -> None:
    with pytest.raises(MongoConfigError) as info:
        ConfigStateBackendMongo(config_values={"mongo_url": url})
    message = str(info.value)
    assert "mongo_url" in message
    assert expected in message
    for fragment in (PASSWORD, "KNOWN/PASS", "KNOWN?PASS", "KNOWN@PASS", "PASS@h"):
        assert fragment not in message
    assert "PASS" not in repr(info.value)


def test_bad_url_from_the_builder_fails_at_the_builder_call() -> None:
    with pytest.raises(MongoConfigError, match="mongo_url") as info:
        PynencBuilder().memory().mongo_state_backend(url=f"mongodb://u:{PASSWORD}@h/?nope=1")
    assert PASSWORD not in str(info.value)


def test_non_string_url() -> None:
    with pytest.raises(MongoConfigError, match="mongo_url: expected a string, got int"):
        ConfigStateBackendMongo(config_values={"mongo_url": 27017})


BAD_NUMBERS = [
    ("mongo_server_selection_timeout_seconds", "abc", "expected a number of seconds"),
    ("mongo_server_selection_timeout_seconds", "nan", "finite"),
    ("mongo_server_selection_timeout_seconds", float("inf"), "finite"),
    ("mongo_server_selection_timeout_seconds", 0, "at least"),
    ("mongo_server_selection_timeout_seconds", 10**7, "at most 86400"),
    ("mongo_server_selection_timeout_seconds", True, "expected a number"),
    ("mongo_inline_value_max_bytes", 2.5, "expected an integer"),
    ("mongo_inline_value_max_bytes", "1e12", "at most 8388608"),
    ("mongo_inline_value_max_bytes", 100, "at least 1024"),
    ("mongo_retention_days", -1, "at least"),
    ("mongo_retention_days", 1e12, "at most 36500"),
    ("mongo_retention_days", "forever", "expected a number of days"),
    ("mongo_max_pending_writes", "1.5", "expected an integer"),
    ("mongo_invocation_cache_size", -5, "at least"),
    ("mongo_create_indexes", "maybe", "expected a boolean"),
    ("mongo_history_write_mode", "eventually", "expected one of auto, async, sync"),
    ("mongo_async_driver", "twisted", "expected one of pymongo, motor"),
    ("mongo_database", "a" * 70, "at most 63 bytes"),
    ("mongo_database", "bad.name", "database name"),
    ("mongo_collection_prefix", "p" * 200, "at most 167 bytes"),
    ("mongo_collection_prefix", "pre$fix", "without '$'"),
    ("mongo_collection_prefix", "system.x", "system."),
]


@pytest.mark.parametrize(("setting", "value", "expected"), BAD_NUMBERS)
def test_bad_values_name_the_setting_and_what_was_expected(
    setting: str, value: Any, expected: str
) -> None:
    with pytest.raises(MongoConfigError) as info:
        ConfigStateBackendMongo(config_values={setting: value})
    assert str(info.value).startswith(setting)
    assert expected in str(info.value)


def test_bad_value_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYNENC__MONGO_RETENTION_DAYS", "1e12")
    with pytest.raises(MongoConfigError, match="mongo_retention_days: expected at most"):
        ConfigStateBackendMongo()


def test_good_values_are_accepted() -> None:
    conf = ConfigStateBackendMongo(
        config_values={
            "mongo_server_selection_timeout_seconds": "2.5",
            "mongo_inline_value_max_bytes": "4096",
            "mongo_retention_days": 7,
            "mongo_max_pending_writes": 10.0,
            "mongo_create_indexes": "off",
        }
    )
    assert conf.mongo_server_selection_timeout_seconds == 2.5
    assert conf.mongo_inline_value_max_bytes == 4096
    assert conf.mongo_retention_days == 7.0
    assert conf.mongo_max_pending_writes == 10
    assert conf.mongo_create_indexes is False


def test_misspelt_setting_in_config_values_is_refused(mongo_url: str) -> None:
    app = (
        PynencBuilder()
        .memory()
        .mongo_state_backend(url=mongo_url)
        .custom_config(mongo_urll="x")
        .build()
    )
    with pytest.raises(MongoConfigError, match="mongo_urll: unknown pynenc-mongo setting") as info:
        _ = app.state_backend
    assert "did you mean 'mongo_url'" in str(info.value)


def test_misspelt_setting_in_the_environment_is_refused(
    mongo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYNENC__MONGO_TIMEOUT_SECONDS", "3")
    with pytest.raises(MongoConfigError, match="environment variable PYNENC__MONGO_TIMEOUT"):
        check_unknown_settings({})
    monkeypatch.delenv("PYNENC__MONGO_TIMEOUT_SECONDS")
    monkeypatch.setenv("PYNENC__CONFIGSTATEBACKENDMONGO__MONGO_RETENTION", "3")
    with pytest.raises(MongoConfigError, match="mongo_retention: unknown"):
        check_unknown_settings({})
    monkeypatch.delenv("PYNENC__CONFIGSTATEBACKENDMONGO__MONGO_RETENTION")
    monkeypatch.setenv("PYNENC__CONFIGSTATEBACKENDMONGO__MONGO_RETENTION_DAYS", "3")
    monkeypatch.setenv("PYNENC__CONFIGSTATEBACKENDMONGO__FILEPATH", "/nonexistent")
    check_unknown_settings({"mongo_url": "mongomock://x", "other_setting": 1})


def test_unknown_builder_keyword_is_refused() -> None:
    with pytest.raises(TypeError, match="unknown option"):
        PynencBuilder().memory().mongo_state_backend(url="mongomock://x", timeout=3)


@pytest.mark.parametrize(
    "url",
    [
        f"mongodb://user:{PASSWORD}@h1,h2/db?replicaSet=rs",
        "mongodb://user:KNOWN/PASS@h",
        "mongodb://user:KNOWN?PASS@h",
        f"mongomock://user:{PASSWORD}@store",
        f"user:{PASSWORD}@host",
        f"redis://:{PASSWORD}@cache:6379/0",
        f"mongodb://h/?tlsCertificateKeyFilePassword={PASSWORD}&tls=true",
        f"mongodb://h/?authMechanismProperties=AWS_SESSION_TOKEN:{PASSWORD}",
    ],
)
def test_redaction_never_shows_the_password(url: str) -> None:
    for shown in (redact_url(url), strip_password(url)):
        assert "PASS" not in shown, shown
