"""The test process ends when its session ends (``tests/session_exit.py``): a child
process a test leaves alive is named and ended, and a thread that blocks the exit is
cut short by the watchdog, the session's status kept. Each case runs pytest in a child
process on a throw-away test file, with only that plugin loaded."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

TESTS = Path(__file__).parent


def _pytest_on(tmp_path: Path, source: str, timeout_seconds: float) -> tuple[int, str, float]:
    """Run pytest (``-p session_exit``) on one test file; (status, stderr, seconds)."""
    (tmp_path / "test_case.py").write_text(textwrap.dedent(source))
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "session_exit",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            str(tmp_path / "test_case.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_seconds,
    )
    return done.returncode, done.stderr, time.monotonic() - started


def test_a_child_process_left_alive_is_ended_and_named(tmp_path: Path) -> None:
    """Without the plugin multiprocessing's exit handler joins the child forever."""
    status, stderr, _ = _pytest_on(
        tmp_path,
        """
        import multiprocessing, time

        def forever():
            while True:
                time.sleep(1)

        def test_leaves_a_child():
            context = multiprocessing.get_context("spawn")
            context.Lock()  # starts multiprocessing's resource tracker (not a leftover)
            context.Process(target=forever).start()
        """,
        timeout_seconds=60,
    )
    assert status == 0, stderr
    assert "a test left this child process alive; ended it" in stderr, stderr
    assert "first seen after test_case.py::test_leaves_a_child" in stderr, stderr
    assert stderr.count("ended it") == 1 and "resource_tracker" not in stderr, stderr


def test_a_thread_holding_the_exit_is_cut_short_with_the_sessions_final_status(
    tmp_path: Path,
) -> None:
    """A non-daemon thread that never ends: the watchdog dumps the stacks and exits
    with the session's final status, here 3, set by a hook after the plugin's
    ``pytest_sessionfinish`` ran (as the query recorder does; before the fix the
    watchdog exited with the status handed to that hook, 0)."""
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.hookimpl(trylast=True)
            def pytest_sessionfinish(session):
                session.exitstatus = 3
            """
        )
    )
    status, stderr, elapsed = _pytest_on(
        tmp_path,
        """
        import threading, time
        import session_exit
        session_exit.EXIT_GRACE_SECONDS = 3.0

        def test_leaves_a_thread():
            threading.Thread(target=lambda: time.sleep(3600), name="never-ends").start()
        """,
        timeout_seconds=60,
    )
    assert status == 3, stderr
    assert "has not exited" in stderr, stderr
    # The stacks: the main thread joining at shutdown, the test's thread in its sleep.
    assert "in _shutdown" in stderr and "test_case.py" in stderr, stderr
    assert elapsed < 30, elapsed
