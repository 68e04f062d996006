"""Writes at interpreter exit, all within one time budget.

At exit pynenc-mongo writes what it still holds: each backend's deferred invocations
(:mod:`pynenc_mongo.state_backend.invocations`) and each asynchronous history
writer's buffered records (:mod:`pynenc_mongo.async_writes`). Each of those writes is
retried for up to its ``mongo_outage_tolerance_seconds``. Done one after another with
nothing else bounding them, N backends whose server is gone would hold the exit for
N times that, and a write stuck on a server that stopped answering would hold it
forever (a process that never ends, with nothing logged).

:func:`run_within` runs the steps one after another in one daemon thread and waits
for them until a single deadline: the largest tolerance among them plus
:data:`EXIT_MARGIN_SECONDS`. A step still running then is abandoned (the daemon
thread ends with the interpreter) and named in the returned list, which the caller
logs with what was not written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

logger = logging.getLogger("pynenc_mongo")

#: Seconds the exit waits beyond the largest outage tolerance of the writes it runs
#: (one attempt's server selection, the last backoff step).
EXIT_MARGIN_SECONDS = 5.0

#: One exit step: (what it writes, for the log; the write, which raises on failure).
Step = tuple[str, Callable[[], None]]


def budget_for(tolerances: Sequence[float]) -> float:
    """The exit's time budget in seconds: ``max(tolerances) + EXIT_MARGIN_SECONDS``.

    :param tolerances: the ``mongo_outage_tolerance_seconds`` of each step's owner.
    """
    return max([0.0, *tolerances]) + EXIT_MARGIN_SECONDS


def run_within(steps: Sequence[Step], budget_seconds: float) -> list[str]:
    """Run ``steps`` in order, in a daemon thread, waiting at most ``budget_seconds``.

    A step that raises is logged (``pynenc_mongo`` logger, error) and the next one
    runs; nothing is raised (at exit there is no caller left to raise to).

    :param steps: ``(name, write)`` pairs.
    :param float budget_seconds: the whole wait, in seconds.
    :return: the names of the steps that failed or were not done by the deadline,
        in order (empty when every write is done).
    """
    if not steps:
        return []
    finished = [0]  # steps run to their end (written or failed), in order
    failed: list[str] = []

    def run_all() -> None:
        for name, write in steps:
            try:
                write()
            except Exception as exc:  # noqa: BLE001 - logged; the next step still runs
                logger.error("pynenc-mongo: at exit, %s not written: %s", name, exc)
                failed.append(name)
            finished[0] += 1

    thread = threading.Thread(target=run_all, name="pynenc-mongo-exit-writes", daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(timeout=budget_seconds)
    left = [name for name, _ in steps[finished[0] :]]
    if left:
        logger.error(
            "pynenc-mongo: at exit, gave up after %.1f s (the largest outage tolerance "
            "plus %.0f s): not written: %s",
            time.monotonic() - started,
            EXIT_MARGIN_SECONDS,
            "; ".join(left),
        )
    return failed + left
