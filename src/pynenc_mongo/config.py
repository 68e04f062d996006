"""Configuration classes, the pynenc way (cistell ``ConfigField``).

Following pynenc's SQLite backend (``pynenc.conf.config_sqlite.ConfigSQLite`` +
``ConfigStateBackendSQLite``): :class:`ConfigMongo` is a mixin with the
connection settings, :class:`ConfigStateBackendMongo` combines it with pynenc's
``ConfigStateBackend`` and adds the state backend's own settings.

Every field can be set from ``config_values`` (the builder), a YAML/TOML/JSON
file (``PYNENC__FILEPATH``), ``[tool.pynenc]`` in ``pyproject.toml``, the
generic env var ``PYNENC__<FIELD>`` (for example ``PYNENC__MONGO_URL``) or the
class-specific ``PYNENC__CONFIGSTATEBACKENDMONGO__<FIELD>``; precedence is
cistell's, lowest to highest in that order.

Each mapper validates its value when the config is read and raises
:class:`MongoConfigError` naming the setting and what was expected; a password
never appears in the message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cistell import ConfigField
from pynenc.conf.config_base import ConfigPynencBase
from pynenc.conf.config_state_backend import ConfigStateBackend

from pynenc_mongo.urls import MongoUrlError, parse_url, redact_url

DEFAULT_URL = "mongodb://localhost:27017"
DEFAULT_DATABASE = "pynenc"
HISTORY_WRITE_MODES = ("auto", "async", "sync")
ASYNC_DRIVERS = ("pymongo", "motor")

_TRUE = frozenset({"true", "1", "yes", "on", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "off", "n", "f", ""})


class MongoConfigError(ValueError):
    """A pynenc-mongo setting has a value that cannot be used.

    The message names the setting, the value (secrets redacted) and what was expected.
    """


def _bool_mapper(name: str) -> Callable[[Any, type], bool]:
    """Mapper that parses env-var strings: "false"/"0"/"no"/"off" are False.

    cistell's default mapper is ``type(default)(value)``, which turns every
    non-empty string into True; this one refuses anything it does not know.
    """

    def mapper(value: Any, _expected: type) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
        raise MongoConfigError(
            f"{name}: expected a boolean (true/false, 1/0, yes/no, on/off), got {value!r}"
        )

    return mapper


def _number_mapper(
    name: str, kind: type[int] | type[float], minimum: float, unit: str
) -> Callable[[Any, type], Any]:
    """Mapper for an int/float setting with a lower bound, naming the unit in errors."""

    def mapper(value: Any, _expected: type) -> Any:
        if isinstance(value, bool):
            raise MongoConfigError(f"{name}: expected a number of {unit}, got {value!r}")
        try:
            number = kind(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise MongoConfigError(
                f"{name}: expected {'an integer' if kind is int else 'a number'} of {unit}, "
                f"got {value!r}"
            ) from None
        if number < minimum:
            raise MongoConfigError(f"{name}: expected at least {minimum} {unit}, got {number!r}")
        return number

    return mapper


def _choice_mapper(name: str, choices: tuple[str, ...]) -> Callable[[Any, type], str]:
    """Mapper for a string setting restricted to ``choices`` (case-insensitive)."""

    def mapper(value: Any, _expected: type) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise MongoConfigError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")

    return mapper


def _url_mapper(value: Any, _expected: type) -> str:
    """Validate a connection string at configuration time (no connection made)."""
    if not isinstance(value, str):
        raise MongoConfigError(f"mongo_url: expected a string, got {type(value).__name__}")
    try:
        parse_url(value.strip())
    except MongoUrlError as exc:
        raise MongoConfigError(str(exc)) from None
    return value.strip()


def _prefix_mapper(value: Any, _expected: type) -> str:
    """Collection-name prefix: MongoDB forbids ``$`` and NUL in collection names."""
    if not isinstance(value, str) or "$" in value or "\x00" in value or value.startswith("system."):
        raise MongoConfigError(
            "mongo_collection_prefix: expected a string without '$' or NUL that does not "
            f"start with 'system.', got {value!r}"
        )
    return value


def _database_mapper(value: Any, _expected: type) -> str:
    """Database name: MongoDB forbids ``/\\. "$`` and NUL, and at most 63 bytes."""
    if not isinstance(value, str):
        raise MongoConfigError(f"mongo_database: expected a string, got {type(value).__name__}")
    bad = set('/\\. "$\x00') & set(value)
    if bad or len(value.encode()) > 63:
        raise MongoConfigError(
            "mongo_database: expected a MongoDB database name (at most 63 bytes, none of "
            f'/\\. "$ or NUL), got {value!r}'
        )
    return value


