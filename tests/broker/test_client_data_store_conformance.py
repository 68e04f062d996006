"""pynenc's client data store suites on MongoClientDataStore: unit (2) and
integration (8)."""

# ruff: noqa: F403
from pynenc_tests.integration.test_client_data_store.test_all_client_data_store import *
from pynenc_tests.unit.client_data_store.all_tests import *
