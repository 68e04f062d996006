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

import difflib
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from cistell import ConfigField
from pynenc.conf.config_base import ConfigPynencBase
from pynenc.conf.config_state_backend import ConfigStateBackend

from pynenc_mongo.urls import MongoUrlError, parse_url, redact_url

DEFAULT_URL = "mongodb://localhost:27017"
DEFAULT_DATABASE = "pynenc"
HISTORY_WRITE_MODES = ("auto", "async", "sync")
ASYNC_DRIVERS = ("pymongo", "motor")

#: Largest inline value: half of MongoDB's 16 MiB document limit (and one piece).
MAX_INLINE_VALUE_BYTES = 8 * 1024 * 1024
#: Longest retention: 100 years (dates beyond that overflow Python's datetime).
MAX_RETENTION_DAYS = 36_500.0
#: Longest server selection timeout accepted: one day.
MAX_TIMEOUT_SECONDS = 86_400.0
#: MongoDB's limit on a namespace (``<database>.<collection>``) in bytes
#: (MongoDB manual, "MongoDB Limits and Thresholds": 255 bytes since 4.4).
MAX_NAMESPACE_BYTES = 255
#: Longest collection prefix: leaves room for a 63-byte database name, the dot
#: and the longest logical collection name (``workflow_sub_invocations``).
MAX_PREFIX_BYTES = MAX_NAMESPACE_BYTES - 63 - 1 - len("workflow_sub_invocations")

_TRUE = frozenset({"true", "1", "yes", "on", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "off", "n", "f"})


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
    name: str,
    kind: type[int] | type[float],
    minimum: float,
    unit: str,
    maximum: float | None = None,
    why_maximum: str = "",
) -> Callable[[Any, type], Any]:
    """Mapper for an int/float setting within ``[minimum, maximum]``, naming the unit.

    Refuses booleans, NaN and infinities, and (for integer settings) numbers
    with a fractional part, instead of silently truncating them.
    """
    expected = "an integer" if kind is int else "a number"

    def mapper(value: Any, _expected: type) -> Any:
        if isinstance(value, bool):
            raise MongoConfigError(f"{name}: expected {expected} of {unit}, got {value!r}")
        raw = value.strip() if isinstance(value, str) else value
        try:
            as_float = float(raw)
        except (TypeError, ValueError, OverflowError):
            raise MongoConfigError(
                f"{name}: expected {expected} of {unit}, got {value!r}"
            ) from None
        if not math.isfinite(as_float):
            raise MongoConfigError(
                f"{name}: expected a finite number of {unit}, got {value!r}"
            ) from None
        number: int | float
        if kind is int:
            if isinstance(raw, int):
                number = raw
            elif as_float.is_integer():
                number = int(as_float)
            else:
                raise MongoConfigError(f"{name}: expected an integer of {unit}, got {value!r}")
        else:
            number = as_float
        if number < minimum:
            raise MongoConfigError(f"{name}: expected at least {minimum} {unit}, got {number!r}")
        if maximum is not None and number > maximum:
            raise MongoConfigError(
                f"{name}: expected at most {maximum} {unit}{why_maximum}, got {number!r}"
            )
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
    """Collection-name prefix: MongoDB forbids ``$`` and NUL in collection names,
    reserves ``system.``, and limits a namespace to 255 bytes."""
    if (
        not isinstance(value, str)
        or "$" in value
        or "\x00" in value
        or value.startswith("system.")
        or len(value.encode("utf-8", "surrogatepass")) > MAX_PREFIX_BYTES
    ):
        shown = value[:40] + "..." if isinstance(value, str) and len(value) > 40 else value
        raise MongoConfigError(
            "mongo_collection_prefix: expected a string without '$' or NUL that does not "
            f"start with 'system.', at most {MAX_PREFIX_BYTES} bytes (so every collection "
            f"name fits MongoDB's {MAX_NAMESPACE_BYTES}-byte namespace limit), got {shown!r}"
        )
    return value


