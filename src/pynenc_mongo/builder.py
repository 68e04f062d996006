"""Builder methods, registered through the ``pynenc.plugins`` entry point.

* ``PynencBuilder().mongo(url)`` puts the whole app on MongoDB: state backend,
  orchestrator, broker, trigger and client data store (``MongoStateBackend``,
  ``MongoOrchestrator``, ``MongoBroker``, ``MongoTrigger``, ``MongoClientDataStore``).
  Every runner works, process runners included: nothing is kept in process memory.
* ``PynencBuilder().sqlite(path).mongo_state_backend(url)`` (or ``.memory()...``) puts
  only the state on MongoDB and keeps the other components as they are, for apps that
  keep another broker.
* ``mongo_client_data_store(...)`` and ``mongo_trigger(...)`` select one component,
  as pynenc-mongo 0.3.0 did (same keywords).

The keywords of pynenc-mongo 0.3.0's ``mongo(url, db, host, port, username, password,
auth_source)`` work unchanged: they are turned into ``mongo_url``/``mongo_database``.
A validator (run by ``build()``) refuses a half-configured stack: MongoDB components
next to pynenc's memory components under a runner whose workers are other processes.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from pynenc_mongo.config import ConfigMongo, ConfigStateBackendMongo

#: Builder keyword -> pynenc config key.
_BUILDER_KEYS = {
    "url": "mongo_url",
    "database": "mongo_database",
    "server_selection_timeout_seconds": "mongo_server_selection_timeout_seconds",
    "collection_prefix": "mongo_collection_prefix",
    "create_indexes": "mongo_create_indexes",
    "history_write_mode": "mongo_history_write_mode",
    "max_pending_writes": "mongo_max_pending_writes",
    "inline_value_max_bytes": "mongo_inline_value_max_bytes",
    "retention_days": "mongo_retention_days",
    "outage_tolerance_seconds": "mongo_outage_tolerance_seconds",
    "socket_timeout_seconds": "mongo_socket_timeout_seconds",
    "async_driver": "mongo_async_driver",
    "invocation_cache_size": "mongo_invocation_cache_size",
}
#: Keywords of pynenc-mongo 0.3.0's ``mongo()`` (turned into a URL).
_LEGACY_KEYWORDS = ("db", "host", "port", "username", "password", "auth_source")

#: The five component classes of the full stack, by pynenc config key.
FULL_STACK: dict[str, str] = {
    "state_backend_cls": "MongoStateBackend",
    "orchestrator_cls": "MongoOrchestrator",
    "broker_cls": "MongoBroker",
    "trigger_cls": "MongoTrigger",
    "client_data_store_cls": "MongoClientDataStore",
}
#: pynenc's runners whose workers share one process (memory components work with them).
IN_PROCESS_RUNNERS = ("ThreadRunner", "DummyRunner")


def _legacy_url(options: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(mongo_url, mongo_database)`` from pynenc-mongo 0.3.0 keywords (None: not given).

    :raises ValueError: when ``url`` is given too (0.3.0 refused that as well).
    """
    given = {k: options.pop(k) for k in _LEGACY_KEYWORDS if options.get(k) is not None}
    for key in _LEGACY_KEYWORDS:
        options.pop(key, None)
    if not given:
        return None, None
    database = given.pop("db", None)
    if not given:
        return None, str(database)
    host = str(given.get("host", "localhost"))
    port = int(given.get("port", 27017))
    credentials = ""
    if "username" in given:
        credentials = quote(str(given["username"]), safe="")
        if "password" in given:
            credentials += ":" + quote(str(given["password"]), safe="")
        credentials += "@"
    query = (
        f"?authSource={quote(str(given['auth_source']), safe='')}" if "auth_source" in given else ""
    )
    return f"mongodb://{credentials}{host}:{port}/{query}", str(database) if database else None


