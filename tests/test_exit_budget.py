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

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from wire_support import WireServerUnavailable, start_wire_server

import pynenc_mongo
from pynenc_mongo import aio, at_exit, schema
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
    # close() is given the time left; the exit says what it did not confirm.
    assert "history records of 1 invocation(s)" in stderr, stderr
    assert "still being written at the exit deadline" in stderr, stderr
    assert elapsed < budget + 6.0, (elapsed, stderr[-3000:])


def _steps(log: list[str], event: threading.Event) -> list[tuple[str, Any]]:
    def sleeper(name: str, seconds: float) -> Any:
        def write() -> None:
            time.sleep(seconds)
            log.append(name)

        return write

    def fails() -> None:
        log.append("fails")
        raise RuntimeError("refused")

    writes = [
        ("fails", fails),
        ("first", sleeper("first", 0.3)),
        ("second", sleeper("second", 0.3)),
        ("third", lambda: log.append("third")),
        ("stuck", lambda: (event.wait(), log.append("stuck")) and None),
    ]
    # A step's write is called with the seconds left until the deadline.
    return [(name, lambda _left, write=write: write()) for name, write in writes]


def test_run_within_abandons_a_stuck_step_at_the_deadline(caplog: pytest.LogCaptureFixture) -> None:
    """Each step in a daemon thread of its own: the failing one is logged, the others
    are written, the stuck one is abandoned at the deadline and named."""
    log: list[str] = []
    event = threading.Event()
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="pynenc_mongo"):
        left = at_exit.run_within(_steps(log, event), budget_seconds=1.5)
    elapsed = time.monotonic() - started
    event.set()
    assert left == ["fails", "stuck"]
    assert sorted(log) == ["fails", "first", "second", "third"]
    assert 1.4 < elapsed < 3.0, elapsed  # side by side: 0.3 s steps do not add up
    assert "fails not written: refused" in caplog.text
    assert "(may still land): stuck" in caplog.text


