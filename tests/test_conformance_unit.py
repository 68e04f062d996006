"""pynenc's own state-backend conformance suite (unit), run on MongoStateBackend."""

# ruff: noqa: F403
from pynenc_tests.unit.state_backend.all_tests import *
