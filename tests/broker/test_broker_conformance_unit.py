"""pynenc's broker unit suite on MongoBroker (10 tests; 4 build their own memory or
SQLite apps, their cases are re-run on MongoDB in ``test_broker_queues.py``)."""

# ruff: noqa: F403
from pynenc_tests.unit.broker.all_tests import *
