"""Conditions, trigger definitions and the task -> conditions mapping, with its cache.

Collections: ``trigger_conditions`` and ``trigger_definitions``
(:mod:`pynenc_mongo.schema.trigger`).

``get_conditions_sourced_from_task`` runs on every status change, result and
failure (pynenc's ``BaseTrigger.report_tasks_status`` and ``report_invocation_*``:
about five times per invocation). Its answer is one query on the multikey
``source_task_ids`` of the conditions, kept per process for
``mongo_trigger_source_cache_seconds`` (a ``cachetools.TTLCache``), "no conditions"
included. Registering a condition in this process drops the cached answer of its
tasks, and a generation counter keeps a read that started before the registration
from caching its older answer.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cachetools import TTLCache
from pynenc.identifiers.task_id import TaskId
from pynenc.models.trigger_definition_dto import TriggerDefinitionDTO
from pynenc.trigger.conditions import CompositeLogic, TriggerCondition
from pynenc.trigger.trigger_definitions import TriggerDefinition

from pynenc_mongo.errors import translate_errors
from pynenc_mongo.operations import upsert_retrying_duplicate
from pynenc_mongo.schema import trigger as layout
from pynenc_mongo.trigger.part import TriggerPart, chunks, unique

if TYPE_CHECKING:
    from pynenc.trigger.conditions import ConditionContext

#: A condition of any context type.
AnyCondition = TriggerCondition[Any]
#: Tasks whose answers the source-task cache holds at most.
SOURCE_CACHE_TASKS = 4096


class DefinitionsPart(TriggerPart):
    """Conditions, trigger definitions, the source-task mapping and its cache."""

    def _init_source_cache(self, ttl_seconds: float) -> None:
        """Create the per-process source-task cache (``ttl_seconds`` 0: no cache)."""
        self._source_ttl = ttl_seconds
        self._source_cache: TTLCache[str, tuple[AnyCondition, ...]] = TTLCache(
            maxsize=SOURCE_CACHE_TASKS, ttl=max(ttl_seconds, 0.001)
        )
        self._source_lock = threading.Lock()
        self._source_generation = 0

    def _forget_sources(self, task_keys: Sequence[str] | None = None) -> None:
        """Drop cached answers (of ``task_keys``, or all) and invalidate reads in flight."""
        with self._source_lock:
            self._source_generation += 1
            if task_keys is None:
                self._source_cache.clear()
            else:
                for key in task_keys:
                    self._source_cache.pop(key, None)

    def _condition_from_doc(self, doc: dict[str, Any] | None) -> AnyCondition | None:
        """The condition of a ``trigger_conditions`` document (None before registration)."""
        text = (doc or {}).get("condition_json")
        return TriggerCondition.from_json(text, self.app) if isinstance(text, str) else None

    # ------------------------------------------------------------------ conditions
    @translate_errors
    def _register_condition(self, condition: AnyCondition) -> None:
        """Upsert the condition's JSON; a new document gets ``last_cron_execution: null``
        (``$setOnInsert``), an existing one keeps it, so re-registering (every new process
        does) never lets a cron fire twice in one period.

        :param TriggerCondition condition: the condition (its id names its content).
        """
        upsert_retrying_duplicate(
            self._collection(layout.CONDITIONS).update_one,
            self._by_id(condition.condition_id),
            {
                "$set": {
                    "condition_json": condition.to_json(self.app),
                    "context_type": condition.context_type.__name__,
                },
                "$setOnInsert": {
                    layout.F_COND: condition.condition_id,
                    layout.F_LAST_CRON: None,
                    layout.F_SOURCES: [],
                },
            },
            upsert=True,
        )
        self._forget_sources([task.key for task in condition.get_source_task_ids()])

    @translate_errors
    def _register_source_task_condition(self, task_id: TaskId, condition_id: str) -> None:
        """Add ``task_id`` to the condition's ``source_task_ids`` (``$addToSet``; the
        document is created if the condition is not registered yet).

        :param TaskId task_id: the watched task.
        :param str condition_id: the condition.
        """
        upsert_retrying_duplicate(
            self._collection(layout.CONDITIONS).update_one,
            self._by_id(condition_id),
            {
                "$addToSet": {layout.F_SOURCES: task_id.key},
                "$setOnInsert": {layout.F_COND: condition_id, layout.F_LAST_CRON: None},
            },
            upsert=True,
        )
        self._forget_sources([task_id.key])

    @translate_errors
    def get_condition(self, condition_id: str) -> AnyCondition | None:
        """The registered condition ``condition_id``, or None."""
        doc = self._retry(
            self._collection(layout.CONDITIONS).find_one,
            self._by_id(condition_id),
            {"condition_json": 1, "_id": 0},
        )
        return self._condition_from_doc(doc)

    @translate_errors
    def get_conditions_batch(self, condition_ids: Sequence[str]) -> dict[str, AnyCondition | None]:
        """Override of the base's one read per id: one ``$in`` query per 500 ids.

        :return: ``{condition_id: condition or None}`` for every id asked.
        """
        found: dict[str, AnyCondition | None] = dict.fromkeys(condition_ids)
        for part in chunks(unique(condition_ids)):
            for doc in self._find(
                layout.CONDITIONS,
                self._store.app_filter(_id={"$in": [self._by_id(c)["_id"] for c in part]}),
                {layout.F_COND: 1, "condition_json": 1, "_id": 0},
            ):
                found[doc[layout.F_COND]] = self._condition_from_doc(doc)
        return found

    @translate_errors
    def _get_all_conditions(self) -> list[AnyCondition]:
        """Every registered condition of the app (one query)."""
        docs = self._find(layout.CONDITIONS, self._store.app_filter(), {"condition_json": 1})
        return [c for c in map(self._condition_from_doc, docs) if c is not None]

    @translate_errors
    def get_conditions_sourced_from_task(
        self, task_id: TaskId, context_type: type[ConditionContext] | None = None
    ) -> list[AnyCondition]:
        """The conditions watching ``task_id``, optionally of one context type.

        At most one query (``source_task_ids`` multikey index); none while the cached
        answer is fresh (see the module docstring).

        :param TaskId task_id: the source task.
        :param type | None context_type: keep only conditions of this context type.
        :return: the conditions (a new list each call).
        """
        key = task_id.key
        conditions: tuple[AnyCondition, ...] | None = None
        generation = 0
        if self._source_ttl > 0:
            with self._source_lock:
                conditions = self._source_cache.get(key)
                generation = self._source_generation
        if conditions is None:
            docs = self._find(
                layout.CONDITIONS,
                self._store.app_filter(**{layout.F_SOURCES: key}),
                {"condition_json": 1, "_id": 0},
            )
            conditions = tuple(c for c in map(self._condition_from_doc, docs) if c is not None)
            if self._source_ttl > 0:
                with self._source_lock:
                    if generation == self._source_generation:
                        self._source_cache[key] = conditions
        if context_type is None:
            return list(conditions)
        return [c for c in conditions if c.context_type == context_type]

    # ------------------------------------------------------------------ triggers
    @translate_errors
    def register_trigger(self, trigger: TriggerDefinitionDTO) -> None:
        """Upsert a trigger definition with its condition ids (multikey index)."""
        upsert_retrying_duplicate(
            self._collection(layout.DEFINITIONS).update_one,
            self._store.app_filter(**{layout.F_TRIGGER: trigger.trigger_id}),
            {
                "$set": {
                    layout.F_TASK: trigger.task_id.key,
                    "logic": trigger.logic.value,
                    "argument_provider_json": trigger.argument_provider_json,
                    layout.F_COND_IDS: list(trigger.condition_ids),
                }
            },
            upsert=True,
        )

    @staticmethod
    def _trigger_from_doc(doc: dict[str, Any]) -> TriggerDefinitionDTO:
        return TriggerDefinitionDTO(
            trigger_id=doc[layout.F_TRIGGER],
            task_id=TaskId.from_key(doc[layout.F_TASK]),
            condition_ids=list(doc.get(layout.F_COND_IDS) or []),
            logic=CompositeLogic(doc["logic"]),
            argument_provider_json=doc.get("argument_provider_json"),
        )

    @translate_errors
    def _get_trigger(self, trigger_id: str) -> TriggerDefinitionDTO | None:
        """The trigger definition ``trigger_id``, or None."""
        doc = self._retry(
            self._collection(layout.DEFINITIONS).find_one,
            self._store.app_filter(**{layout.F_TRIGGER: trigger_id}),
        )
        return self._trigger_from_doc(doc) if doc else None

    @translate_errors
    def get_triggers_for_condition(self, condition_id: str) -> list[TriggerDefinitionDTO]:
        """Every trigger definition using ``condition_id`` (one query, multikey index)."""
        docs = self._find(
            layout.DEFINITIONS, self._store.app_filter(**{layout.F_COND_IDS: condition_id})
        )
        return [self._trigger_from_doc(doc) for doc in docs]

    @translate_errors
    def get_triggers_batch(self, trigger_ids: Sequence[str]) -> dict[str, TriggerDefinition | None]:
        """Override of the base's one read per id: one ``$in`` query per 500 ids.

        :return: ``{trigger_id: TriggerDefinition or None}`` for every id asked.
        """
        found: dict[str, TriggerDefinition | None] = dict.fromkeys(trigger_ids)
        for part in chunks(unique(trigger_ids)):
            for doc in self._find(
                layout.DEFINITIONS,
                self._store.app_filter(**{layout.F_TRIGGER: {"$in": list(part)}}),
            ):
                found[doc[layout.F_TRIGGER]] = TriggerDefinition.from_dto(
                    self._trigger_from_doc(doc), self.app
                )
        return found

    @translate_errors
    def clean_task_trigger_definitions(self, task_id: TaskId) -> None:
        """Delete the task's trigger definitions: one ``delete_many``. Their condition ids
        live in the definitions themselves, so no other collection holds links to them;
        conditions stay (other triggers may use them), as in pynenc's SQLite trigger."""
        self._retry(
            self._collection(layout.DEFINITIONS).delete_many,
            self._store.app_filter(**{layout.F_TASK: task_id.key}),
        )