def _database_mapper(value: Any, _expected: type) -> str:
    """Database name: MongoDB forbids ``/\\. "$`` and NUL, and at most 63 bytes."""
    if not isinstance(value, str):
        raise MongoConfigError(f"mongo_database: expected a string, got {type(value).__name__}")
    bad = set('/\\. "$\x00') & set(value)
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise MongoConfigError(
            f"mongo_database: expected valid UTF-8 text, got {value!r}"
        ) from None
    if bad or size > 63:
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
    :cvar ConfigField[bool] mongo_create_indexes:
        Create missing indexes lazily, once per process and collection (default True).
        Turn off where operators run ``pynenc-mongo-setup-indexes``.
    :cvar ConfigField[int] mongo_inline_value_max_bytes:
        Results, exceptions, arguments and workflow-data values up to this many bytes
        (UTF-8) are stored inline; larger ones are compressed and split into pieces.
        Default 1048576 (1 MiB), at most 8388608 (8 MiB).
    :cvar ConfigField[float] mongo_retention_days:
        Days after an invocation's final history record after which MongoDB's TTL
        monitor deletes its documents. 0 (default) keeps everything; at most 36500.
    :cvar ConfigField[float] mongo_socket_timeout_seconds:
        Longest wait, in seconds, for the server on an open connection (one send or
        one reply: PyMongo's ``socketTimeoutMS``), so a stalled socket, a hung
        primary or a silent partition fails an operation attempt with
        ``NetworkTimeout`` instead of blocking until TCP keepalive gives up. Default
        60; 0 for no limit. Ignored when the URL sets ``socketTimeoutMS`` or
        ``timeoutMS``. See :func:`pynenc_mongo.client.get_client` for how it relates
        to ``timeoutMS`` and retries.
    :cvar ConfigField[float] mongo_outage_tolerance_seconds:
        How long every idempotent read and write (history, invocations, results,
        workflow data, asynchronous history batches) keeps retrying while MongoDB is
        unreachable (paused, restarting, electing a primary) before the caller gets
        :class:`~pynenc_mongo.errors.MongoUnavailableError`. Default 30; 0 turns the
        waiting off (5 attempts, a server selection timeout fails at once); at most
        86400. See :mod:`pynenc_mongo.errors` and the README's "Outages" section.
    """

    mongo_url = ConfigField(DEFAULT_URL, _url_mapper, secret=True)
    mongo_database = ConfigField("", _database_mapper)
    mongo_server_selection_timeout_seconds = ConfigField(
        5.0,
        _number_mapper(
            "mongo_server_selection_timeout_seconds",
            float,
            0.001,
            "seconds",
            MAX_TIMEOUT_SECONDS,
        ),
    )
    mongo_collection_prefix = ConfigField("pynenc_", _prefix_mapper)
    mongo_async_driver = ConfigField("pymongo", _choice_mapper("mongo_async_driver", ASYNC_DRIVERS))
    mongo_create_indexes = ConfigField(True, _bool_mapper("mongo_create_indexes"))
    mongo_inline_value_max_bytes = ConfigField(
        1_048_576,
        _number_mapper(
            "mongo_inline_value_max_bytes",
            int,
            1024,
            "bytes",
            MAX_INLINE_VALUE_BYTES,
            " (half of MongoDB's 16 MiB document limit; larger values are split anyway)",
        ),
    )
    mongo_retention_days = ConfigField(
        0.0, _number_mapper("mongo_retention_days", float, 0.0, "days", MAX_RETENTION_DAYS)
    )
    mongo_socket_timeout_seconds = ConfigField(
        60.0,
        _number_mapper("mongo_socket_timeout_seconds", float, 0.0, "seconds", MAX_TIMEOUT_SECONDS),
    )
    mongo_outage_tolerance_seconds = ConfigField(
        30.0,
        _number_mapper(
            "mongo_outage_tolerance_seconds", float, 0.0, "seconds", MAX_TIMEOUT_SECONDS
        ),
    )


class ConfigStateBackendMongo(ConfigStateBackend, ConfigMongo):
    """State-backend settings: :class:`ConfigMongo` plus the backend's own.

    :cvar ConfigField[str] mongo_history_write_mode:
        ``auto`` (default: asynchronous on pynenc 0.2.x, synchronous on 0.4.x, each
        version's contract), ``async`` or ``sync``.
    :cvar ConfigField[int] mongo_max_pending_writes:
        Cap on asynchronous history records in flight; callers block past it. Default 10000.
    :cvar ConfigField[int] mongo_invocation_cache_size:
        How many invocations' (immutable) DTOs each process keeps in memory. Default 10000.
    """

    mongo_history_write_mode = ConfigField(
        "auto", _choice_mapper("mongo_history_write_mode", HISTORY_WRITE_MODES)
    )
    mongo_max_pending_writes = ConfigField(
        10_000, _number_mapper("mongo_max_pending_writes", int, 1, "records")
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


def known_settings() -> set[str]:
    """Names of every pynenc-mongo setting: the ``ConfigField``s of :class:`ConfigMongo`
    and of every class derived from it (so other pynenc-mongo components count too)."""
    names: set[str] = set()
    pending: list[type[Any]] = [ConfigMongo]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        for klass in cls.__mro__:
            names.update(k for k, v in vars(klass).items() if isinstance(v, ConfigField))
    return names


#: pynenc-mongo 0.3.0 settings -> what replaces them (one line each, for the error).
LEGACY_SETTINGS: dict[str, str] = {
    "mongo_host": "put the host in mongo_url, e.g. mongo_url='mongodb://HOST:PORT/'",
    "mongo_port": "put the port in mongo_url, e.g. mongo_url='mongodb://HOST:PORT/'",
    "mongo_db": "use mongo_database",
    "mongo_username": "put the user in mongo_url, e.g. mongo_url='mongodb://USER:PASSWORD@HOST/'",
    "mongo_password": "put the password in mongo_url, e.g. mongo_url='mongodb://USER:PASSWORD@HOST/'",
    "mongo_auth_source": "put it in mongo_url's query, e.g. mongo_url='mongodb://HOST/?authSource=admin'",
}


def check_unknown_settings(
    config_values: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None
) -> None:
    """Refuse misspelt pynenc-mongo settings instead of silently ignoring them.

    cistell ignores keys it does not know, so ``mongo_urll`` or
    ``PYNENC__MONGO_TIMEOUT`` would leave the default in force unnoticed. This
    looks at ``config_values`` keys starting with ``mongo_`` and at environment
    variables ``PYNENC__MONGO_*`` and ``PYNENC__CONFIG<CLASS>MONGO__*`` (for
    every pynenc-mongo config class); settings in config files are not checked.

    :param config_values: the app's config values (may be None).
    :param environ: environment to check (default ``os.environ``).
    :raises MongoConfigError: naming the unknown setting, where it came from and
        the closest known setting.
    """
    known = known_settings()
    env = os.environ if environ is None else environ
    found: list[tuple[str, str]] = []
    for key in config_values or {}:
        if isinstance(key, str) and key.lower().startswith("mongo_") and key not in known:
            found.append((key, "config values"))
    prefix = ConfigMongo.ENV_PREFIX + ConfigMongo.ENV_SEP
    classes: list[type[Any]] = [ConfigMongo, *_all_subclasses(ConfigMongo)]
    class_prefixes = {
        f"{prefix}{cls.__name__.upper()}{ConfigMongo.ENV_SEP}": cls for cls in classes
    }
    for var in env:
        upper = var.upper()
        if upper.startswith(prefix + "MONGO_"):
            name = upper[len(prefix) :].lower()
            if name not in known:
                found.append((name, f"environment variable {var}"))
            continue
        for class_prefix, cls in class_prefixes.items():
            if upper.startswith(class_prefix):
                name = upper[len(class_prefix) :].lower()
                fields = {
                    k
                    for klass in cls.__mro__
                    for k, v in vars(klass).items()
                    if isinstance(v, ConfigField)
                }
                if name and name != ConfigMongo.ENV_FILEPATH.lower() and name not in fields:
                    found.append((name, f"environment variable {var}"))
    for name, source in found:
        replacement = LEGACY_SETTINGS.get(name.lower())
        if replacement:
            raise MongoConfigError(
                f"{name}: a pynenc-mongo 0.3.0 setting (from {source}), no longer read; "
                f"{replacement}"
            )
    if found:
        name, source = found[0]
        close = difflib.get_close_matches(name.lower(), sorted(known), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise MongoConfigError(
            f"{name}: unknown pynenc-mongo setting (from {source}){hint} "
            f"Known settings: {', '.join(sorted(known))}"
        )


def _all_subclasses(cls: type[Any]) -> list[type[Any]]:
    """Every class derived from ``cls``, recursively."""
    result: list[type[Any]] = []
    pending: list[type[Any]] = list(cls.__subclasses__())
    while pending:
        sub = pending.pop()
        result.append(sub)
        pending.extend(sub.__subclasses__())
    return result