def test_run_within_without_threads_starts_no_step_after_the_deadline(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Python 3.12 starts no thread in an ``atexit`` handler ("can't create new thread
    at interpreter shutdown"): the steps run in the calling thread, and none starts
    after the deadline (before the fix every exit write was skipped with a
    traceback)."""

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    log: list[str] = []
    event = threading.Event()
    event.set()  # inline, a stuck step would hold the caller: this one returns
    with caplog.at_level(logging.ERROR, logger="pynenc_mongo"):
        left = at_exit.run_within(_steps(log, event), budget_seconds=0.45)
    # fails (0 s), first (0.3 s) start before the deadline; second starts at 0.3 s,
    # before it too, and ends at 0.6 s; third and stuck would start after it.
    assert log == ["fails", "first", "second"]
    assert left == ["fails", "third", "stuck"]
    assert "not confirmed written (may still land): third; stuck" in caplog.text


def test_writer_close_with_a_timeout_logs_what_it_did_not_write(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``close(timeout_seconds)`` on a writer whose insert never returns: it returns
    after the timeout, closed, and logs the records it did not write."""
    from pynenc.invocation.status import InvocationStatus, InvocationStatusRecord
    from pynenc.runner.runner_context import RunnerContext

    from pynenc_mongo.async_writes import AsyncHistoryWriter

    release = asyncio.Event()

    async def never_returns(docs: list[dict[str, Any]]) -> None:
        await release.wait()

    backend = make_app().state_backend
    writer = AsyncHistoryWriter(backend._history, insert=never_returns)
    backend._writer = writer
    ctx = RunnerContext(runner_cls="R", runner_id="r", pid=1, hostname="h", thread_id=1)
    backend.add_history("inv-1", InvocationStatusRecord(InvocationStatus.REGISTERED, "r"), ctx)
    started = time.monotonic()
    try:
        with caplog.at_level(logging.ERROR, logger="pynenc_mongo"):
            assert writer.close(timeout_seconds=0.5) is False
        assert 0.4 < time.monotonic() - started < 3.0
        assert "history records of 1 invocation(s) not written within 0.5 s" in caplog.text
        with pytest.raises(RuntimeError, match="closed"):
            writer.submit([{"invocation_id": "inv-2"}])
    finally:  # let the insert return: the app's purge at teardown waits for it
        aio.loop_thread().loop.call_soon_threadsafe(release.set)


WORKER_DEFERS = """
import multiprocessing, sys
from pynenc import PynencBuilder
from _fakes import make_dtos
import pynenc_mongo.state_backend  # imported before the fork, as in a runner's parent

def defer(url, database, app_id, inv_id):
    app = (
        PynencBuilder().app_id(app_id).memory()
        .mongo_state_backend(url=url, database=database).build()
    )
    app.state_backend._upsert_invocations([make_dtos(inv_id)])  # deferred
    assert app.state_backend._invocations.unwritten

if __name__ == "__main__":
    url, database, app_id, where = sys.argv[1:5]
    if where == "main":
        defer(url, database, app_id, "inv-main")
    else:
        worker = multiprocessing.get_context(where).Process(
            target=defer, args=(url, database, app_id, f"inv-{where}")
        )
        worker.start()
        worker.join(60)
        assert worker.exitcode == 0, worker.exitcode
    print("ready", flush=True)
"""


@pytest.mark.wire
@pytest.mark.parametrize("where", ["main", "fork", "spawn"])
def test_deferred_invocations_are_written_at_exit(
    server_url: str, tmp_path: Path, where: str
) -> None:
    """A process (or a ``multiprocessing`` worker) that ends with an invocation still
    deferred writes it on its way out, to a server that answers. Before the fix a fork
    worker wrote none (it runs none of the parent's ``atexit`` handlers); a budget of
    0 would fail every case."""
    from run_settings import RUN_DATABASE

    script = tmp_path / "defers.py"
    script.write_text(WORKER_DEFERS)
    app_id = f"exit-writes-{where}-{os.getpid()}-{time.monotonic_ns()}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(SRC)]))
    done = subprocess.run(
        [sys.executable, str(script), server_url, RUN_DATABASE, app_id, where],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "ready" in done.stdout, done.stderr[-3000:]
    from pynenc import PynencBuilder

    reader = (
        PynencBuilder()
        .app_id(app_id)
        .memory()
        .mongo_state_backend(url=server_url, database=RUN_DATABASE)
        .build()
    )
    backend: Any = reader.state_backend
    try:
        stored = backend.collection(schema.INVOCATIONS).count_documents(
            {schema.F_APP: app_id, schema.F_INV: f"inv-{where}"}
        )
        assert stored == 1, done.stderr[-3000:]
    finally:
        backend.purge()
        backend.close()


def test_one_budget_over_every_source_a_dead_server_does_not_starve_a_live_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``write_all`` runs every module's exit steps in one run, side by side, under
    the budget of the longest retry among all of them. Before the fix the deferred
    invocations and the history writers were two phases, one after the other, and a
    step stuck on a dead server left the writers no time (``close(timeout=0)``)."""
    stuck = threading.Event()
    seen: list[float] = []

    def dead_server(_left: float) -> None:
        stuck.wait()

    def live_server(left: float) -> None:
        seen.append(left)
        time.sleep(0.3)

    monkeypatch.setattr(
        at_exit,
        "_sources",
        [
            lambda: [(("deferred on a dead server", dead_server), 1.0)],
            lambda: [(("history on a live server", live_server), 0.1)],
        ],
    )
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="pynenc_mongo"):
        left = at_exit.write_all()
    elapsed = time.monotonic() - started
    stuck.set()
    assert left == ["deferred on a dead server"]
    # The live step got (almost) the whole budget: the longest retry (1 s) + the margin.
    assert seen and seen[0] > EXIT_MARGIN_SECONDS, seen
    assert elapsed < 1.0 + EXIT_MARGIN_SECONDS + 2.0, elapsed
