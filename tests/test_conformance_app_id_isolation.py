"""pynenc's own app_id isolation conformance suite, run on MongoStateBackend."""

# ruff: noqa: F403
from pynenc_tests.unit.app_id_isolation.all_tests import *
