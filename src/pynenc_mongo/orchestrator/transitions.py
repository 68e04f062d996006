"""Status transitions as one ``find_one_and_update`` whose filter states pynenc's rules.

pynenc's state machine is read at run time through ``get_status_definition()``
(never copied here), so pynenc 0.2.3's extra RESUMED status and any later change
of the graph are followed without code changes.

For a target status ``T`` and a runner ``R`` the allowed from-statuses are the
statuses ``S`` with ``T`` in ``S.allowed_transitions``. Where ``S`` requires
ownership (and ``T`` does not override it) the record's ``gate`` field must equal
``R``: ``gate`` holds the owner while the status requires ownership (a sentinel for
a null owner) and is absent otherwise, so "status in F and, where needed, owner is
R" is the equality filter ``{_id, st: {$in: F}, gate: {$in: [null, R]}}``, served by
the ``_id`` index. The from-statuses are grouped by the owner the record gets
(pynenc's ``compute_new_owner``): in pynenc's graphs every target has one group, so
a transition is one round trip.

When no group matches, one read tells why: a missing id raises ``KeyError``; a
transition pynenc forbids from the status read raises pynenc's own error (from
``status_record_transition``, exactly as the base would); a transition that is
allowed from the status read (the record changed between the two operations, or a
from-status whose new owner the filter cannot know) is written with a
compare-and-set on the record's version ``v``. A compare-and-set lost to another
writer is re-read and retried up to ``mongo_transition_attempts`` times in all,
then ``InvocationStatusRaceConditionError`` is raised.

The writes are never retried by this module after an error: ``find_one_and_update``
is a retryable write, which the driver retries once itself with the same
transaction number (MongoDB manual, "Retryable Writes").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.collection import Collection
from pynenc.exceptions import InvocationStatusRaceConditionError
from pynenc.invocation.status import (
    InvocationStatus,
    InvocationStatusRecord,
    get_status_definition,
    status_record_transition,
)

from pynenc_mongo.schema import orchestrator as s
from pynenc_mongo.schema.layout import from_us, to_us

#: ``gate`` value for a status that requires ownership while its owner is null.
NULL_GATE = "\x00"
#: Fields read back from a status record.
RECORD_PROJECTION = {s.F_STATUS: 1, s.F_OWNER: 1, s.F_TS: 1, s.F_VERSION: 1, s.F_WAITED: 1}


@dataclass(frozen=True)
class FilterGroup:
    """From-statuses that lead to the same new owner.

    :ivar tuple free: from-statuses with no owner condition.
    :ivar tuple gated: from-statuses whose owner must be the runner.
    :ivar str | None new_owner: the record's owner after the transition.
    """

    free: tuple[str, ...]
    gated: tuple[str, ...]
    new_owner: str | None


@dataclass(frozen=True)
class TransitionResult:
    """What a transition did.

    :ivar InvocationStatusRecord record: the new status record.
    :ivar bool had_waiters: the record carried the ``waited`` flag before.
    """

    record: InvocationStatusRecord
    had_waiters: bool


def gate_for(status: InvocationStatus, owner: str | None) -> str | None:
    """The ``gate`` value a record in ``status`` owned by ``owner`` carries (None: absent)."""
    if not get_status_definition(status).requires_ownership:
        return None
    return owner if owner is not None else NULL_GATE


def plan(target: InvocationStatus, runner_id: str | None) -> list[FilterGroup]:
    """The filter groups of a transition to ``target`` by ``runner_id``, from pynenc's rules.

    :param InvocationStatus target: the status to move to.
    :param str | None runner_id: the runner asking.
    :return: the groups (empty when pynenc refuses the transition from every status,
        e.g. a status that acquires ownership asked with no runner id).
    """
    target_def = get_status_definition(target)
    if target_def.acquires_ownership and not target_def.overrides_ownership and not runner_id:
        return []
    groups: dict[str | None, tuple[list[str], list[str]]] = {}
    for status in InvocationStatus:
        definition = get_status_definition(status)
        if target not in definition.allowed_transitions:
            continue
        gated = definition.requires_ownership and not target_def.overrides_ownership
        if target_def.releases_ownership:
            new_owner = None
        elif target_def.acquires_ownership:
            new_owner = runner_id
        elif gated:
            new_owner = runner_id  # the gate matched: the owner is the runner
        else:
            continue  # the owner is kept but unknown to the filter: read, then compare-and-set
        free, gated_list = groups.setdefault(new_owner, ([], []))
        (gated_list if gated else free).append(status.value)
    return [
        FilterGroup(tuple(sorted(free)), tuple(sorted(gated)), owner)
        for owner, (free, gated) in groups.items()
    ]


def group_filter(key: str, group: FilterGroup, runner_id: str | None) -> dict[str, Any]:
    """The ``find_one_and_update`` filter of one group (served by the ``_id`` index)."""
    statuses = [*group.free, *group.gated]
    query: dict[str, Any] = {"_id": key, s.F_STATUS: {"$in": statuses}}
    expected_gate = runner_id if runner_id is not None else NULL_GATE
    if group.gated and group.free:
        query[s.F_GATE] = {"$in": [None, expected_gate]}
    elif group.gated:
        query[s.F_GATE] = expected_gate
    return query


def update_for(
    target: InvocationStatus, new_owner: str | None, now_us: int, final_purge: bool
) -> dict[str, Any]:
    """The update document writing ``target`` (owner, gate, time, version, purge stamp)."""
    fields: dict[str, Any] = {s.F_STATUS: target.value, s.F_OWNER: new_owner, s.F_TS: now_us}
    update: dict[str, Any] = {"$inc": {s.F_VERSION: 1}}
    gate = gate_for(target, new_owner)
    if gate is None:
        update["$unset"] = {s.F_GATE: ""}
    else:
        fields[s.F_GATE] = gate
    if final_purge and target.is_final():
        fields[s.F_PURGE] = now_us
    update["$set"] = fields
    return update


def record_of(doc: dict[str, Any]) -> InvocationStatusRecord:
    """The pynenc status record of a stored document."""
    return InvocationStatusRecord(
        InvocationStatus(doc[s.F_STATUS]), doc.get(s.F_OWNER), from_us(doc[s.F_TS])
    )


def transition(
    collection: Collection[dict[str, Any]],
    key: str,
    invocation_id: str,
    target: InvocationStatus,
    runner_id: str | None,
    attempts: int,
) -> TransitionResult:
    """Move one invocation to ``target`` atomically (see the module docstring).

    :param Collection collection: ``orchestrator_invocations``.
    :param dict key: the record's ``_id``.
    :param str invocation_id: the invocation id (for errors).
    :param InvocationStatus target: the new status.
    :param str | None runner_id: the runner asking.
    :param int attempts: compare-and-set attempts before giving up.
    :return: the new record and whether anyone waited on the invocation.
    :raises KeyError: the invocation is not registered.
    :raises InvocationStatusTransitionError: pynenc forbids the transition.
    :raises InvocationStatusOwnershipError: the runner does not own the invocation.
    :raises InvocationStatusRaceConditionError: other writers won every attempt.
    """
    now = datetime.now(UTC)
    now_us = to_us(now)
    for group in plan(target, runner_id):
        before = collection.find_one_and_update(
            group_filter(key, group, runner_id),
            update_for(target, group.new_owner, now_us, True),
            projection=RECORD_PROJECTION,
            return_document=ReturnDocument.BEFORE,
        )
        if before is not None:
            return TransitionResult(
                InvocationStatusRecord(target, group.new_owner, now), bool(before.get(s.F_WAITED))
            )
    previous: InvocationStatusRecord | None = None
    expected: InvocationStatusRecord | None = None
    for _attempt in range(attempts):
        doc = collection.find_one({"_id": key}, RECORD_PROJECTION)
        if doc is None:
            raise KeyError(f"Invocation ID {invocation_id} not found")
        current = record_of(doc)
        previous = previous or current
        expected = status_record_transition(current, target, runner_id)  # pynenc's errors
        now = datetime.now(UTC)
        before = collection.find_one_and_update(
            {"_id": key, s.F_VERSION: doc.get(s.F_VERSION, 0)},
            update_for(target, expected.runner_id, to_us(now), True),
            projection=RECORD_PROJECTION,
            return_document=ReturnDocument.BEFORE,
        )
        if before is not None:
            return TransitionResult(
                InvocationStatusRecord(target, expected.runner_id, now),
                bool(before.get(s.F_WAITED)),
            )
    latest = collection.find_one({"_id": key}, RECORD_PROJECTION)
    if latest is None:
        raise KeyError(f"Invocation ID {invocation_id} not found")
    assert previous is not None and expected is not None
    raise InvocationStatusRaceConditionError(invocation_id, previous, expected, record_of(latest))
