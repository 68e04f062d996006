"""``MongoTrigger``: pynenc's trigger component on MongoDB (cron, event and status
triggers that fire once across all workers).

Select it by name: ``Pynenc(config_values={"trigger_cls": "MongoTrigger", "mongo_url":
...})`` (or ``PYNENC__TRIGGER_CLS=MongoTrigger``). Its settings are
:class:`~pynenc_mongo.trigger.config.ConfigTriggerMongo`.

The class joins its parts, one module each:

* :mod:`~pynenc_mongo.trigger.definitions` -- conditions, trigger definitions, the
  task -> conditions mapping and its per-process cache;
* :mod:`~pynenc_mongo.trigger.cron` -- the cron compare-and-set, trigger-run claims,
  valid conditions;
* :mod:`~pynenc_mongo.trigger.monitoring` -- events and trigger runs (pynenc 0.4's
  monitoring API, read by pynmon), and :mod:`~pynenc_mongo.trigger.purge` -- their
  purge hooks by age and by cap.

Collections and indexes: :mod:`pynenc_mongo.schema.trigger`. All I/O goes through one
:class:`~pynenc_mongo.store.MongoStore`.

pynenc 0.2.3 (17 abstract methods, no monitoring API) is supported too: the
monitoring methods are extra there and never called, and its trigger suite passes
(``tests/trigger``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any

from pynenc.trigger.base_trigger import BaseTrigger

from pynenc_mongo.config import check_unknown_settings
from pynenc_mongo.errors import translate_errors
from pynenc_mongo.schema import trigger as layout
from pynenc_mongo.store import MongoStore
from pynenc_mongo.trigger.config import ConfigTriggerMongo
from pynenc_mongo.trigger.cron import CronPart
from pynenc_mongo.trigger.definitions import DefinitionsPart
from pynenc_mongo.trigger.purge import PurgePart

if TYPE_CHECKING:
    from pynenc.app import Pynenc


def _trigger_config_validator() -> Callable[[Any], None] | None:
    """pynenc's ``validate_trigger_config`` (pynenc >= 0.4), or None (0.2.3 has none)."""
    try:
        from pynenc.conf.validation_trigger import validate_trigger_config
    except ImportError:  # pragma: no cover (pynenc 0.2.3)
        return None
    return validate_trigger_config


class MongoTrigger(DefinitionsPart, CronPart, PurgePart, BaseTrigger):
    """pynenc trigger component that keeps conditions, triggers, cron state, claims,
    events and trigger runs in MongoDB.

    :param Pynenc app: the pynenc app; its config selects the server
        (:class:`~pynenc_mongo.trigger.config.ConfigTriggerMongo`).
    :raises pynenc_mongo.config.MongoConfigError: at construction, for a bad or
        misspelt ``mongo_*`` setting.
    :raises pynenc.conf.validation_trigger.TriggerConfigError: at construction, for
        trigger settings pynenc refuses (``event_retention_days`` < 1).

    Creating it does no I/O. Connection or authentication failures raise
    :class:`~pynenc_mongo.errors.MongoUnavailableError` /
    :class:`~pynenc_mongo.errors.MongoAuthenticationError` naming the host.
    """

    def __init__(self, app: Pynenc) -> None:
        super().__init__(app)
        conf = self.conf  # validates every setting now, with errors naming the setting
        self._store = MongoStore(conf, app.app_id)
        self._init_source_cache(conf.mongo_trigger_source_cache_seconds)

    @cached_property
    def conf(self) -> ConfigTriggerMongo:
        """The resolved settings (cistell), checked by pynenc's ``validate_trigger_config``
        as ``BaseTrigger.conf`` does (pynenc >= 0.4).

        :raises pynenc_mongo.config.MongoConfigError: for a bad or misspelt setting.
        """
        check_unknown_settings(self.app.config_values)
        config = ConfigTriggerMongo(
            config_values=self.app.config_values,
            config_filepath=self.app.config_filepath,
        )
        validate = _trigger_config_validator()
        if validate is not None:
            validate(config)
        return config

    def _settings(self) -> ConfigTriggerMongo:
        return self.conf

    def __repr__(self) -> str:
        return f"<MongoTrigger app_id={self.app.app_id!r} {self.describe_target()}>"

    @translate_errors
    def _purge(self) -> None:
        """Delete every trigger document of this app (one ``delete_many`` per collection)
        and forget this process's cached answers (``purge`` then re-registers the
        app's task triggers, as pynenc's base does)."""
        self._store.purge(layout.COLLECTIONS)
        self._forget_sources()
        self._last_cron_execution_cache.clear()


__all__ = ["ConfigTriggerMongo", "MongoTrigger"]
