"""The parent side of the whole-stack sections: run the children on the embedded store
and on the wire server, run the per-component round-trip scripts, print, check targets."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench_common import EMBEDDED_URL, HERE, REAL_URL, line, redacted, spawn
from bench_stack import ANCHOR_030, MONGO_STACKS, STACKS, TARGET_ASYNC, TARGET_SYNC

ROOT = HERE.parent


@contextmanager
def stores(with_wire: bool) -> Iterator[list[tuple[str, str]]]:
    """The stores to measure, as ``(label, url)``: the embedded store, then the real
    server (``PYNENC_MONGO_TEST_URL``) or a wire server started here (stopped after)."""
    out = [("embedded", EMBEDDED_URL)]
    server = None
    if REAL_URL:
        out.append(("server", REAL_URL))
    elif with_wire:
        sys.path.insert(0, str(ROOT / "tests"))
        from wire_support import WireServerUnavailable, start_wire_server

        try:
            server = start_wire_server()
            out.append(("wire", server.url))
        except WireServerUnavailable as error:
            line(f"   wire server unavailable, skipped: {error}")
    try:
        yield out
    finally:
        if server is not None:
            server.stop()


def run_stack(store_list: list[tuple[str, str]], tasks: int, idle: float) -> dict[str, Any]:
    """Every stack on every store (memory and SQLite once, on no MongoDB store)."""
    out: dict[str, Any] = {}
    for stack in STACKS:
        targets = store_list if stack in MONGO_STACKS else [("-", EMBEDDED_URL)]
        for label, url in targets:
            fig = spawn("stack", stack, url=url, tasks=tasks, idle_seconds=idle)
            out[f"{stack.removeprefix('stack-')}@{label}"] = fig
    return out


def print_stack(figs: dict[str, Any], tasks: int) -> None:
    """Operations per task by component and command, idle cost, throughput ratios."""
    mongo = {k: v for k, v in figs.items() if k.startswith("mongo")}
    components = ("state_backend", "orchestrator", "broker", "trigger", "client_data_store")
    head = " ".join(f"{c[:13]:>13}" for c in components)
    line(f"-- {tasks} `add` tasks, ThreadRunner, loop sleep 0.01 s; per successful task:")
    line(f"   {'stack@store':22} {'total':>6} {'net idle':>8} {head}  {'idle/iter':>9}")
    for name, fig in mongo.items():
        cells = " ".join(f"{fig['by_component'].get(c, 0) / tasks:>13.2f}" for c in components)
        line(
            f"   {name:22} {fig['ops_per_task']:>6.2f} {fig['ops_per_task_net_of_idle']:>8.2f}"
            f" {cells}  {fig['idle_per_iteration']:>9.2f}"
        )
    line(f"   (anchor: pynenc-mongo 0.3.0 full stack, embedded store: {ANCHOR_030} per task)")
    line("   By collection and command, per task (whole window: runner loop included):")
    for name, fig in mongo.items():
        parts = ", ".join(f"{k} {v / tasks:.2f}" for k, v in fig["by_collection_command"].items())
        line(f"   {name}: {parts}")
    line("   Idle runner loop, per iteration (no work queued):")
    for name, fig in mongo.items():
        parts = ", ".join(
            f"{k} {v / max(fig['idle_iterations'], 1):.2f}"
            for k, v in fig["idle_by_collection_command"].items()
        )
        line(
            f"   {name}: {fig['idle_per_iteration']:.2f} ({fig['idle_iterations']} iterations"
            f" in {fig['idle_seconds']:.0f} s): {parts}"
        )
    memory = figs["memory@-"]["tasks_per_s"]
    sqlite = figs["sqlite@-"]["tasks_per_s"]
    line("   Throughput (tasks/s; ratio = this stack's throughput / the other's):")
    for name, fig in figs.items():
        rate = fig["tasks_per_s"]
        line(
            f"   {name:22} {rate:>8.0f} tasks/s  vs memory {rate / memory:>5.2f}"
            f"  vs sqlite {rate / sqlite:>5.2f}  ({fig['wall_s']:.2f} s)"
        )
    line("   (on the emulators -- mongomock in process, the wire server at 2-3 ms per")
    line("   operation -- throughput is informational)")


def stack_checks(figs: dict[str, Any]) -> list[dict[str, Any]]:
    """The whole-stack targets of issue #15 (kind ``stack-operations``)."""
    out = []
    for name, fig in figs.items():
        if not name.startswith("mongo"):
            continue
        target = TARGET_SYNC if name.startswith("mongo-sync") else TARGET_ASYNC
        value = fig["ops_per_task"]
        top = sorted(fig["by_collection_command"].items(), key=lambda kv: -kv[1])[:4]
        out.append(
            {
                "kind": "stack-operations",
                "name": f"full stack {name}: MongoDB operations per successful task",
                "value": value,
                "target": target,
                "met": value <= target,
                "note": "biggest: " + ", ".join(f"{k} {v / fig['tasks']:.2f}" for k, v in top),
            }
        )
    return out


