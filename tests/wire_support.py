"""Start, pause and stop the local wire-protocol test server (``scripts/wire_server``).

Tests reach it through the ``wire_server`` fixture (``conftest.py``); fault tests pause
it with SIGSTOP/SIGCONT (the shape of a primary election as clients see it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


# ---------------------------------------------------------------------------
# A history workload through a server pause (tests/test_wire_outage.py and
# benchmarks/outage.py)
# ---------------------------------------------------------------------------
STATUS_NAMES = ("REGISTERED", "PENDING", "RUNNING", "SUCCESS")


@dataclass
class PauseOutcome:
    """What a history workload saw through one server pause.

    :ivar int expected: history records the workload wrote.
    :ivar int stored: distinct records found in MongoDB afterwards.
    :ivar int lost: ``expected - stored``.
    :ivar int duplicated: documents beyond one per record.
    :ivar int reported: records whose caller got an error (sync: ``add_history``
        raised; async: the invocation's wait raised).
    :ivar float | None resume_seconds: from the resume until the stored record
        count first grew (None if it never did).
    :ivar list[str] errors: the distinct error messages callers saw.
    """

    expected: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    reported: int = 0
    resume_seconds: float | None = None
    errors: list[str] = field(default_factory=list)


def history_through_pause(
    server: WireServer,
    mode: str,
    pause_seconds: float,
    records: int = 300,
    tolerance_seconds: float | None = None,
) -> PauseOutcome:
    """Write ``records`` history records (``records // 4`` invocations x REGISTERED,
    PENDING, RUNNING, SUCCESS) with ``history_write_mode=mode``, pausing ``server``
    for ``pause_seconds`` after a third of them, then count what MongoDB holds.

    :param WireServer server: a wire server of the caller's own (it is paused).
    :param str mode: ``"sync"`` or ``"async"``.
    :param float pause_seconds: how long the server stays frozen (SIGSTOP).
    :param int records: how many records to write.
    :param float | None tolerance_seconds: ``mongo_outage_tolerance_seconds``
        (None: the default).
    :return: the outcome.
    """
    import uuid

    import pymongo
    from pynenc import PynencBuilder
    from pynenc.invocation.status import InvocationStatus, InvocationStatusRecord
    from pynenc.runner.runner_context import RunnerContext

    from pynenc_mongo import schema
    from pynenc_mongo.errors import MongoBackendError

    options: dict[str, object] = {"history_write_mode": mode}
    if tolerance_seconds is not None:
        options["outage_tolerance_seconds"] = tolerance_seconds
    database = f"outage_{uuid.uuid4().hex[:8]}"
    app = (
        PynencBuilder()
        .app_id(f"outage-{mode}-{uuid.uuid4().hex[:6]}")
        .memory()
        .mongo(url=server.url, database=database, **options)
        .build()
    )
    backend: Any = app.state_backend
    ctx = RunnerContext(runner_cls="OutageRunner", runner_id="outage-runner")
    backend.store_runner_context(ctx)
    backend.add_history("warm-up", InvocationStatusRecord(InvocationStatus.REGISTERED), ctx)
    backend.wait_for_all_async_operations()

    raw: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(server.url)
    history = raw[database][backend.collection_name(schema.HISTORY)]
    query = {schema.F_APP: app.app_id, schema.F_INV: {"$ne": "warm-up"}}
    samples: list[tuple[float, int]] = []
    stop_polling = threading.Event()

    def poll() -> None:
        while not stop_polling.is_set():
            try:
                samples.append((time.monotonic(), history.count_documents(query)))
            except Exception:  # noqa: BLE001 - the server is paused; keep polling
                pass
            time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    invocations = [f"inv-{i:04d}" for i in range(max(records // len(STATUS_NAMES), 1))]
    pairs = [(inv, name) for name in STATUS_NAMES for inv in invocations]
    outcome = PauseOutcome(expected=len(pairs))
    resumed: list[float] = []
    paused_count: list[int] = []
    failed: set[tuple[str, str]] = set()

    def resume_later() -> None:
        time.sleep(pause_seconds)
        resumed.append(time.monotonic())
        server.resume()

    timer = threading.Thread(target=resume_later, daemon=True)
    for k, (inv, name) in enumerate(pairs):
        if k == len(pairs) // 3:
            time.sleep(0.2)  # let the poller see what is stored before the pause
            paused_count.append(samples[-1][1] if samples else 0)
            server.pause()
            timer.start()
        record = InvocationStatusRecord(InvocationStatus[name], runner_id=ctx.runner_id)
        try:
            backend.add_history(inv, record, ctx)
        except MongoBackendError as exc:
            failed.add((inv, name))
            if str(exc) not in outcome.errors:
                outcome.errors.append(str(exc))
        if k % 20 == 0:
            time.sleep(0.005)  # a steady stream, not one burst
    timer.join()
    for inv in invocations:
        try:
            backend.wait_for_invocation_async_operations(inv)
        except MongoBackendError as exc:
            failed.update((inv, name) for name in STATUS_NAMES)
            if str(exc) not in outcome.errors:
                outcome.errors.append(str(exc))
    time.sleep(0.2)
    stop_polling.set()
    poller.join(timeout=10)
    docs = list(history.find(query, {schema.F_INV: 1, "status": 1, "_id": 0}))
    keys = [(d.get(schema.F_INV), d.get("status")) for d in docs]
    outcome.stored = len(set(keys))
    outcome.duplicated = len(keys) - outcome.stored
    outcome.lost = outcome.expected - outcome.stored
    outcome.reported = len(failed)
    if resumed and paused_count:
        grown = [t for t, n in samples if t >= resumed[0] and n > paused_count[0]]
        outcome.resume_seconds = (grown[0] - resumed[0]) if grown else None
    raw.drop_database(database)
    raw.close()
    backend.close()
    return outcome
