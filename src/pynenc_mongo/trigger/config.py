"""``ConfigTriggerMongo``: pynenc's trigger settings plus the shared MongoDB ones."""

from __future__ import annotations

from cistell import ConfigField
from pynenc.conf.config_trigger import ConfigTrigger

from pynenc_mongo.config import ConfigMongo, _number_mapper

#: Longest source-task cache time accepted: one hour.
MAX_SOURCE_CACHE_SECONDS = 3600.0


class ConfigTriggerMongo(ConfigTrigger, ConfigMongo):
    """Trigger settings: pynenc's ``ConfigTrigger`` and :class:`~pynenc_mongo.config.ConfigMongo`.

    :cvar ConfigField[float] mongo_trigger_source_cache_seconds:
        How long each process keeps the answer of ``get_conditions_sourced_from_task``
        for a task (including "no conditions"), in seconds. pynenc asks it about five
        times per invocation; with the cache a task without triggers costs no round
        trip once per period. Conditions this process registers are seen at once;
        those another process registers within this time. 0 disables the cache.
        Default 2, at most 3600.
    """

    mongo_trigger_source_cache_seconds = ConfigField(
        2.0,
        _number_mapper(
            "mongo_trigger_source_cache_seconds", float, 0.0, "seconds", MAX_SOURCE_CACHE_SECONDS
        ),
    )


__all__ = ["ConfigTriggerMongo"]
