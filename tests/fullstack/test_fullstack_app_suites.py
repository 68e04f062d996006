"""pynenc's app suites on the whole MongoDB stack: ``unit.app`` and both app-id
isolation suites (unit and integration)."""

# ruff: noqa: F403
from pynenc_tests.integration.app_id_isolation.all_tests import *
from pynenc_tests.unit.app.all_tests import *
from pynenc_tests.unit.app_id_isolation.all_tests import *
