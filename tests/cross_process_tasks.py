"""Tasks of the cross-process tests (``tests/test_cross_process_runners.py``).

The app is built from ``PYNENC__*`` environment variables (``Pynenc()``), as in
pynenc's own combination tests: every process that imports this module (the test
process, the runner process started by ``cross_process_worker.py`` and the runner's
worker processes, forked or spawned) builds the same app.
"""

from __future__ import annotations

import os
from typing import Any

from pynenc import Pynenc

app = Pynenc()


@app.task
def produce(i: int, payload: str) -> dict[str, Any]:
    """Return where it ran and which clients its process holds, and ``payload`` reversed.

    :return: ``{"i", "pid", "client_pids", "loop_pid", "result"}``: this process id,
        the creator pid of each registered ``MongoClient``, the pid the async loop
        thread was started in (None if none), and the reversed payload.
    """
    from pynenc_mongo import aio
    from pynenc_mongo.client import client_creator_pids

    app.state_backend.get_history(produce.invocation.invocation_id)  # use this process's client
    loop = aio._loop_thread
    return {
        "i": i,
        "pid": os.getpid(),
        "client_pids": client_creator_pids(),
        "loop_pid": loop.pid if loop is not None else None,
        "result": payload[::-1],
    }
