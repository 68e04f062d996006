"""The benchmark's parent side: run the children, print the report, check the targets."""

from collections import Counter
from collections.abc import Callable
from typing import Any

from bench_children import TRACED_BATCH
from bench_common import (
    BACKENDS,
    FLOORS,
    MONGO_MODES,
    REAL_URL,
    RTTS_MS,
    TARGET_OPS_ASYNC,
    TARGET_OPS_SYNC,
    TARGET_WALL_RATIO,
    WARMUP_TASKS,
    line,
    per_item,
    spawn,
)


def run_e2e(sizes: list[int], repeat: int) -> dict[int, dict[str, dict[str, Any]]]:
    """End-to-end runs: for each size, each backend ``repeat`` times (median wall time)."""
    results: dict[int, dict[str, dict[str, Any]]] = {}
    for tasks in sizes:
        runs = repeat if tasks <= 500 else 1
        per_backend: dict[str, dict[str, Any]] = {}
        for backend in BACKENDS:
            samples = [spawn("e2e", backend, tasks=tasks) for _ in range(runs)]
            samples.sort(key=lambda s: s["wall_s"])
            chosen = dict(samples[len(samples) // 2])
            chosen["walls_s"] = [s["wall_s"] for s in samples]
            per_backend[backend] = chosen
        results[tasks] = per_backend
        _print_e2e(tasks, runs, per_backend)
    return results


def _print_e2e(tasks: int, runs: int, per: dict[str, dict[str, Any]]) -> None:
    memory = per["memory"]
    sqlite = per["sqlite"]["wall_s"]
    runs_text = f"median of {runs} runs" if runs > 1 else "1 run"
    line(f"-- {memory['plan']} ({runs_text})")
    line(
        f"   {'backend':12} {'wall s':>7} {'tasks/s':>7} {'vs memory':>9} {'vs sqlite':>9}"
        f" {'in store':>8} | {'CPU s':>6} {'in store':>8} {'backend, outside store':>22}"
        f" | {'peak RSS MB':>11}"
    )
    for backend, fig in per.items():
        wall = fig["wall_s"]
        mongo = backend in MONGO_MODES
        own = (fig["backend_cpu_s"] - fig["store_cpu_s"]) / tasks * 1000
        line(
            f"   {backend:12} {wall:>7.3f} {tasks / wall:>7.0f} {wall / memory['wall_s']:>8.2f}x"
            f" {wall / sqlite:>8.2f}x"
            f" {(f'{fig["store_busy_s"] / wall:.0%}' if mongo else '-'):>8}"
            f" | {fig['cpu_s']:>6.2f}"
            f" {(f'{fig["store_cpu_s"]:.2f}' if mongo else '-'):>8}"
            f" {f'{own:.2f} ms/task':>22}"
            f" | {fig['rss_peak_mb']:>11.0f}"
        )


def print_operations(e2e: dict[int, dict[str, dict[str, Any]]]) -> None:
    """Operations per task by kind, one process and multi-process."""
    kinds = sorted({k for per in e2e.values() for m in MONGO_MODES for k in per[m]["ops"]})
    head = " ".join(f"{k:>13}" for k in kinds)
    line(f"   {'tasks':>6} {'mode':12} {'total':>7} {'per task':>9} {head}   {'multi-process':>13}")
    for tasks, per in e2e.items():
        for mode in MONGO_MODES:
            fig = per[mode]
            cells = " ".join(f"{per_item(fig['ops'].get(k, 0), tasks):>13.2f}" for k in kinds)
            multi = per_item(fig["ops_total"] + fig["cache_served_first_reads"], tasks)
            line(
                f"   {tasks:>6} {mode:12} {fig['ops_total']:>7} "
                f"{per_item(fig['ops_total'], tasks):>9.2f} {cells}   {multi:>13.2f}"
            )
    some = next(iter(e2e.values()))
    setup = Counter(some["mongo-sync"]["setup_ops"])
    line(
        f"   Not in the figures: once per process, {sum(setup.values())} operations at startup "
        f"({', '.join(f'{k} {v}' for k, v in setup.items())}: app info and indexes) and one "
        "update per runner context;"
    )
    line(f"   a warm-up of {WARMUP_TASKS} tasks (one of each kind) before the timed run.")
    line("   multi-process = per task + one read of each invocation by the process that runs it")
    line("   (here the runner shares the creating process's DTO cache; worst case counted: every")
    line("   invocation runs in another process).")
    line("   Round trips per task on a real server (per task x RTT; spread over the runners):")
    for tasks, per in e2e.items():
        for mode in MONGO_MODES:
            fig = per[mode]
            multi = per_item(fig["ops_total"] + fig["cache_served_first_reads"], tasks)
            cost = ", ".join(f"{multi * rtt:.1f} ms at {rtt} ms RTT" for rtt in RTTS_MS)
            line(f"   {tasks:>6} {mode:12} {multi:.2f} round trips/task: {cost}")


def run_hot(stored_levels: list[int], calls_for: Callable[[int], int]) -> list[dict[str, Any]]:
    """Hot-path children, one per stored level (synchronous history writes unless noted)."""
    out = []
    for stored in stored_levels:
        calls = calls_for(stored)
        out.append(
            spawn(
                "hot",
                "mongo-sync",
                stored=stored,
                calls=calls,
                batch_sizes="1,10,100,1000" if stored == stored_levels[0] else "1,100",
            )
        )
    return out


def print_hot(hot: list[dict[str, Any]]) -> None:
    """The hot-path tables: time per call (of which inside the store), then operations
    and lines of pynenc-mongo code run per call, by invocations already stored."""
    names = list(hot[0]["rows"])
    levels = "".join(f" {f'{h["stored"]:,} stored':>26}" for h in hot)
    line(f"   {'mean µs per call (in store)':40}{levels}")
    for name in names:
        cells = ""
        for h in hot:
            row = h["rows"][_match(name, h["rows"])]
            cells += f" {row['mean_us']:>14,.0f} ({row['store_us_per_call']:>9,.0f})"
        line(f"   {_label(name, hot):40}{cells}")
    cells = "".join(f" {_ours_total(h):>14,.0f} {'':>11}" for h in hot)
    line(f"   {'outside the store, sum of medians':40}{cells}")
    line()
    levels = "".join(f" {f'{h["stored"]:,}':>8}" for h in hot)
    line(f"   {'operations | pynenc-mongo lines per call':40}{levels} |{levels}")
    for name in names:
        rows = [h["rows"][_match(name, h["rows"])] for h in hot]
        ops = "".join(f" {row['ops_per_call']:>8.2f}" for row in rows)
        lines = "".join(f" {row['package_lines_per_call']:>8.0f}" for row in rows)
        line(f"   {_label(name, hot):40}{ops} |{lines}")
    for h in hot:
        async_row = h["rows"]["add_history (async writes, caller)"]
        line(
            f"   {h['stored']:>7,} stored: {h['calls']} calls per method; batch upsert "
            + ", ".join(f"of {k}: {v} op" for k, v in h["batch_upsert_ops"].items())
            + f"; async records durable {async_row['durable_wait_ms']:.0f} ms after the last"
            + f"; DTO cache {h['dto_cache_entries']:,}; peak RSS {h['rss_peak_mb']:.0f} MB"
        )


def _label(name: str, hot: list[dict[str, Any]]) -> str:
    if name.startswith("upsert batch of"):
        sizes = "/".join(str(h["calls"]) for h in hot)
        return f"upsert batch of {sizes} (lines: of {TRACED_BATCH})"
    return name


def _match(name: str, rows: dict[str, Any]) -> str:
    """The row of another stored level matching ``name`` (batch sizes differ)."""
    return next(k for k in rows if _generic(k) == _generic(name))


def _generic(name: str) -> str:
    return "upsert batch (as pynenc registers)" if name.startswith("upsert batch of") else name


def _ours_total(h: dict[str, Any]) -> float:
    """Sum over the per-call rows of the median time spent outside the store."""
    return float(
        sum(
            row["ours_median_us"]
            for name, row in h["rows"].items()
            if not name.startswith("upsert batch of")
        )
    )


def checks(
    e2e: dict[int, dict[str, dict[str, Any]]], hot: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The targets of issue #6, each met or not, with the figure behind it."""
    out: list[dict[str, Any]] = []

    def add(kind: str, name: str, value: float, target: float, met: bool, note: str = "") -> None:
        out.append(
            {"kind": kind, "name": name, "value": value, "target": target, "met": met, "note": note}
        )

    for tasks, per in e2e.items():
        for mode, target in (("mongo-async", TARGET_OPS_ASYNC), ("mongo-sync", TARGET_OPS_SYNC)):
            fig = per[mode]
            one = per_item(fig["ops_total"], tasks)
            multi = per_item(fig["ops_total"] + fig["cache_served_first_reads"], tasks)
            add(
                "operations",
                f"{mode} ops/task, {tasks} tasks, one process",
                one,
                target,
                one <= target,
            )
            add(
                "operations-multiprocess",
                f"{mode} ops/task, {tasks} tasks, multi-process",
                multi,
                target,
                multi <= target,
                FLOORS[mode],
            )
        memory = per["memory"]["wall_s"]
        for mode in MONGO_MODES:
            fig = per[mode]
            ratio = fig["wall_s"] / memory
            own = (fig["backend_cpu_s"] - fig["store_cpu_s"]) / tasks * 1000
            memory_own = per["memory"]["backend_cpu_s"] / tasks * 1000
            share = fig["store_busy_s"] / fig["wall_s"]
            store = "a real server" if REAL_URL else "the embedded store, which scans"
            add(
                "time",
                f"{mode} wall vs memory, {tasks} tasks",
                ratio,
                TARGET_WALL_RATIO,
                ratio <= TARGET_WALL_RATIO,
                f"{share:.0%} of the wall time inside {store}; the backend's CPU outside "
                f"it {own:.2f} ms/task, the memory backend's {memory_own:.2f}",
            )
    sizes = "; ".join(f"{', '.join(h['batch_upsert_ops'])} at {h['stored']:,} stored" for h in hot)
    worst = max(ops for h in hot for ops in h["batch_upsert_ops"].values())
    add(
        "operations",
        f"batch upsert of any size: operations per batch ({sizes})",
        worst,
        1,
        worst == 1,
    )
    first, last = hot[0], hot[-1]
    levels = " vs ".join(f"{h['stored']:,}" for h in hot)
    spread = 0.0
    line_ratio = 1.0
    for name in first["rows"]:
        rows = [h["rows"][_match(name, h["rows"])] for h in hot]
        if "async" not in name:  # batching makes the async figure depend on timing
            per_call = [row["ops_per_call"] for row in rows]
            spread = max(spread, max(per_call) - min(per_call))
        lines = [row["package_lines_per_call"] for row in rows]
        line_ratio = max(line_ratio, max(lines) / max(min(lines), 1))
    add(
        "operations",
        f"operations per call, largest difference between {levels} stored "
        f"({len(first['rows'])} methods)",
        spread,
        0,
        spread < 0.01,
    )
    add(
        "operations",
        f"pynenc-mongo lines run per call, largest ratio between {levels} stored "
        f"({len(first['rows'])} methods)",
        line_ratio,
        1.05,
        line_ratio <= 1.05,
        "our own work per call does not grow",
    )
    if REAL_URL:
        ratio = max(
            last["rows"][_match(name, last["rows"])]["median_us"] / max(row["median_us"], 1e-9)
            for name, row in first["rows"].items()
        )
        add(
            "time",
            f"time per call, {last['stored']:,} vs {first['stored']:,} stored (worst method)",
            ratio,
            1.5,
            ratio <= 1.5,
        )
    return out


def print_checks(found: list[dict[str, Any]]) -> None:
    """One line per target."""
    for check in found:
        mark = "met    " if check["met"] else "NOT met"
        value = check["value"]
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        target = check["target"]
        limit = f"{target:.2f}" if isinstance(target, float) else str(target)
        note = f"  ({check['note']})" if check["note"] else ""
        line(f"   [{mark}] {check['name']}: {shown} (target {limit}){note}")
