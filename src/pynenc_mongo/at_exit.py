"""Writes at interpreter exit, all within one time budget.

At exit pynenc-mongo writes what it still holds: each backend's deferred invocations
(:mod:`pynenc_mongo.state_backend.invocations`) and each asynchronous history
writer's buffered records (:mod:`pynenc_mongo.async_writes`). Each of those writes is
retried for up to its ``mongo_outage_tolerance_seconds``. Done one after another with
nothing else bounding them, N backends whose server is gone would hold the exit for
N times that, and a write stuck on a server that stopped answering would hold it
forever (a process that never ends, with nothing logged).

:func:`run_within` runs the steps side by side, each in a daemon thread, and waits
for them until one deadline per process: from the first exit write, the largest
retry time among them (:func:`longest_retry`) plus :data:`EXIT_MARGIN_SECONDS`. A
step still running then is abandoned (the daemon thread ends with the interpreter)
and logged as not confirmed written. On Python 3.12.0-3.12.2, which start no thread
in an ``atexit`` handler, the steps run in the exiting thread and none starts after
the deadline; an asynchronous writer's ``close`` is given the time left
(:meth:`pynenc_mongo.async_writes.AsyncHistoryWriter.close`). After these writes the
exit also stops the event loop thread (at most 10 s, :mod:`pynenc_mongo.aio`) and
closes the clients (at most 5 s, :func:`pynenc_mongo.client.close_all`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pynenc_mongo.errors import RETRY_ATTEMPTS

logger = logging.getLogger("pynenc_mongo")

#: Seconds the exit waits beyond the largest outage tolerance of the writes it runs
#: (one attempt's server selection, the last backoff step).
EXIT_MARGIN_SECONDS = 5.0

#: One exit step: (what it writes, for the log; the write, which raises on failure).
Step = tuple[str, Callable[[], None]]

#: pid -> when this process's first exit write began (monotonic seconds): every
#: later exit phase (history writers after deferred invocations) counts from it.
_first_exit_write: dict[int, float] = {}


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


def exit_started() -> float:
    """When this process's first exit write began (``time.monotonic()``; set by the
    first call in each process): the exit phases pass it to :func:`run_within`."""
    return _first_exit_write.setdefault(os.getpid(), time.monotonic())


def run_within(
    steps: Sequence[Step], budget_seconds: float, since: float | None = None
) -> list[str]:
    """Run ``steps`` side by side and wait for them until ``since + budget_seconds``
    (the exit phases pass :func:`exit_started`, so they share one budget, the
    largest of theirs; None: from now).

    Each step runs in a daemon thread of its own, so a backend whose server is gone
    does not use up the time of one whose server answers; a step still running at the
    deadline is abandoned (it may still land: the log says "not confirmed"). Where no
    thread can be started (Python 3.12.0-3.12.2 refuse new threads in ``atexit``
    handlers: "can't create new thread at interpreter shutdown", cpython #113964),
    the remaining steps run one after another in the calling thread and none starts
    after the deadline; one that started before it is bounded by its own retry policy.

    A step that raises is logged (``pynenc_mongo`` logger, error); nothing is raised
    (at exit there is no caller left to raise to).

    :param steps: ``(name, write)`` pairs.
    :param float budget_seconds: the budget, in seconds.
    :param float | None since: the budget's start (``time.monotonic()``).
    :return: the names of the steps that failed or were not done by the deadline,
        in order (empty when every write is done).
    """
    if not steps:
        return []
    now = time.monotonic()
    first = now if since is None else since
    deadline = max(now, first + budget_seconds)
    outcome: dict[int, bool] = {}  # step index -> written (False: failed)

    def run(index: int, name: str, write: Callable[[], None]) -> None:
        try:
            write()
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
    left = [name for index, (name, _) in enumerate(steps) if index not in outcome]
    if left:
        logger.error(
            "pynenc-mongo: at exit, gave up waiting after %.1f s (the largest outage "
            "tolerance plus %.0f s): not confirmed written (may still land): %s",
            time.monotonic() - first,
            EXIT_MARGIN_SECONDS,
            "; ".join(left),
        )
    return [name for index, (name, _) in enumerate(steps) if outcome.get(index) is not True]
