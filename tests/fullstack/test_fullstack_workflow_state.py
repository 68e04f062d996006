"""pynenc's workflow state suites (``integration/workflow/state``: workflow data and
deterministic replay) on the whole MongoDB stack. Their fixtures come from the suite's
conftest (``app`` wraps our ``app_instance`` with a ThreadRunner)."""

# ruff: noqa: F401, F403
from pynenc_tests.integration.workflow.state.conftest import *
from pynenc_tests.integration.workflow.state.test_data import *
from pynenc_tests.integration.workflow.state.test_deterministic import *
from pynenc_tests.integration.workflow.state.test_deterministic_task_execution import *
