"""The orchestrator's collections, document shapes and indexes (``MongoOrchestrator``).

Every document carries ``app_id`` and its ``_id`` joins the app id and the
document's own ids (:func:`compound_id`: ``"<len>:<app_id>:<id>"``), so two apps
sharing a database and prefix never collide, and every lookup by id is served by
MongoDB's ``_id`` index. Times
are Int64 microseconds since the Unix epoch (:func:`~pynenc_mongo.schema.layout.to_us`):
exact, comparable, and cheap to index.

``orchestrator_invocations`` -- one status record per invocation::

    {_id: compound_id(app_id, invocation_id),
     app_id, inv: invocation_id, task: task_id.key, call: call_id.key,
     st: status,            # pynenc's InvocationStatus value
     own: runner_id | null, # pynenc's InvocationStatusRecord.runner_id
     gate: str | absent,    # owner when the status requires ownership ("" for a
                            # null owner), absent otherwise: the transition filter
     v: int,                # +1 on every transition (the compare-and-set version)
     ts: Int64 µs,          # the status record's timestamp
     reg: Int64 µs,         # registration time (pagination order, newest first)
     retries: int,
     q: str?, p: double?,   # queue and priority the invocation was routed with at
                            # registration (pynenc 0.4; absent on 0.2.x): the
                            # recovery of an unqueued invocation routes it again there
     args_h: [hex],         # sha256(key NUL value)[:32] per serialized argument,
                            # only for concurrency-controlled tasks (bounded size)
     purge_at: Int64 µs?,   # set when final (auto purge)
     waited: true?}         # someone waits on it (blocking control)

``orchestrator_blocking_edges`` -- one document per waiter -> waited edge::

    {_id: compound_id(app_id, waiter_id, waited_id), app_id, w, d, t: Int64 µs}

``orchestrator_runner_heartbeats`` -- one document per runner::

    {_id: compound_id(app_id, runner_id), app_id, rid: runner_id,
     created: Int64 µs (set on insert only), hb: Int64 µs (last heartbeat),
     atomic: bool (may run atomic services), queues: [str],
     svc_start / svc_end: Int64 µs? (pynenc 0.2.3's last atomic-service window)}

``orchestrator_atomic_service_executions`` -- one document per atomic-service run::

    {_id: compound_id(app_id, run_id), app_id, run: run_id, runner: runner_id,
     status: running | completed | abandoned | blocked, reason: str,
     start: Int64 µs, end: Int64 µs | null,
     cover_end: Int64 µs}   # end, or start while running: a window query is
                            # then two ranges on (start, cover_end)

The partial unique index ``{app_id, status}`` where ``status == "running"`` admits
one RUNNING execution per app: it is the atomic service's storage gate.
"""

from __future__ import annotations

from typing import Final

from pynenc_mongo.schema.layout import F_APP, IndexSpec

# Logical collection names (the prefix is added by ``schema.CollectionNames``).
INVOCATIONS: Final = "orchestrator_invocations"
EDGES: Final = "orchestrator_blocking_edges"
HEARTBEATS: Final = "orchestrator_runner_heartbeats"
ATOMIC_EXECUTIONS: Final = "orchestrator_atomic_service_executions"

#: This component's logical collection names.
COLLECTIONS: Final[tuple[str, ...]] = (INVOCATIONS, EDGES, HEARTBEATS, ATOMIC_EXECUTIONS)

# Invocation fields.
F_INV: Final = "inv"
F_TASK: Final = "task"
F_CALL: Final = "call"
F_STATUS: Final = "st"
F_OWNER: Final = "own"
F_GATE: Final = "gate"
F_VERSION: Final = "v"
F_TS: Final = "ts"
F_REG: Final = "reg"
F_RETRIES: Final = "retries"
F_ARGS: Final = "args_h"
F_PURGE: Final = "purge_at"
F_WAITED: Final = "waited"
F_ROUTE_QUEUE: Final = "q"
F_ROUTE_PRIORITY: Final = "p"
#: ``gate`` value of a status that requires ownership while the owner is null.
NULL_OWNER_GATE: Final = ""

# Edge fields.
F_WAITER: Final = "w"
F_WAITED_ID: Final = "d"
F_EDGE_TIME: Final = "t"

# Heartbeat fields.
F_RUNNER: Final = "rid"
F_CREATED: Final = "created"
F_HEARTBEAT: Final = "hb"
F_ATOMIC: Final = "atomic"
F_QUEUES: Final = "queues"
F_SVC_START: Final = "svc_start"
F_SVC_END: Final = "svc_end"

# Atomic-service execution fields.
F_RUN: Final = "run"
F_EXEC_RUNNER: Final = "runner"
F_EXEC_STATUS: Final = "status"
F_REASON: Final = "reason"
F_START: Final = "start"
F_END: Final = "end"
F_COVER_END: Final = "cover_end"
#: The value of ``status`` the storage gate admits once per app.
RUNNING: Final = "running"


def compound_id(*parts: str) -> str:
    """A string ``_id`` joining ``parts`` unambiguously: each part but the last is
    length-prefixed (``"<len>:<part>:"``), so no choice of ids can collide.

    (A document ``_id`` would read better, but mongomock cannot update documents whose
    ``_id`` is a document.)
    """
    *head, last = parts
    return "".join(f"{len(p)}:{p}:" for p in head) + last


