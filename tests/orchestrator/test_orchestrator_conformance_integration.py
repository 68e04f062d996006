"""pynenc's own orchestrator conformance suite (integration), on MongoOrchestrator.

Two of its tests build their own SQLite app and never reach MongoOrchestrator:
``test_config_propagation`` and ``test_status_transitions_integrity``; their cases
are covered on Mongo by ``test_orchestrator_processes.py`` (several OS processes
racing transitions over the wire server).
"""

# ruff: noqa: F403
from pynenc_tests.integration.orchestrator.all_tests import *