# ------------------------------------------------------------ per-component scripts
def _script(name: str, args: list[str], url: str | None, timeout: float) -> str:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if url and not url.startswith("mongomock"):
        env["PYNENC_MONGO_TEST_URL"] = url
    else:
        env.pop("PYNENC_MONGO_TEST_URL", None)
    proc = subprocess.run(
        [sys.executable, str(HERE / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=HERE,
    )
    if proc.returncode != 0:
        return f"FAILED (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"
    return proc.stdout


def run_components(store_list: list[tuple[str, str]], quick: bool) -> dict[str, Any]:
    """Run orchestrator/broker/trigger round-trip scripts on each store; parse figures."""
    out: dict[str, Any] = {}
    n = "50" if quick else "200"
    for label, url in store_list:
        figs: dict[str, Any] = {}
        orch_args = ["-n", n, "--idle-seconds", "2" if quick else "3"]
        if not url.startswith("mongomock"):
            orch_args += ["--url", url]
        text = _script("orchestrator_round_trips.py", orch_args, url, 900)
        idle = re.search(r"= ([\d.]+) per iteration", text)
        per = re.search(r"-> ([\d.-]+) operations per successful invocation", text)
        figs["orchestrator_ops_per_invocation"] = float(per.group(1)) if per else None
        figs["orchestrator_idle_ops_per_iteration"] = float(idle.group(1)) if idle else None
        text = _script("broker_round_trips.py", ["--invocations", n], url, 900)
        for key in (
            "claim_round_trips_per_invocation",
            "idle_round_trips_per_iteration_1_queue",
            "idle_round_trips_per_iteration_3_queues",
            "route_round_trips",
            "inline_10kb_first_store_round_trips",
            "inline_10kb_repeated_store_round_trips",
            "pieces_1mb_first_store_round_trips",
            "pieces_1mb_read_round_trips",
        ):
            found = re.search(rf"^{key}: ([\d.]+)", text, re.MULTILINE)
            figs[f"broker_{key}"] = float(found.group(1)) if found else None
        text = _script("trigger_round_trips.py", ["--invocations", n], url, 900)
        found = re.search(r"^no trigger\s+([\d.]+)\s+\d+\s+([\d.]+)", text, re.MULTILINE)
        figs["trigger_round_trips_per_invocation_no_trigger"] = (
            float(found.group(2)) if found else None
        )
        figs["invocations"] = int(n)
        out[label] = figs
    return out


COMPONENT_TARGETS = (
    ("orchestrator_ops_per_invocation", "orchestrator ops per successful invocation", 5.0),
    ("orchestrator_idle_ops_per_iteration", "orchestrator ops per idle loop iteration", 1.0),
    ("broker_claim_round_trips_per_invocation", "broker claim round trips per invocation", None),
    ("broker_idle_round_trips_per_iteration_1_queue", "broker idle round trips/iter, 1 queue", 1.0),
    (
        "broker_idle_round_trips_per_iteration_3_queues",
        "broker idle round trips/iter, 3 queues",
        3.0,
    ),
    ("trigger_round_trips_per_invocation_no_trigger", "trigger round trips/inv, no trigger", 0.05),
    ("broker_route_round_trips", "broker: route a batch of invocations", 1.0),
    ("broker_inline_10kb_first_store_round_trips", "client data: store 10 kB, first", None),
    ("broker_inline_10kb_repeated_store_round_trips", "client data: store 10 kB, again", 0.0),
    ("broker_pieces_1mb_first_store_round_trips", "client data: store 1 MB, first", None),
    ("broker_pieces_1mb_read_round_trips", "client data: read 1 MB", None),
)


def print_components(figs: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per figure and store; returns the checks (kind ``component``)."""
    labels = list(figs)
    line(f"   {'figure':44} {'target':>7} " + " ".join(f"{lab:>10}" for lab in labels))
    checks = []
    for key, text, target in COMPONENT_TARGETS:
        cells = []
        for label in labels:
            value = figs[label].get(key)
            cells.append(f"{value:>10.3f}" if value is not None else f"{'failed':>10}")
            if target is not None:
                checks.append(
                    {
                        "kind": "component",
                        "name": f"{text} ({label})",
                        "value": value if value is not None else -1.0,
                        "target": target,
                        "met": value is not None and value <= target,
                        "note": "",
                    }
                )
        shown = f"{target:.2f}" if target is not None else "-"
        line(f"   {text:44} {shown:>7} " + " ".join(cells))
    n = next(iter(figs.values()))["invocations"]
    line(f"   ({n} invocations each; benchmarks/orchestrator_round_trips.py,")
    line("   broker_round_trips.py, trigger_round_trips.py; trigger: cache residue included)")
    return checks


def describe(store_list: list[tuple[str, str]]) -> str:
    """The stores, for people."""
    return ", ".join(f"{label} ({redacted(url)})" for label, url in store_list)
