"""The trigger collections, their document shapes and indexes (``MongoTrigger``).

Every document carries ``app_id``; every index (but the TTL one) starts with it.
Names get the ``mongo_collection_prefix`` (default ``pynenc_``).

Conditions and claims are keyed by an ``_id`` naming the app and the id
(:func:`document_id`, ``'["<app_id>","<id>"]'``): their compare-and-set filters
(``{_id, last_cron_execution: expected}``, ``{_id, expires_at: {$lte: now}}``) are
point lookups on the ``_id`` index, which is also the unique key an upsert race is
decided on.

``trigger_conditions`` -- one document per condition::

    {_id: '["<app_id>","<condition_id>"]', app_id, condition_id,
     condition_json?, context_type?,                        # absent until registered
     source_task_ids: [task_id_key, ...],                   # tasks the condition watches
     last_cron_execution: Date | null}                      # cron conditions only

  ``source_task_ids`` is the task -> conditions mapping (multikey index), so
  ``get_conditions_sourced_from_task`` is one query. ``last_cron_execution`` is
  written only by the compare-and-set of ``store_last_cron_execution`` (milliseconds,
  BSON's precision) and set to null only when the document is first inserted
  (``$setOnInsert``): registering a condition again never resets it.

``trigger_definitions`` -- one document per trigger definition::

    {app_id, trigger_id, task_id_key, logic, argument_provider_json,
     condition_ids: [condition_id, ...]}                    # multikey index

``trigger_valid_conditions`` -- satisfied conditions waiting for the trigger loop::

    {app_id, valid_condition_id, valid_condition_json}

  The id names the condition and the context (pynenc's ``ValidCondition``), so the
  same id always carries the same JSON: recording is an insert that skips ids
  already present.

``trigger_run_claims`` -- who may execute a trigger run::

    {_id: '["<app_id>","<trigger_run_id>"]', app_id, trigger_run_id,
     claimed_at: Date, expires_at: Date}

  A claim is live while ``expires_at`` is in the future; the expiry check is in the
  claim's filter, never left to the TTL monitor, which only collects old claims
  (about every 60 s; MongoDB manual, "TTL Indexes").

``trigger_events`` -- one document per emitted event (pynmon's event monitor)::

    {app_id, event_id, event_code, ts: Date, ts_us: Int64 (microseconds, the order key),
     event_json, matched: bool, emitted_by_invocation_id, emitted_by_task_id,
     emitted_by_runner_context_id, filter_keys: [str, ...],
     triggered: bool, triggered_invocation_ids: [...], trigger_run_ids: [...]}

  Links only grow: ``triggered_invocation_ids`` and ``trigger_run_ids`` change only by
  ``$addToSet`` and ``triggered`` only to true (``store_event`` never rewrites them).
  ``filter_keys`` holds one key per combination of the optional equality filters of
  ``get_events`` (event code, emitting invocation, emitting task; see
  :func:`combination_keys`), so one index serves every combination with the time sort;
  ``matched`` and ``triggered`` are always in the filter (``$in: [false, true]`` when
  not filtered) for the same reason.

``trigger_runs`` -- one document per trigger run::

    {app_id, trigger_run_id, trigger_id, task_id_key, triggered_invocation_id,
     executed_us: Int64?, sort_us: Int64 (executed, else claimed, else 0),
     event_ids: [...], source_invocation_ids: [...], valid_condition_ids: [...],
     event_codes: [...], filter_keys: [str, ...], atomic_service_run_id, run_json}

  The id arrays join the record's own lists and its participants' ids (what pynenc's
  SQLite trigger indexes in ``trigger_run_conditions``); ``event_codes`` are the codes
  of the referenced events when the run is stored, and ``filter_keys`` the combinations
  of (event code, task) for ``get_trigger_runs_in_timerange``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from itertools import combinations
from typing import Final

from pynenc_mongo.schema.layout import F_APP, IndexSpec, ttl_index

CONDITIONS: Final = "trigger_conditions"
DEFINITIONS: Final = "trigger_definitions"
VALID_CONDITIONS: Final = "trigger_valid_conditions"
RUN_CLAIMS: Final = "trigger_run_claims"
EVENTS: Final = "trigger_events"
RUNS: Final = "trigger_runs"

#: This component's logical collection names.
COLLECTIONS: Final[tuple[str, ...]] = (
    CONDITIONS,
    DEFINITIONS,
    VALID_CONDITIONS,
    RUN_CLAIMS,
    EVENTS,
    RUNS,
)

# Field names used in queries (kept here so indexes and queries agree).
F_COND: Final = "condition_id"
F_SOURCES: Final = "source_task_ids"
F_LAST_CRON: Final = "last_cron_execution"
F_TRIGGER: Final = "trigger_id"
F_TASK: Final = "task_id_key"
F_COND_IDS: Final = "condition_ids"
F_VALID: Final = "valid_condition_id"
F_RUN: Final = "trigger_run_id"
F_EXPIRES: Final = "expires_at"
F_EVENT: Final = "event_id"
F_CODE: Final = "event_code"
F_TS_US: Final = "ts_us"
F_MATCHED: Final = "matched"
F_TRIGGERED: Final = "triggered"
F_KEYS: Final = "filter_keys"
F_EXECUTED: Final = "executed_us"
F_SORT: Final = "sort_us"
F_EVENT_IDS: Final = "event_ids"
F_SOURCE_INVS: Final = "source_invocation_ids"
F_VALID_IDS: Final = "valid_condition_ids"
F_TRIGGERED_INV: Final = "triggered_invocation_id"
F_ASR: Final = "atomic_service_run_id"

#: Every index the trigger's queries need.
INDEXES: Final[tuple[IndexSpec, ...]] = (
    # Conditions are read by ``_id``; get_conditions_sourced_from_task is one query on
    # the multikey mapping (which also serves the app-wide reads and the purge).
    IndexSpec(CONDITIONS, ((F_APP, 1), (F_SOURCES, 1)), "app_source_task"),
    IndexSpec(DEFINITIONS, ((F_APP, 1), (F_TRIGGER, 1)), "app_trigger", unique=True),
    # get_triggers_for_condition (multikey) and clean_task_trigger_definitions.
    IndexSpec(DEFINITIONS, ((F_APP, 1), (F_COND_IDS, 1)), "app_condition_ids"),
    IndexSpec(DEFINITIONS, ((F_APP, 1), (F_TASK, 1)), "app_task"),
    IndexSpec(VALID_CONDITIONS, ((F_APP, 1), (F_VALID, 1)), "app_valid_condition", unique=True),
    # Claims are read by ``_id``; this one serves the purge.
    IndexSpec(RUN_CLAIMS, ((F_APP, 1), (F_EXPIRES, 1)), "app_expires"),
    ttl_index(RUN_CLAIMS, F_EXPIRES, retention_only=False),
    IndexSpec(EVENTS, ((F_APP, 1), (F_EVENT, 1)), "app_event", unique=True),
    # get_events / count_events / markers / purges: every filter combination, time order.
    IndexSpec(
        EVENTS,
        ((F_APP, 1), (F_KEYS, 1), (F_MATCHED, 1), (F_TRIGGERED, 1), (F_TS_US, -1), (F_EVENT, -1)),
        "app_filters_time",
    ),
    # list_event_codes: distinct served by the index.
    IndexSpec(EVENTS, ((F_APP, 1), (F_CODE, 1)), "app_code"),
    IndexSpec(RUNS, ((F_APP, 1), (F_RUN, 1)), "app_trigger_run", unique=True),
    IndexSpec(RUNS, ((F_APP, 1), (F_KEYS, 1), (F_EXECUTED, 1), (F_RUN, 1)), "app_filters_time"),
    IndexSpec(RUNS, ((F_APP, 1), (F_EVENT_IDS, 1), (F_EXECUTED, 1), (F_RUN, 1)), "app_event"),
    IndexSpec(
        RUNS, ((F_APP, 1), (F_SOURCE_INVS, 1), (F_EXECUTED, 1), (F_RUN, 1)), "app_source_inv"
    ),
    IndexSpec(RUNS, ((F_APP, 1), (F_VALID_IDS, 1), (F_EXECUTED, 1), (F_RUN, 1)), "app_valid"),
    IndexSpec(
        RUNS,
        ((F_APP, 1), (F_TRIGGERED_INV, 1), (F_EXECUTED, 1), (F_RUN, 1)),
        "app_triggered_inv",
    ),
    IndexSpec(RUNS, ((F_APP, 1), (F_ASR, 1)), "app_atomic_service_run"),
    IndexSpec(RUNS, ((F_APP, 1), (F_SORT, -1), (F_RUN, -1)), "app_sort"),
)


def document_id(app_id: str, id_: str) -> str:
    """The ``_id`` of a condition or claim document: the JSON array ``[app_id, id_]``
    (unambiguous whatever the two strings hold; two apps never share an ``_id``).

    A string rather than a subdocument: mongomock's TTL emulation cannot delete
    documents whose ``_id`` is a subdocument.
    """
    return json.dumps([app_id, id_], separators=(",", ":"))


def filter_key(values: Iterable[str | None]) -> str:
    """The ``filter_keys`` entry for one combination of optional equality filters.

    :param Iterable[str | None] values: the filter values in a fixed order, None for
        "not filtered" (e.g. ``(event_code, emitted_by_invocation_id, emitted_by_task_id)``).
    :return: a JSON array text, e.g. ``'["a", null, null]'``; ``'[null, null, null]'``
        (no filter) is in every document.
    """
    return json.dumps(list(values), separators=(",", ":"))


def combination_keys(values: tuple[str | None, ...]) -> list[str]:
    """Every ``filter_keys`` entry of a document whose filterable fields are ``values``:
    one per subset of the fields that are set (the others null), without repeats.

    :param tuple values: the document's values, None where the document has none.
    :return: at most ``2 ** len(values)`` keys.
    """
    present = [i for i, value in enumerate(values) if value is not None]
    keys: dict[str, None] = {}
    for size in range(len(present) + 1):
        for chosen in combinations(present, size):
            keys[filter_key(values[i] if i in chosen else None for i in range(len(values)))] = None
    return list(keys)
