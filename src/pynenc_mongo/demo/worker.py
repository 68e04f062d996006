"""``python -m pynenc_mongo.demo.worker NAME``: one worker process of the distributed demo.

Builds the demo app (:mod:`pynenc_mongo.demo.tasks`) from the environment and runs its
runner until SIGTERM or SIGINT (pynenc's runner installs those handlers in the main
thread and stops its loop cleanly). ``NAME`` only labels the process in the demo's report.
"""

from __future__ import annotations

import sys
import warnings


def main(argv: list[str] | None = None) -> int:
    """Run one worker; exit status 0 after a clean stop.

    :param list | None argv: ``[NAME]`` (default ``sys.argv[1:]``).
    """
    args = sys.argv[1:] if argv is None else argv
    name = args[0] if args else "worker"
    warnings.filterwarnings("ignore")
    from pynenc_mongo.demo import tasks

    sys.stdout.write(f"{name} ready\n")
    sys.stdout.flush()
    tasks.app.runner.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
