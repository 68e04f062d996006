"""pynenc's own trigger suite (``pynenc_tests.unit.trigger.all_tests``) on MongoTrigger.

The star import brings three modules, each defining a ``trigger`` fixture; the last
one wins and does not bind the modules' tasks (``add``, ``trigger_target_task``) to
the app under test, so the fixture is declared again here (as pynenc-redis does).
"""

# ruff: noqa: F403, F405
from __future__ import annotations

from typing import Any

import pytest
from pynenc import Pynenc
from pynenc_tests.unit.trigger import test_trigger_all_instances as _all_instances
from pynenc_tests.unit.trigger.all_tests import *

try:  # pynenc >= 0.4 (0.2.3 has no monitoring suite)
    from pynenc_tests.unit.trigger import test_trigger_backend_monitoring as _monitoring
except ImportError:  # pragma: no cover (pynenc 0.2.3)
    _monitoring = None  # type: ignore[assignment]


@pytest.fixture
def trigger(app_instance: Pynenc) -> Any:
    """The app's MongoTrigger, with the suite's module tasks bound to the app."""
    _all_instances.add.app = app_instance
    if _monitoring is not None:
        _monitoring.trigger_target_task.app = app_instance
    return app_instance.trigger