def _settings(url: str | None, database: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """Validate builder keywords and return them as pynenc config values.

    :raises TypeError: for an unknown keyword (the message lists the known ones).
    :raises ValueError: for ``url`` together with 0.3.0 connection keywords.
    :raises pynenc_mongo.config.MongoConfigError: for a value of the wrong shape.
    """
    options = dict(options)
    legacy_url, legacy_database = _legacy_url(options)
    if legacy_url is not None and url is not None:
        raise ValueError(
            "mongo(): give either url or host/port/username/password/auth_source "
            "(pynenc-mongo 0.3.0 keywords), not both"
        )
    unknown = sorted(set(options) - set(_BUILDER_KEYS))
    if unknown:
        raise TypeError(
            f"mongo(): unknown option(s) {', '.join(unknown)}; expected url, database or one of "
            f"{', '.join(sorted(k for k in _BUILDER_KEYS if k not in ('url', 'database')))}"
        )
    given = {"url": url or legacy_url, "database": database or legacy_database, **options}
    values = {_BUILDER_KEYS[k]: v for k, v in given.items() if v is not None}
    # Validate now, so a bad value fails at the builder call that set it.
    ConfigStateBackendMongo(config_values=values)
    return values


def mongo(builder: Any, url: str | None = None, database: str | None = None, **options: Any) -> Any:
    """Put the whole app on MongoDB: all five components (see the module docstring).

    Arguments left as ``None`` are not set, so env vars and config files still apply
    (``PynencBuilder().mongo().build()`` with ``PYNENC__MONGO_URL`` set works).

    :param PynencBuilder builder: the builder (passed by pynenc).
    :param str | None url: ``mongo_url`` (``mongodb://``, ``mongodb+srv://``, ``mongomock://``).
    :param str | None database: ``mongo_database``.
    :param options: any of ``server_selection_timeout_seconds``, ``collection_prefix``,
        ``create_indexes``, ``history_write_mode``, ``max_pending_writes``,
        ``inline_value_max_bytes``, ``retention_days``, ``async_driver``,
        ``outage_tolerance_seconds``, ``socket_timeout_seconds``,
        ``invocation_cache_size`` (see :class:`~pynenc_mongo.config.ConfigStateBackendMongo`),
        or pynenc-mongo 0.3.0's ``db``, ``host``, ``port``, ``username``, ``password``,
        ``auth_source``.
    :return: the builder, for chaining.
    :raises TypeError: for an unknown keyword (the message lists the known ones).
    :raises pynenc_mongo.config.MongoConfigError: for a value of the wrong shape.
    """
    builder._config.update(_settings(url, database, options))
    builder._config.update(FULL_STACK)
    builder._plugin_components.add("mongo")
    builder._using_memory_components = False  # process runners are allowed
    return builder


def mongo_state_backend(
    builder: Any, url: str | None = None, database: str | None = None, **options: Any
) -> Any:
    """Put only the state on MongoDB (``MongoStateBackend``); the orchestrator, broker,
    trigger and client data store stay as set before (``.memory()``, ``.sqlite(path)``).

    Same arguments as :func:`mongo`. With ``.memory()`` the app stays limited to
    pynenc's in-process runners (ThreadRunner, DummyRunner), as pynenc enforces.
    """
    builder._config.update(_settings(url, database, options))
    builder._config["state_backend_cls"] = FULL_STACK["state_backend_cls"]
    return builder


def _require_mongo(builder: Any, what: str) -> None:
    if "mongo" not in builder._plugin_components and "mongo_url" not in builder._config:
        raise ValueError(f"{what} requires the MongoDB connection: call .mongo(url) first")


def mongo_client_data_store(
    builder: Any,
    min_size_to_cache: int = 1024,
    local_cache_size: int = 1024,
    max_size_to_cache: int = 0,
) -> Any:
    """Select ``MongoClientDataStore`` with pynenc's client-data-store settings
    (pynenc-mongo 0.3.0's method; ``max_size_to_cache=0`` means no upper bound).

    :raises ValueError: when no MongoDB connection was configured before.
    """
    _require_mongo(builder, "mongo_client_data_store()")
    builder._config.update(
        {
            "client_data_store_cls": FULL_STACK["client_data_store_cls"],
            "min_size_to_cache": min_size_to_cache,
            "max_size_to_cache": max_size_to_cache,
            "local_cache_size": local_cache_size,
        }
    )
    return builder


def mongo_trigger(
    builder: Any, scheduler_interval_seconds: int = 60, enable_scheduler: bool = True
) -> Any:
    """Select ``MongoTrigger`` with pynenc's scheduler settings (pynenc-mongo 0.3.0's method).

    :raises ValueError: when no MongoDB connection was configured before.
    """
    _require_mongo(builder, "mongo_trigger()")
    builder._config.update(
        {
            "trigger_cls": FULL_STACK["trigger_cls"],
            "scheduler_interval_seconds": scheduler_interval_seconds,
            "enable_scheduler": enable_scheduler,
        }
    )
    return builder


def validate_full_stack(config: dict[str, Any]) -> None:
    """Refuse a half-configured stack (pynenc calls this from ``PynencBuilder.build``).

    pynenc's memory components (``Mem*``) live in one process. Next to a MongoDB
    component they are fine for the in-process runners (ThreadRunner, DummyRunner), but
    with a runner whose workers are other OS processes (MultiThreadRunner, ProcessRunner,
    PersistentProcessRunner) each worker would see its own memory broker, orchestrator or
    client data store. pynenc's own check covers ``.memory()``; after ``.mongo()``
    (which allows process runners) it no longer applies, so this one does.

    :param dict config: the builder's config values.
    :raises ValueError: naming the memory components, the runner and the builder call
        that fixes it.
    """
    selected = {key: str(config.get(key) or "") for key in FULL_STACK}
    if not any(cls.startswith("Mongo") for cls in selected.values()):
        return
    runner = str(config.get("runner_cls") or "")
    if not runner or runner in IN_PROCESS_RUNNERS:
        return
    in_memory = sorted(f"{k}={v}" for k, v in selected.items() if v.startswith("Mem"))
    if in_memory:
        raise ValueError(
            f"half-configured MongoDB stack: {runner} runs workers in other processes, "
            f"but these keep their data in one process: {', '.join(in_memory)}; use .mongo(url) "
            "for the whole app, or a runner of one process (ThreadRunner, DummyRunner)"
        )


class MongoPlugin:
    """Entry point object for ``pynenc.plugins``: registers the builder methods above."""

    @staticmethod
    def register_builder_methods(builder_cls: Any) -> None:
        """Called by ``PynencBuilder`` on first instantiation (pynenc's plugin protocol)."""
        import pynenc_mongo  # noqa: F401  (defines the component classes)

        builder_cls.register_plugin_method("mongo", mongo)
        builder_cls.register_plugin_method("mongo_state_backend", mongo_state_backend)
        builder_cls.register_plugin_method("mongo_client_data_store", mongo_client_data_store)
        builder_cls.register_plugin_method("mongo_trigger", mongo_trigger)
        builder_cls.register_plugin_validator(validate_full_stack)


__all__ = [
    "FULL_STACK",
    "ConfigMongo",
    "MongoPlugin",
    "mongo",
    "mongo_client_data_store",
    "mongo_state_backend",
    "mongo_trigger",
    "validate_full_stack",
]
