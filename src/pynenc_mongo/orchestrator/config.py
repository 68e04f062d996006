"""``ConfigOrchestratorMongo``: pynenc's orchestrator settings plus the Mongo ones.

Like pynenc's ``ConfigOrchestratorSQLite(ConfigOrchestrator, ConfigSQLite)``: the
connection settings come from :class:`~pynenc_mongo.config.ConfigMongo`, the
orchestrator's own from pynenc's ``ConfigOrchestrator`` (``blocking_control``,
``auto_final_invocation_purge_hours``), and these are added.
"""

from __future__ import annotations

from cistell import ConfigField
from pynenc.conf.config_orchestrator import ConfigOrchestrator

from pynenc_mongo.config import ConfigMongo, _number_mapper


class ConfigOrchestratorMongo(ConfigOrchestrator, ConfigMongo):
    """Orchestrator settings for :class:`~pynenc_mongo.orchestrator.MongoOrchestrator`.

    :cvar ConfigField[int] mongo_transition_attempts:
        How many compare-and-set attempts a status transition makes when another
        process changes the same invocation between its read and its write, before
        it raises ``InvocationStatusRaceConditionError``. Default 5.
    :cvar ConfigField[int] mongo_purge_batch_size:
        Invocations deleted per batch by ``auto_purge``. Default 1000.
    :cvar ConfigField[int] mongo_final_status_cache_size:
        Final status records each process keeps in memory (they never change).
        Default 10000; 0 disables the cache.
    :cvar ConfigField[float] mongo_atomic_service_lease_seconds:
        Age after which a RUNNING atomic-service execution is taken over by the next
        runner that claims the service, even if its holder still heartbeats. 0 (the
        default) means ``atomic_service_interval_minutes * 60``.
    """

    mongo_transition_attempts = ConfigField(
        5, _number_mapper("mongo_transition_attempts", int, 1, "attempts", 1000)
    )
    mongo_purge_batch_size = ConfigField(
        1000, _number_mapper("mongo_purge_batch_size", int, 1, "invocations", 100_000)
    )
    mongo_final_status_cache_size = ConfigField(
        10_000, _number_mapper("mongo_final_status_cache_size", int, 0, "records")
    )
    mongo_atomic_service_lease_seconds = ConfigField(
        0.0, _number_mapper("mongo_atomic_service_lease_seconds", float, 0.0, "seconds")
    )
