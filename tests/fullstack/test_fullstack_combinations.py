"""pynenc's end-to-end ``combinations`` suite (30 tests) on the whole MongoDB stack,
across every runner (see ``conftest.py`` for which store each runner uses).

The suite's own fixtures (``app`` and the task fixtures) are imported from its conftest;
``app_combination_instance`` comes from ``tests/fullstack/conftest.py``.
"""

# ruff: noqa: F401, F403
from pynenc_tests.integration.combinations.all_tests import *
from pynenc_tests.integration.combinations.conftest import (
    app,
    replace_tasks_app,
    task_async_add,
    task_async_fail,
    task_async_get_text,
    task_async_get_upper,
    task_async_sleep,
    task_cpu_intensive_no_conc,
    task_distribute_cpu_work,
    task_get_text,
    task_get_upper,
    task_process_large_shared_arg,
    task_raise_exception,
    task_retry_once,
    task_sleep,
    task_sum,
)
