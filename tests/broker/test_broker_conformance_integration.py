"""pynenc's broker integration suite (9 tests) on MongoBroker."""

# ruff: noqa: F403
from pynenc_tests.integration.broker.all_tests import *
