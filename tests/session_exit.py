"""pytest plugin: the test process ends when the session ends.

A run that passed must not then hang at interpreter exit, where nothing is reported
and CI only sees its time limit pass. Two things can hold a finished pytest process:

* a child process still alive (a runner's worker a test left behind):
  ``multiprocessing``'s exit handler joins every child it started, without a timeout;
* a thread or exit handler blocked on a server that is gone.

At the end of the session (``pytest_unconfigure``, after the summary) this plugin
names every live child process (but ``multiprocessing``'s own resource tracker and
fork server, which end with this process), ends it (SIGTERM, then SIGKILL after 5 s) and arms a
watchdog: if the interpreter has not exited :data:`EXIT_GRACE_SECONDS` later, it writes
every thread's stack to stderr (``faulthandler``) and exits with the session's status.
Both write one line to stderr, so a leak shows in the log of a run that passed.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from typing import Any

import psutil
import pytest

#: Seconds the interpreter gets to exit after the session ends (exit handlers included:
#: pynenc-mongo's exit writes take at most 35 s by default, then 10 s + 5 s to stop the
#: loop thread and close the clients; see pynenc_mongo.at_exit).
EXIT_GRACE_SECONDS = 150.0

_session: dict[str, pytest.Session] = {}
#: pid -> node id of the test after which this process's child was first seen alive.
_first_seen_after: dict[int, str] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Any:
    """After each test, note the child processes alive that no test was noted for (so
    the session-end report can name the test that left one behind)."""
    yield
    try:
        for proc in psutil.Process().children(recursive=True):
            _first_seen_after.setdefault(proc.pid, item.nodeid)
    except psutil.Error:
        pass


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Remember the session: the watchdog exits with its final ``exitstatus`` (read at
    ``pytest_unconfigure``: other hooks, e.g. the query recorder's, may set it after
    this one runs)."""
    _session["session"] = session


def _say(text: str) -> None:
    sys.stderr.write(f"==> session exit: {text}\n")
    sys.stderr.flush()


def _helper_pids() -> set[int]:
    """The pids of ``multiprocessing``'s own helper processes, the resource tracker
    and the fork server: they end by themselves once this process exits (their pipe
    closes) and are not a test's leftovers. By pid, not command line: a fork server's
    workers are forked from it and carry its command line."""
    pids: set[int] = set()
    try:
        from multiprocessing import forkserver, resource_tracker

        tracker = getattr(resource_tracker, "_resource_tracker", None)
        server = getattr(forkserver, "_forkserver", None)
        for pid in (getattr(tracker, "_pid", None), getattr(server, "_forkserver_pid", None)):
            if isinstance(pid, int):
                pids.add(pid)
    except ImportError:  # pragma: no cover - both exist on every supported Python
        pass
    return pids


def end_children() -> list[str]:
    """End this process's live child processes; returns a line for each: its pid, the
    test after which it was first seen alive, its command line."""
    helpers = _helper_pids()
    children = [p for p in psutil.Process().children(recursive=True) if p.pid not in helpers]
    named, ending = [], []
    for proc in children:
        try:
            after = _first_seen_after.get(proc.pid, "no test (the session's set-up or end)")
            named.append(
                f"pid {proc.pid}, first seen after {after}: {' '.join(proc.cmdline())[:160]}"
            )
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        ending.append(proc)
    end_processes(ending)
    return named


def end_processes(procs: list[psutil.Process], grace_seconds: float = 5.0) -> None:
    """SIGTERM each of ``procs``, SIGKILL those still alive ``grace_seconds`` later,
    then wait (at most as long again) for them to be gone; processes already gone
    are skipped. Shared with the full-stack teardown (tests/fullstack/conftest.py)."""
    for proc in procs:
        try:
            proc.terminate()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            pass
    _gone, alive = psutil.wait_procs(procs, timeout=grace_seconds)
    for proc in alive:
        try:
            proc.kill()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            pass
    psutil.wait_procs(alive, timeout=grace_seconds)


def _watchdog(status: int) -> None:
    time.sleep(EXIT_GRACE_SECONDS)
    _say(
        f"the interpreter has not exited {EXIT_GRACE_SECONDS:.0f} s after the session "
        f"ended; every thread's stack follows, then exit with the session's status {status}"
    )
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    for line in end_children():
        _say(f"child process still alive, ended: {line}")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(status)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End leftover child processes and arm the exit watchdog (module docstring)."""
    if hasattr(config, "workerinput"):  # an xdist worker: its controller does this
        return
    for line in end_children():
        _say(f"a test left this child process alive; ended it: {line}")
    session = _session.get("session")
    status = int(session.exitstatus) if session is not None else 0
    threading.Thread(
        target=_watchdog, args=(status,), name="pynenc-mongo-exit-watchdog", daemon=True
    ).start()
