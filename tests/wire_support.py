"""Start, pause and stop the local wire-protocol test server (``scripts/wire_server``).

Tests reach it through the ``wire_server`` fixture (``conftest.py``); fault tests pause
it with SIGSTOP/SIGCONT (the shape of a primary election as clients see it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ROOT / "scripts" / "wire_server"
#: Exit status of the launcher when no Python >= 3.13 exists.
UNAVAILABLE = 3


class WireServerUnavailable(RuntimeError):
    """The wire server cannot start here (no Python >= 3.13, or it failed to start)."""


@dataclass
class WireServer:
    """A running wire server process.

    :ivar subprocess.Popen process: the launcher process (it ``exec``s the server).
    :ivar str url: ``mongodb://127.0.0.1:PORT/?directConnection=true``.
    """

    process: subprocess.Popen[str]
    url: str
    paused: bool = field(default=False)

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing answers."""
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """Let a paused server go on (SIGCONT)."""
        os.kill(self.pid, signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        """Stop and reap the server (also when paused)."""
        if self.process.poll() is not None:
            return
        if self.paused:
            self.resume()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def start_wire_server(*args: str, timeout: float = 300.0) -> WireServer:
    """Start ``scripts/wire_server ARGS`` and wait for its URL line.

    :param args: extra launcher arguments (e.g. ``"--user", "app:secret"``).
    :param float timeout: seconds to wait (the first start installs mongoeco).
    :return: the running server.
    :raises WireServerUnavailable: no Python >= 3.13, or the server did not start.
    """
    process = subprocess.Popen(
        [str(LAUNCHER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # Ctrl-C in the terminal reaches pytest, which stops it
    )
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    line = ""
    while time.monotonic() < deadline:
        line = process.stdout.readline().strip()
        if line.startswith("mongodb://"):
            return WireServer(process, line)
        if process.poll() is not None:
            break
    err = process.stderr.read() if process.stderr and process.poll() is not None else ""
    if process.poll() is None:
        process.kill()
        process.wait()
    lines = [text for text in err.splitlines() if text.strip()]
    if process.returncode == UNAVAILABLE and lines:
        raise WireServerUnavailable(lines[-1])
    raise WireServerUnavailable(
        f"wire server did not start (exit {process.returncode}): {(lines or [line])[-1:]}"
    )
