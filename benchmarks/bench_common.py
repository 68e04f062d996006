"""Shared by the benchmark modules: settings, targets, memory figures, child processes, output.

``run.py`` is the entry point (``scripts/benchmark``); each measurement runs in a
fresh child process (``run.py --child ...``, :func:`spawn`).
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
#: The entry point the children run.
RUN_SCRIPT = HERE / "run.py"
REAL_URL = os.environ.get("PYNENC_MONGO_TEST_URL", "").strip()
EMBEDDED_URL = "mongomock://bench"
BACKENDS = ("memory", "sqlite", "mongo-sync", "mongo-async")
MONGO_MODES = ("mongo-sync", "mongo-async")
#: Tasks run before the timed run in each process (one of each kind: warms imports,
#: caches and the runner; not counted).
WARMUP_TASKS = 15
#: Targets of issue #6.
TARGET_OPS_ASYNC = 4.0
TARGET_OPS_SYNC = 7.0
TARGET_WALL_RATIO = 1.25
#: Why the multi-process count cannot reach the target for a plain task.
FLOORS = {
    "mongo-sync": "floor for a plain task: 8 = registration insert, 4 history inserts, result "
    "insert, result read, and one read of the invocation by the process that runs it",
    "mongo-async": "floor for a plain task: 4 + its share of a batched history insert = "
    "registration insert, result insert, result read, read by the running process",
}
#: Round-trip times used to translate operation counts into latency on a real server.
RTTS_MS = (0.5, 2.0)


# ---------------------------------------------------------------- helpers
def rss_mb() -> float:
    """Current resident set size in MiB (Linux ``/proc``; else the peak so far)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (``getrusage``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def redacted(url: str) -> str:
    from pynenc_mongo.urls import redact_url

    return str(redact_url(url))


def drop_database(database: str) -> None:
    """Drop a scratch database on the real server (no-op on the embedded store)."""
    if REAL_URL:
        from pynenc_mongo.client import get_client

        get_client(REAL_URL, database, 10.0).drop_database(database)


def per_item(count: float, n: float) -> float:
    """``count / n``, or 0 when ``n`` is 0."""
    return count / n if n else 0.0


# ---------------------------------------------------------------- parent
def spawn(kind: str, backend: str, **params: Any) -> dict[str, Any]:
    """Run one measurement in a fresh child process; returns its JSON figures."""
    database = f"pynenc_bench_{uuid.uuid4().hex[:10]}"
    url = str(params.pop("url", "")) or REAL_URL or EMBEDDED_URL
    with tempfile.TemporaryDirectory(prefix="pynenc-mongo-bench-") as tmp:
        out = Path(tmp) / "out.json"
        env = {
            **os.environ,
            "PYNENC_MONGO_BENCH_BACKEND": backend,
            "PYNENC_MONGO_BENCH_URL": url,
            "PYNENC_MONGO_BENCH_DATABASE": database,
            "PYNENC_MONGO_BENCH_SQLITE": str(Path(tmp) / "state.db"),
            "PYTHONWARNINGS": "ignore",
        }
        args = [sys.executable, str(RUN_SCRIPT), "--child", kind, "--out", str(out)]
        for key, value in params.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        try:
            proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=3600)
        finally:
            if backend in MONGO_MODES or (backend.startswith("stack-mongo") and url == REAL_URL):
                drop_database(database)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise SystemExit(f"benchmark child {kind}/{backend} {params} failed")
        figures: dict[str, Any] = json.loads(out.read_text())
        return figures


def line(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@contextmanager
def section(title: str) -> Iterator[None]:
    line()
    line(f"== {title}")
    started = time.perf_counter()
    yield
    line(f"   ({time.perf_counter() - started:.0f} s)")
