"""Writes at interpreter exit, all within one time budget.

At exit pynenc-mongo writes what it still holds: each backend's deferred invocations
(:mod:`pynenc_mongo.state_backend.invocations`) and each asynchronous history
writer's buffered records (:mod:`pynenc_mongo.async_writes`). Each of those writes is
retried for up to its ``mongo_outage_tolerance_seconds``. Done one after another with
nothing else bounding them, N backends whose server is gone would hold the exit for
N times that, and a write stuck on a server that stopped answering would hold it
forever (a process that never ends, with nothing logged).

Those modules register a *source* of exit steps (:func:`add_source`). One exit
handler, :func:`write_all` (``atexit``; in a ``multiprocessing`` worker a
``multiprocessing.util.Finalize`` callback, :func:`write_all_at_worker_exit`),
collects every source's steps and runs them side by side, each in a daemon thread,
waiting for them until one deadline: the largest retry time among them
(:func:`longest_retry`) plus :data:`EXIT_MARGIN_SECONDS`. A step still running then is
abandoned (the daemon thread ends with the interpreter) and logged as not confirmed
written. On Python 3.12.0-3.12.2, which start no thread in an ``atexit`` handler, the
steps run in the exiting thread and none starts after the deadline. Each step is
given the seconds left (an asynchronous writer's ``close`` waits at most that long).

This module imports :mod:`pynenc_mongo.aio` and :mod:`pynenc_mongo.client` before
registering its handler: ``atexit`` runs handlers last-in, first-out, so these writes
run before the event loop thread stops (at most 10 s) and the clients close (at most
5 s), which come after them.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import multiprocessing.util
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pynenc_mongo import aio as _aio  # noqa: F401 - its atexit handler runs after ours
from pynenc_mongo import client as _client  # noqa: F401 - likewise
from pynenc_mongo.errors import RETRY_ATTEMPTS

logger = logging.getLogger("pynenc_mongo")

#: Seconds the exit waits beyond the largest retry time of the writes it runs
#: (one attempt's server selection, the last backoff step).
EXIT_MARGIN_SECONDS = 5.0

#: One exit step: (what it writes, for the log; the write, called with the seconds
#: left until the deadline, which raises if it did not write).
Step = tuple[str, Callable[[float], None]]
#: A source of exit steps: returns ``[(step, longest retry in seconds)]``.
Source = Callable[[], list[tuple[Step, float]]]

_sources: list[Source] = []


def add_source(source: Source) -> None:
    """Have :func:`write_all` run ``source``'s steps at exit (modules call it once)."""
    _sources.append(source)


def write_all() -> list[str]:
    """Run every source's exit steps in one :func:`run_within`, under one budget over
    all of them (:func:`budget_for`). Returns the names of the steps not confirmed."""
    pairs: list[tuple[Step, float]] = []
    for source in list(_sources):
        try:
            pairs.extend(source())
        except Exception as exc:  # noqa: BLE001 - nothing left to raise to at exit
            logger.error("pynenc-mongo: at exit, could not list the pending writes: %s", exc)
    if not pairs:
        return []
    return run_within([step for step, _ in pairs], budget_for([r for _, r in pairs]))


_worker_finalizer_pid = 0


def write_all_at_worker_exit() -> None:
    """In a ``multiprocessing`` worker, run :func:`write_all` when it ends (once per
    process; a no-op elsewhere). A worker ends with ``os._exit`` after running
    ``multiprocessing.util.Finalize`` callbacks, and runs none of the ``atexit``
    handlers registered before it started."""
    global _worker_finalizer_pid
    if _worker_finalizer_pid == os.getpid():
        return
    _worker_finalizer_pid = os.getpid()
    if multiprocessing.parent_process() is not None:
        multiprocessing.util.Finalize(None, write_all, exitpriority=100)


def longest_retry(conf: Any) -> float:
    """How long one write of ``conf``'s owner may be retried, in seconds: its
    ``mongo_outage_tolerance_seconds``, or with a tolerance of 0 (attempts-based
    policy, :func:`pynenc_mongo.errors.with_retry`) ``RETRY_ATTEMPTS`` server
    selection timeouts."""
    tolerance = float(conf.mongo_outage_tolerance_seconds)
    if tolerance > 0:
        return tolerance
    return RETRY_ATTEMPTS * float(conf.mongo_server_selection_timeout_seconds)


def budget_for(retries: Sequence[float]) -> float:
    """The exit's time budget in seconds: ``max(retries) + EXIT_MARGIN_SECONDS``.

    :param retries: :func:`longest_retry` of each step's owner.
    """
    return max([0.0, *retries]) + EXIT_MARGIN_SECONDS


def run_within(steps: Sequence[Step], budget_seconds: float) -> list[str]:
    """Run ``steps`` side by side and wait for them at most ``budget_seconds``.

    Each step runs in a daemon thread of its own, so a backend whose server is gone
    does not use up the time of one whose server answers; a step still running at the
    deadline is abandoned (it may still land: the log says "not confirmed"). Where no
    thread can be started (Python 3.12.0-3.12.2 refuse new threads in ``atexit``
    handlers: "can't create new thread at interpreter shutdown", cpython #113964),
    the remaining steps run one after another in the calling thread and none starts
    after the deadline; one that started before it is bounded by its own retry policy.

    Each write is called with the seconds left until the deadline. A step that
    raises is logged (``pynenc_mongo`` logger, error); nothing is raised
    (at exit there is no caller left to raise to).

    :param steps: ``(name, write)`` pairs.
    :param float budget_seconds: the budget, in seconds.
    :return: the names of the steps that failed or were not done by the deadline,
        in order (empty when every write is done).
    """
    if not steps:
        return []
    first = time.monotonic()
    deadline = first + budget_seconds
    outcome: dict[int, bool] = {}  # step index -> written (False: failed)

    def run(index: int, name: str, write: Callable[[float], None]) -> None:
        try:
            write(max(0.0, deadline - time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - logged; the other steps still run
            logger.error("pynenc-mongo: at exit, %s not written: %s", name, exc)
            outcome[index] = False
        else:
            outcome[index] = True

    threads: list[threading.Thread] = []
    for index, (name, write) in enumerate(steps):
        thread = threading.Thread(
            target=run, args=(index, name, write), name="pynenc-mongo-exit-write", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # no new threads at interpreter shutdown (Python 3.12)
            for later, (later_name, later_write) in list(enumerate(steps))[index:]:
                if time.monotonic() >= deadline:
                    break
                run(later, later_name, later_write)
            break
        threads.append(thread)
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    done = dict(outcome)  # one snapshot: the log and the result agree
    left = [name for index, (name, _) in enumerate(steps) if index not in done]
    if left:
        logger.error(
            "pynenc-mongo: at exit, gave up waiting after %.1f s (the exit budget: the "
            "longest retry plus %.0f s): not confirmed written (may still land): %s",
            time.monotonic() - first,
            EXIT_MARGIN_SECONDS,
            "; ".join(left),
        )
    return [name for index, (name, _) in enumerate(steps) if done.get(index) is not True]


atexit.register(write_all)
