"""Run the runner of ``cross_process_tasks.app`` (configured from ``PYNENC__*``
environment variables) until SIGTERM: ``python tests/cross_process_worker.py``.

Started by ``tests/test_cross_process_runners.py`` so that the runner, and the
processes it starts, are other OS processes than the test's.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import cross_process_tasks

    print(f"runner {type(cross_process_tasks.app.runner).__name__} pid {os.getpid()}", flush=True)
    cross_process_tasks.app.runner.run()