def invocation_key(app_id: str, invocation_id: str) -> str:
    """``_id`` of an invocation's status record."""
    return compound_id(app_id, invocation_id)


def edge_key(app_id: str, waiter_id: str, waited_id: str) -> str:
    """``_id`` of a blocking edge (waiter -> waited)."""
    return compound_id(app_id, waiter_id, waited_id)


def runner_key(app_id: str, runner_id: str) -> str:
    """``_id`` of a runner's heartbeat document."""
    return compound_id(app_id, runner_id)


def execution_key(app_id: str, run_id: str) -> str:
    """``_id`` of an atomic-service execution."""
    return compound_id(app_id, run_id)


#: Every index this component's queries need (each query's index is named in a comment
#: where the query is issued).
INDEXES: Final[tuple[IndexSpec, ...]] = (
    # get_existing_invocations without arguments, counts and pages by task + statuses,
    # get_task_invocation_ids (prefix app_id, task).
    IndexSpec(
        INVOCATIONS,
        ((F_APP, 1), (F_TASK, 1), (F_STATUS, 1), (F_REG, -1), (F_INV, -1)),
        "orch_inv_task_status_reg",
    ),
    # get_existing_invocations with arguments (multikey on args_h).
    IndexSpec(
        INVOCATIONS,
        ((F_APP, 1), (F_TASK, 1), (F_ARGS, 1), (F_STATUS, 1)),
        "orch_inv_task_args_status",
    ),
    # pages by task only (newest first).
    IndexSpec(
        INVOCATIONS, ((F_APP, 1), (F_TASK, 1), (F_REG, -1), (F_INV, -1)), "orch_inv_task_reg"
    ),
    # pages and counts by statuses only.
    IndexSpec(
        INVOCATIONS, ((F_APP, 1), (F_STATUS, 1), (F_REG, -1), (F_INV, -1)), "orch_inv_status_reg"
    ),
    # pages and counts with no filter; purge of the app.
    IndexSpec(INVOCATIONS, ((F_APP, 1), (F_REG, -1), (F_INV, -1)), "orch_inv_reg"),
    # recovery: PENDING older than max_pending_seconds; RUNNING (with owners); the
    # statuses available for run older than max_pending_seconds ($in on st, range on ts).
    IndexSpec(INVOCATIONS, ((F_APP, 1), (F_STATUS, 1), (F_TS, 1)), "orch_inv_status_ts"),
    # get_call_invocation_ids.
    IndexSpec(INVOCATIONS, ((F_APP, 1), (F_CALL, 1)), "orch_inv_call"),
    # auto_purge: final invocations stamped before the threshold.
    IndexSpec(INVOCATIONS, ((F_APP, 1), (F_PURGE, 1)), "orch_inv_purge"),
    # blocking control: edges oldest first, by waited (release) and by waiter.
    IndexSpec(EDGES, ((F_APP, 1), (F_EDGE_TIME, 1)), "orch_edge_time"),
    IndexSpec(EDGES, ((F_APP, 1), (F_WAITED_ID, 1)), "orch_edge_waited"),
    IndexSpec(EDGES, ((F_APP, 1), (F_WAITER, 1)), "orch_edge_waiter"),
    # active runners: heartbeat range, ordered by creation time then runner id.
    IndexSpec(
        HEARTBEATS,
        ((F_APP, 1), (F_CREATED, 1), (F_RUNNER, 1), (F_HEARTBEAT, 1)),
        "orch_hb_created",
    ),
    IndexSpec(
        HEARTBEATS,
        ((F_APP, 1), (F_ATOMIC, 1), (F_CREATED, 1), (F_RUNNER, 1), (F_HEARTBEAT, 1)),
        "orch_hb_atomic_created",
    ),
    # the storage gate: one RUNNING execution per app.
    IndexSpec(
        ATOMIC_EXECUTIONS,
        ((F_APP, 1), (F_EXEC_STATUS, 1)),
        "orch_exec_single_running",
        unique=True,
        partial_filter={F_EXEC_STATUS: RUNNING},
    ),
    # active executions (newest first), capacity purge (oldest first by status).
    IndexSpec(
        ATOMIC_EXECUTIONS, ((F_APP, 1), (F_EXEC_STATUS, 1), (F_START, -1)), "orch_exec_status_start"
    ),
    # age purge: terminal executions that ended before the cutoff.
    IndexSpec(
        ATOMIC_EXECUTIONS,
        ((F_APP, 1), (F_EXEC_STATUS, 1), (F_COVER_END, 1)),
        "orch_exec_status_end",
    ),
    # executions overlapping a window, newest first (optionally of one runner).
    IndexSpec(ATOMIC_EXECUTIONS, ((F_APP, 1), (F_START, -1), (F_COVER_END, 1)), "orch_exec_window"),
    IndexSpec(
        ATOMIC_EXECUTIONS,
        ((F_APP, 1), (F_EXEC_RUNNER, 1), (F_START, -1), (F_COVER_END, 1)),
        "orch_exec_runner_window",
    ),
)
