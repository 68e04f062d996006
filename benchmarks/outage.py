"""History records written, lost and duplicated through a server pause, and the time
until writes resume, in sync and async history mode.

Usage::

    PYNENC_MONGO_WIRE_VENV=.venv-wire .venv/bin/python benchmarks/outage.py \\
        [--pauses 5,15,40] [--records 300] [--modes sync,async] [--tolerance 30]

Starts a wire test server of its own (``scripts/wire_server``) and, for each mode and
pause, writes ``--records`` history records (REGISTERED, PENDING, RUNNING, SUCCESS of
``records / 4`` invocations) while the server is frozen (SIGSTOP) for that long after
a third of them, then resumed (SIGCONT). Prints one row per run:

* ``written``: distinct records in MongoDB afterwards; ``lost``: records missing;
  ``reported``: records whose caller got an error (sync: ``add_history`` raised;
  async: the invocation's wait raised); a lost record that was not reported would be
  a silent loss; ``dup``: documents beyond one per record;
* ``resume s``: from the resume until the stored record count grew;
* ``caller saw``: the first error a caller got (a pause past the outage tolerance,
  ``mongo_outage_tolerance_seconds``, default 30 s, ends in ``MongoUnavailableError``).

The wire server is an emulator: its timings say nothing about MongoDB's; the counts do.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from wire_support import history_through_pause, start_wire_server  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pauses", default="5,15,40", help="pause lengths in seconds")
    parser.add_argument("--records", type=int, default=300)
    parser.add_argument("--modes", default="sync,async")
    parser.add_argument("--tolerance", type=float, default=None, help="default: 30")
    args = parser.parse_args()
    pauses = [float(p) for p in args.pauses.split(",")]
    modes = args.modes.split(",")
    server = start_wire_server()
    header = (
        f"{'mode':<6} {'pause s':>7} {'records':>7} {'written':>7} {'lost':>5} "
        f"{'reported':>8} {'dup':>4} {'resume s':>8} {'total s':>7}  caller saw"
    )
    print(header)
    print("-" * len(header))
    silent = 0
    try:
        for mode in modes:
            for pause in pauses:
                started = time.monotonic()
                out = history_through_pause(server, mode, pause, args.records, args.tolerance)
                total = time.monotonic() - started
                resume = "-" if out.resume_seconds is None else f"{out.resume_seconds:.2f}"
                saw = out.errors[0][:150] if out.errors else "nothing (no error)"
                silent += max(out.lost - out.reported, 0)
                print(
                    f"{mode:<6} {pause:>7g} {out.expected:>7} {out.stored:>7} {out.lost:>5} "
                    f"{out.reported:>8} {out.duplicated:>4} {resume:>8} {total:>7.1f}  {saw}",
                    flush=True,
                )
    finally:
        server.stop()
    print(f"silently lost records (lost and not reported): {silent}")
    return 1 if silent else 0


if __name__ == "__main__":
    sys.exit(main())
