"""pynenc's own state-backend conformance suite (integration), run on MongoStateBackend."""

# ruff: noqa: F403
from pynenc_tests.integration.state_backend.all_tests import *
