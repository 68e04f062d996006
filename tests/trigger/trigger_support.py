"""Helpers shared by the trigger tests and their worker processes (importable by name,
so ``spawn`` children can use them; ``conftest`` cannot be imported)."""

from __future__ import annotations

import uuid
from typing import Any

from pynenc import Pynenc, PynencBuilder
from run_settings import RUN_DATABASE

from pynenc_mongo import MongoTrigger


def build_trigger_app(
    url: str, app_id: str | None = None, database: str = RUN_DATABASE, **config: Any
) -> Pynenc:
    """An app on ``url``: MongoStateBackend and MongoTrigger, the rest in memory.

    :param str url: the MongoDB URL (``mongomock://...`` or a server).
    :param str | None app_id: the app id (default: a unique one).
    :param str database: the database.
    :param config: further config values (e.g. ``mongo_trigger_source_cache_seconds``).
    :return: the app (its trigger is created on first use).
    """
    builder = (
        PynencBuilder()
        .app_id(app_id or f"trg-{uuid.uuid4().hex[:8]}")
        .memory()
        .mongo_state_backend(url=url, database=database)
    )
    builder._config["trigger_cls"] = "MongoTrigger"
    builder._config.update(config)
    return builder.build()


def dispose(app: Pynenc) -> None:
    """Purge what ``app`` stored (trigger and state backend) and close its backend."""
    trigger = app._trigger
    if isinstance(trigger, MongoTrigger):
        trigger._purge()
    backend = app._state_backend
    if backend is not None:
        backend.purge()
        backend.close()


#: A module-level app for :func:`plain` (pynenc tasks must be defined at module level);
#: tests bind the task to the app under test (``plain.app = app``), as pynenc's suites do.
_module_app = Pynenc(config_values={"app_id": "trigger-support"})


@_module_app.task
def plain(x: int) -> int:
    """A task that no condition watches."""
    return x + 1
