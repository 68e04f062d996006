"""pynenc's own orchestrator conformance suite (unit), on MongoOrchestrator."""

# ruff: noqa: F403
from pynenc_tests.unit.orchestrator.all_tests import *
