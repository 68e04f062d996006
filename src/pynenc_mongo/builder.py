"""The ``.mongo()`` builder method, registered through the ``pynenc.plugins`` entry point.

``PynencBuilder().sqlite(path).mongo(url)`` keeps SQLite for the orchestrator,
broker, client data store and trigger and puts the state in MongoDB;
``PynencBuilder().memory().mongo(url)`` likewise with the memory components.
"""

from __future__ import annotations

from typing import Any

from pynenc_mongo.config import ConfigStateBackendMongo

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
    "async_driver": "mongo_async_driver",
    "invocation_cache_size": "mongo_invocation_cache_size",
}


def mongo(builder: Any, url: str | None = None, database: str | None = None, **options: Any) -> Any:
    """Select ``MongoStateBackend`` and set its connection options.

    Arguments left as ``None`` are not set, so env vars and config files still
    apply (``PynencBuilder().mongo().build()`` with ``PYNENC__MONGO_URL`` set works).

    :param PynencBuilder builder: the builder (passed by pynenc).
    :param str | None url: ``mongo_url`` (``mongodb://``, ``mongodb+srv://``, ``mongomock://``).
    :param str | None database: ``mongo_database``.
    :param options: any of ``server_selection_timeout_seconds``, ``collection_prefix``,
        ``create_indexes``, ``history_write_mode``, ``max_pending_writes``,
        ``inline_value_max_bytes``, ``retention_days``, ``async_driver``,
        ``invocation_cache_size`` (see :class:`~pynenc_mongo.config.ConfigStateBackendMongo`).
    :return: the builder, for chaining.
    :raises TypeError: for an unknown keyword (the message lists the known ones).
    :raises pynenc_mongo.config.MongoConfigError: for a value of the wrong shape.
    """
    unknown = sorted(set(options) - set(_BUILDER_KEYS))
    if unknown:
        raise TypeError(
            f"mongo(): unknown option(s) {', '.join(unknown)}; expected url, database or one of "
            f"{', '.join(sorted(k for k in _BUILDER_KEYS if k not in ('url', 'database')))}"
        )
    given = {"url": url, "database": database, **options}
    values = {_BUILDER_KEYS[k]: v for k, v in given.items() if v is not None}
    # Validate now, so a bad value fails at the builder call that set it.
    ConfigStateBackendMongo(config_values=values)
    builder._config["state_backend_cls"] = "MongoStateBackend"
    builder._config.update(values)
    return builder


class MongoPlugin:
    """Entry point object for ``pynenc.plugins``: registers :func:`mongo` on the builder."""

    @staticmethod
    def register_builder_methods(builder_cls: Any) -> None:
        """Called by ``PynencBuilder`` on first instantiation (pynenc's plugin protocol)."""
        import pynenc_mongo.state_backend  # noqa: F401  (defines the component class)

        builder_cls.register_plugin_method("mongo", mongo)
