"""At interpreter exit, pynenc-mongo's writes share one time budget
(``pynenc_mongo.at_exit``): the largest outage tolerance plus
``EXIT_MARGIN_SECONDS``, however many backends and writers there are and whatever
state their server is in; what is not written is logged, and the process ends.

Each test runs a child Python process that builds the situation; the test then lets
its main script return and measures how long the process takes to end. The first
stops a wire test server of its own under the child (a real server cannot be
stopped: it runs with the local wire server in every mode, skipped where that cannot
start); the second needs no server (an insert that never returns).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from wire_support import WireServerUnavailable, start_wire_server

import pynenc_mongo
from pynenc_mongo.at_exit import EXIT_MARGIN_SECONDS

TESTS = Path(__file__).parent
#: Where this process imports pynenc_mongo from: the child imports the same code.
SRC = Path(pynenc_mongo.__file__).resolve().parents[1]
#: Backends with deferred invocations in the first child, and their outage tolerance.
BACKENDS = 8
TOLERANCE_SECONDS = 2.0


def _child(script: str) -> subprocess.Popen[str]:
    """Start ``script`` in a child interpreter (tests/ and src/ importable)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(SRC)]))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_ready(proc: subprocess.Popen[str]) -> None:
    """Wait for the child's ``ready`` line (its set-up done)."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "ready" not in line:
        proc.kill()
        _out, err = proc.communicate()
        raise AssertionError(f"the child failed before its set-up was done: {err[-3000:]}")


def _seconds_to_exit(proc: subprocess.Popen[str], timeout_seconds: float) -> tuple[float, str]:
    """Let the child's main script return (a line on stdin); (seconds until the
    process ended, its stderr).

    :raises AssertionError: if it had not ended after ``timeout_seconds`` (killed).
    """
    started = time.monotonic()
    try:
        _out, err = proc.communicate("go\n", timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        raise AssertionError(
            f"the process had not ended {timeout_seconds:.0f} s after its main script "
            f"returned; stderr: {err[-3000:]}"
        ) from None
    return time.monotonic() - started, err


@pytest.mark.wire
def test_deferred_invocations_of_many_backends_share_one_exit_budget() -> None:
    """Eight backends, each with a deferred invocation, then their server is gone.
    Before the fix each backend waited out its tolerance in turn at exit (8 x 2 s);
    now the exit waits at most the one budget and logs what was not written."""
    try:
        server = start_wire_server()  # its own: it is stopped mid-test
    except WireServerUnavailable as exc:
        pytest.skip(f"wire test server unavailable: {exc}")
    try:
        proc = _child(
            f"""
            import logging, sys
            logging.basicConfig(stream=sys.stderr, level=logging.ERROR)
            from pynenc import PynencBuilder
            from _fakes import make_dtos
            backends = []
            for i in range({BACKENDS}):
                app = (
                    PynencBuilder().app_id(f"exit-budget-{{i}}").memory()
                    .mongo_state_backend(
                        url={server.url!r}, outage_tolerance_seconds={TOLERANCE_SECONDS},
                        server_selection_timeout_seconds=0.5,
                    )
                    .build()
                )
                backend = app.state_backend
                backend._upsert_invocations([make_dtos()])  # deferred, not written
                assert backend._invocations.unwritten
                backends.append(backend)
            print("ready", flush=True)
            sys.stdin.readline()  # the server is stopped meanwhile
            """
        )
        _wait_ready(proc)
    finally:
        server.stop()
    elapsed, stderr = _seconds_to_exit(proc, BACKENDS * TOLERANCE_SECONDS * 4)
    budget = TOLERANCE_SECONDS + EXIT_MARGIN_SECONDS
    # Closing the clients at exit takes at most a few seconds more.
    assert elapsed < budget + 6.0, (elapsed, stderr[-3000:])
    assert "deferred invocation(s) of app 'exit-budget-" in stderr, stderr[-3000:]


def test_history_write_that_never_returns_does_not_hold_the_exit() -> None:
    """An asynchronous history writer whose insert never returns (a server that
    stopped answering, no socket timeout). Before the fix the exit's ``close`` waited
    for it forever; now the exit gives up at the budget and names the writer."""
    proc = _child(
        f"""
        import asyncio, logging, sys, uuid
        logging.basicConfig(stream=sys.stderr, level=logging.ERROR)
        from pynenc import PynencBuilder
        from pynenc.invocation.status import InvocationStatus, InvocationStatusRecord
        from pynenc.runner.runner_context import RunnerContext
        from pynenc_mongo.async_writes import AsyncHistoryWriter

        async def never_returns(docs):
            await asyncio.Event().wait()

        app = (
            PynencBuilder().app_id("exit-budget-history").memory()
            .mongo_state_backend(
                url="mongomock://exit-budget", outage_tolerance_seconds={TOLERANCE_SECONDS}
            )
            .build()
        )
        backend = app.state_backend
        backend._writer = AsyncHistoryWriter(backend._history, insert=never_returns)
        ctx = RunnerContext(runner_cls="R", runner_id="r", pid=1, hostname="h", thread_id=1)
        record = InvocationStatusRecord(InvocationStatus.REGISTERED, "r")
        backend.add_history(str(uuid.uuid4()), record, ctx)
        print("ready", flush=True)
        sys.stdin.readline()
        """
    )
    _wait_ready(proc)
    elapsed, stderr = _seconds_to_exit(proc, 60)
    budget = TOLERANCE_SECONDS + EXIT_MARGIN_SECONDS
    assert "gave up after" in stderr and "history records of 1 invocation" in stderr, stderr
    assert elapsed < budget + 6.0, (elapsed, stderr[-3000:])