class ConfigMongo(ConfigPynencBase):
    """Connection settings shared by every pynenc-mongo component.

    :cvar ConfigField[str] mongo_url:
        Connection string (secret). ``mongodb://`` and ``mongodb+srv://`` URLs go to
        PyMongo unchanged (credentials, ``authSource``, ``replicaSet``, TLS options);
        ``mongomock://<name>`` selects the in-process embedded store.
        Default ``mongodb://localhost:27017``. Env var ``PYNENC__MONGO_URL``.
    :cvar ConfigField[str] mongo_database:
        Database name. Empty (the default) means: the database in the URL path if
        there is one, else ``pynenc``.
    :cvar ConfigField[float] mongo_server_selection_timeout_seconds:
        Seconds PyMongo waits to find a suitable server before failing
        (PyMongo's ``serverSelectionTimeoutMS``, here in seconds). Default 5.
    :cvar ConfigField[str] mongo_collection_prefix:
        Prefix of every collection name. Default ``pynenc_``.
    :cvar ConfigField[str] mongo_async_driver:
        ``pymongo`` (PyMongo's ``AsyncMongoClient``, default) or ``motor``
        (``AsyncIOMotorClient``; needs the ``motor`` extra).
    """

    mongo_url = ConfigField(DEFAULT_URL, _url_mapper, secret=True)
    mongo_database = ConfigField("", _database_mapper)
    mongo_server_selection_timeout_seconds = ConfigField(
        5.0, _number_mapper("mongo_server_selection_timeout_seconds", float, 0.001, "seconds")
    )
    mongo_collection_prefix = ConfigField("pynenc_", _prefix_mapper)
    mongo_async_driver = ConfigField("pymongo", _choice_mapper("mongo_async_driver", ASYNC_DRIVERS))


class ConfigStateBackendMongo(ConfigStateBackend, ConfigMongo):
    """State-backend settings: :class:`ConfigMongo` plus the backend's own.

    :cvar ConfigField[bool] mongo_create_indexes:
        Create missing indexes lazily, once per process and collection (default True).
        Turn off where operators run ``pynenc-mongo-setup-indexes``.
    :cvar ConfigField[str] mongo_history_write_mode:
        ``auto`` (default: asynchronous on pynenc 0.2.x, synchronous on 0.4.x, each
        version's contract), ``async`` or ``sync``.
    :cvar ConfigField[int] mongo_max_pending_writes:
        Cap on asynchronous history records in flight; callers block past it. Default 10000.
    :cvar ConfigField[int] mongo_inline_value_max_bytes:
        Results, exceptions, arguments and workflow-data values up to this many bytes
        (UTF-8) are stored inline; larger ones are compressed and split into pieces.
        Default 1048576 (1 MiB).
    :cvar ConfigField[float] mongo_retention_days:
        Days after an invocation's final history record after which MongoDB's TTL
        monitor deletes its documents. 0 (default) keeps everything.
    :cvar ConfigField[int] mongo_invocation_cache_size:
        How many invocations' (immutable) DTOs each process keeps in memory. Default 10000.
    """

    mongo_create_indexes = ConfigField(True, _bool_mapper("mongo_create_indexes"))
    mongo_history_write_mode = ConfigField(
        "auto", _choice_mapper("mongo_history_write_mode", HISTORY_WRITE_MODES)
    )
    mongo_max_pending_writes = ConfigField(
        10_000, _number_mapper("mongo_max_pending_writes", int, 1, "records")
    )
    mongo_inline_value_max_bytes = ConfigField(
        1_048_576, _number_mapper("mongo_inline_value_max_bytes", int, 1024, "bytes")
    )
    mongo_retention_days = ConfigField(
        0.0, _number_mapper("mongo_retention_days", float, 0.0, "days")
    )
    mongo_invocation_cache_size = ConfigField(
        10_000, _number_mapper("mongo_invocation_cache_size", int, 0, "invocations")
    )


def effective_database(conf: ConfigMongo) -> str:
    """The database to use: ``mongo_database``, else the URL path, else ``pynenc``.

    :param ConfigMongo conf: a resolved config.
    :return: the database name.
    """
    if conf.mongo_database:
        return conf.mongo_database
    return parse_url(conf.mongo_url).database or DEFAULT_DATABASE


def describe(conf: ConfigMongo) -> str:
    """One-line description of where ``conf`` points, with the password redacted."""
    return f"{redact_url(conf.mongo_url)} database={effective_database(conf)!r}"
