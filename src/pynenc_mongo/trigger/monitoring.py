"""Events and trigger runs: the records pynmon reads (purge hooks: :mod:`.purge`).

Filters, counts and order follow pynenc's ``SQLiteTrigger``: ``get_events`` newest
first, event markers and trigger runs oldest first (executed time, then run id).
Collections: ``trigger_events`` and ``trigger_runs`` (:mod:`pynenc_mongo.schema.trigger`).

An event's links to the invocations it triggered change only by ``$addToSet``
(``link_trigger_run_to_events``); ``store_event`` never writes them back, so a link
made by another runner between ``emit_event``'s two writes is kept (pynenc-mongo
0.3.0 lost it). A link to an event not stored yet creates the event's document,
which ``store_event`` completes later.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pynenc_mongo.errors import translate_errors
from pynenc_mongo.operations import upsert_retrying_duplicate
from pynenc_mongo.schema import from_us, to_us
from pynenc_mongo.schema import trigger as layout
from pynenc_mongo.trigger.part import TriggerPart, chunks, to_millis, unique

if TYPE_CHECKING:
    from pynenc.trigger.monitoring import EventMarkerPage, EventRecord, TriggerRunRecord

#: ``get_event_markers_in_timerange`` states -> (matched, triggered) filters; other
#: values mean "all", as in pynenc's SQLite trigger.
MARKER_STATES: dict[str, tuple[bool | None, bool | None]] = {
    "matched": (True, None),
    "unmatched": (False, None),
    "triggered": (None, True),
    "untriggered": (None, False),
}
NEWEST_FIRST = [(layout.F_TS_US, -1), (layout.F_EVENT, -1)]
_OLDEST_FIRST = [(layout.F_TS_US, 1), (layout.F_EVENT, 1)]
RUN_ORDER = [(layout.F_EXECUTED, 1), (layout.F_RUN, 1)]
_EVENT_FIELDS = {"event_json": 1, layout.F_EVENT: 1, "triggered_invocation_ids": 1, "_id": 0}


def _either(flag: bool | None) -> Any:
    """An equality on a boolean field: the value, or ``$in`` both when not filtered (so
    every event query has the same shape and one index serves it)."""
    return {"$in": [False, True]} if flag is None else flag


class MonitoringPart(TriggerPart):
    """Event and trigger-run records for pynmon."""

    # ------------------------------------------------------------------ events
    def _event_filter(
        self,
        event_code: str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        matched: bool | None = None,
        triggered: bool | None = None,
        emitted_by_invocation_id: str | None = None,
        emitted_by_task_id: str | None = None,
        before_us: int | None = None,
    ) -> dict[str, Any]:
        """The filter of an event query (served by the ``app_filters_time`` index)."""
        query = self._store.app_filter(
            **{
                layout.F_KEYS: layout.filter_key(
                    (event_code, emitted_by_invocation_id, emitted_by_task_id)
                ),
                layout.F_MATCHED: _either(matched),
                layout.F_TRIGGERED: _either(triggered),
            }
        )
        bounds: dict[str, int] = {}
        if start_time is not None:
            bounds["$gte"] = to_us(start_time)
        if end_time is not None:
            bounds["$lte"] = to_us(end_time)
        if before_us is not None:
            bounds["$lt"] = before_us
        if bounds:
            query[layout.F_TS_US] = bounds
        return query

    def _event_from_doc(self, doc: dict[str, Any]) -> EventRecord | None:
        from pynenc.trigger.monitoring import EventRecord

        text = doc.get("event_json")
        if not isinstance(text, str):
            return None  # only linked so far (see the module docstring)
        record = EventRecord.from_json(text, self.app)
        record.triggered_invocation_ids = unique(doc.get("triggered_invocation_ids") or [])
        return record

    @translate_errors
    def store_event(self, event: EventRecord) -> None:
        """Upsert an event. Links (``triggered_invocation_ids``) are only added: ids on
        the record are ``$addToSet``, existing ones are never removed.

        :param EventRecord event: the record (``emit_event`` stores it twice).
        """
        values = (event.event_code, event.emitted_by_invocation_id, event.emitted_by_task_id)
        fields: dict[str, Any] = {
            layout.F_CODE: event.event_code,
            "ts": to_millis(event.timestamp),
            layout.F_TS_US: to_us(event.timestamp),
            "event_json": event.to_json(self.app),
            layout.F_MATCHED: bool(event.matched_condition_ids),
            "emitted_by_invocation_id": event.emitted_by_invocation_id,
            "emitted_by_task_id": event.emitted_by_task_id,
            "emitted_by_runner_context_id": event.emitted_by_runner_context_id,
            layout.F_KEYS: layout.combination_keys(values),
        }
        update: dict[str, Any] = {"$set": fields}
        linked = unique(event.triggered_invocation_ids)
        if linked:
            fields[layout.F_TRIGGERED] = True
            update["$addToSet"] = {"triggered_invocation_ids": {"$each": linked}}
        else:
            update["$setOnInsert"] = {layout.F_TRIGGERED: False, "triggered_invocation_ids": []}
        upsert_retrying_duplicate(
            self._collection(layout.EVENTS).update_one,
            self._store.app_filter(**{layout.F_EVENT: event.event_id}),
            update,
            upsert=True,
        )

    @translate_errors
    def get_event(self, event_id: str) -> EventRecord | None:
        """The event ``event_id`` with its triggered invocations, or None."""
        doc = self._retry(
            self._collection(layout.EVENTS).find_one,
            self._store.app_filter(**{layout.F_EVENT: event_id}),
            _EVENT_FIELDS,
        )
        return self._event_from_doc(doc) if doc else None

    @translate_errors
    def get_events_batch(self, event_ids: Sequence[str]) -> dict[str, EventRecord | None]:
        """Override of the base's one read per id: one ``$in`` query per 500 ids."""
        found: dict[str, EventRecord | None] = dict.fromkeys(event_ids)
        for part in chunks(unique(event_ids)):
            for doc in self._find(
                layout.EVENTS,
                self._store.app_filter(**{layout.F_EVENT: {"$in": list(part)}}),
                _EVENT_FIELDS,
            ):
                found[doc[layout.F_EVENT]] = self._event_from_doc(doc)
        return found

    @translate_errors
    def get_events(
        self,
        *,
        event_code: str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        matched: bool | None = None,
        triggered: bool | None = None,
        emitted_by_invocation_id: str | None = None,
        emitted_by_task_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[EventRecord]:
        """Events matching every given filter, newest first (timestamp descending).

        :param str | None event_code: only this code.
        :param datetime | None start_time: at or after this time.
        :param datetime | None end_time: at or before this time.
        :param bool | None matched: with (True) or without (False) a matched condition.
        :param bool | None triggered: with or without a triggered invocation.
        :param str | None emitted_by_invocation_id: emitted inside this invocation.
        :param str | None emitted_by_task_id: emitted inside this task.
        :param int limit: at most this many (0: none).
        :param int offset: skip this many first.
        :return: the records (one query).
        """
        query = self._event_filter(
            event_code,
            start_time,
            end_time,
            matched,
            triggered,
            emitted_by_invocation_id,
            emitted_by_task_id,
        )
        docs = self._find(layout.EVENTS, query, _EVENT_FIELDS, NEWEST_FIRST, offset, limit)
        return [r for r in map(self._event_from_doc, docs) if r is not None]

    @translate_errors
    def count_events(
        self,
        *,
        event_code: str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        matched: bool | None = None,
        triggered: bool | None = None,
        emitted_by_invocation_id: str | None = None,
        emitted_by_task_id: str | None = None,
    ) -> int:
        """How many events :meth:`get_events` would return with these filters, unlimited."""
        query = self._event_filter(
            event_code,
            start_time,
            end_time,
            matched,
            triggered,
            emitted_by_invocation_id,
            emitted_by_task_id,
        )
        return int(self._retry(self._collection(layout.EVENTS).count_documents, query))

    @translate_errors
    def get_event_markers_in_timerange(
        self,
        start_time: datetime,
        end_time: datetime,
        *,
        event_code: str | None = None,
        state: str = "all",
        limit: int = 1000,
        offset: int = 0,
    ) -> EventMarkerPage:
        """Event markers in ``[start_time, end_time]``, oldest first, with the total.

        :param str state: ``all``, ``matched``, ``unmatched``, ``triggered`` or
            ``untriggered`` (other values mean ``all``, as in pynenc's SQLite trigger).
        :return: the page (a count and a narrow projection: two queries).
        """
        from pynenc.trigger.monitoring import EventMarker, EventMarkerPage

        matched, triggered = MARKER_STATES.get(state, (None, None))
        query = self._event_filter(event_code, start_time, end_time, matched, triggered)
        total = int(self._retry(self._collection(layout.EVENTS).count_documents, query))
        fields = (
            layout.F_EVENT,
            layout.F_CODE,
            layout.F_TS_US,
            layout.F_MATCHED,
            layout.F_TRIGGERED,
            "emitted_by_invocation_id",
            "emitted_by_runner_context_id",
        )
        docs = self._find(
            layout.EVENTS,
            query,
            {**dict.fromkeys(fields, 1), "_id": 0},
            _OLDEST_FIRST,
            offset,
            limit,
        )
        markers = [
            EventMarker(
                event_id=doc[layout.F_EVENT],
                event_code=doc[layout.F_CODE],
                timestamp=from_us(doc[layout.F_TS_US]),
                matched=bool(doc.get(layout.F_MATCHED)),
                triggered=bool(doc.get(layout.F_TRIGGERED)),
                emitted_by_invocation_id=doc.get("emitted_by_invocation_id"),
                emitted_by_runner_context_id=doc.get("emitted_by_runner_context_id"),
            )
            for doc in docs
        ]
        return EventMarkerPage(
            markers=markers, total=total, truncated=offset + len(markers) < total
        )

    @translate_errors
    def link_trigger_run_to_events(
        self, event_ids: list[str], invocation_id: str, *, trigger_run_id: str
    ) -> None:
        """Link ``invocation_id`` (made by ``trigger_run_id``) to each event: one
        ``update_one`` with ``$addToSet`` per event (upsert, so a link to an event not
        stored yet is kept). Idempotent, so retried."""
        collection = self._collection(layout.EVENTS)
        for event_id in unique(event_ids):
            upsert_retrying_duplicate(
                collection.update_one,
                self._store.app_filter(**{layout.F_EVENT: event_id}),
                {
                    "$addToSet": {
                        "triggered_invocation_ids": invocation_id,
                        "trigger_run_ids": trigger_run_id,
                    },
                    "$set": {layout.F_TRIGGERED: True},
                },
                upsert=True,
            )

    @translate_errors
    def get_invocations_triggered_by_event(self, event_id: str) -> list[str]:
        """The invocations ``event_id`` triggered, in the order they were linked."""
        doc = self._retry(
            self._collection(layout.EVENTS).find_one,
            self._store.app_filter(**{layout.F_EVENT: event_id}),
            {"triggered_invocation_ids": 1, "_id": 0},
        )
        return unique((doc or {}).get("triggered_invocation_ids") or [])

    @translate_errors
    def list_event_codes(self) -> list[str]:
        """The distinct event codes, sorted (one ``distinct``)."""
        codes = self._retry(
            self._collection(layout.EVENTS).distinct, layout.F_CODE, self._store.app_filter()
        )
        return sorted(code for code in codes if isinstance(code, str))

    # ------------------------------------------------------------------ trigger runs
    @translate_errors
    def store_trigger_run(self, run: TriggerRunRecord) -> None:
        """Upsert a trigger run with its indexed id lists (record and participants)."""
        event_ids = unique([*run.event_ids, *(p.event_id for p in run.participants)])
        codes: list[str] = []
        if event_ids:  # the codes of the referenced events, for the event-code filter
            codes = unique(
                doc.get(layout.F_CODE)
                for doc in self._find(
                    layout.EVENTS,
                    self._store.app_filter(**{layout.F_EVENT: {"$in": event_ids}}),
                    {layout.F_CODE: 1, "_id": 0},
                )
            )
        keys = unique(
            key
            for code in [None, *codes]
            for key in layout.combination_keys((code, run.task_id_key))
        )
        executed = to_us(run.executed_at) if run.executed_at else None
        claimed = to_us(run.claimed_at) if run.claimed_at else None
        fields: dict[str, Any] = {
            layout.F_TRIGGER: run.trigger_id,
            layout.F_TASK: run.task_id_key,
            layout.F_TRIGGERED_INV: run.triggered_invocation_id,
            layout.F_EXECUTED: executed,
            layout.F_SORT: executed if executed is not None else (claimed or 0),
            layout.F_EVENT_IDS: event_ids,
            layout.F_SOURCE_INVS: unique(
                [*run.source_invocation_ids, *(p.source_invocation_id for p in run.participants)]
            ),
            layout.F_VALID_IDS: unique(
                [*run.valid_condition_ids, *(p.valid_condition_id for p in run.participants)]
            ),
            "event_codes": codes,
            layout.F_KEYS: keys,
            layout.F_ASR: run.atomic_service_run_id,
            "run_json": run.to_json(),
        }
        upsert_retrying_duplicate(
            self._collection(layout.RUNS).update_one,
            self._store.app_filter(**{layout.F_RUN: run.trigger_run_id}),
            {"$set": fields},
            upsert=True,
        )

    def _runs(
        self, query: dict[str, Any], limit: int | None = None, ordered: bool = True
    ) -> list[TriggerRunRecord]:
        """The runs matching ``query``: oldest first (``ordered``), or as found (lookups
        by id, whose index has no time field)."""
        from pynenc.trigger.monitoring import TriggerRunRecord

        sort = RUN_ORDER if ordered else None
        docs = self._find(layout.RUNS, query, {"run_json": 1, "_id": 0}, sort, 0, limit)
        return [TriggerRunRecord.from_json(doc["run_json"]) for doc in docs]

    @translate_errors
    def get_trigger_run(self, trigger_run_id: str) -> TriggerRunRecord | None:
        """The trigger run ``trigger_run_id``, or None."""
        runs = self._runs(self._store.app_filter(**{layout.F_RUN: trigger_run_id}), ordered=False)
        return runs[0] if runs else None

    @translate_errors
    def get_trigger_runs_batch(self, run_ids: Sequence[str]) -> dict[str, TriggerRunRecord | None]:
        """Override of the base's one read per id: one ``$in`` query per 500 ids."""
        found: dict[str, TriggerRunRecord | None] = dict.fromkeys(run_ids)
        for part in chunks(unique(run_ids)):
            query = self._store.app_filter(**{layout.F_RUN: {"$in": list(part)}})
            for run in self._runs(query, ordered=False):
                found[run.trigger_run_id] = run
        return found

    @translate_errors
    def get_trigger_runs_for_event(self, event_id: str) -> list[TriggerRunRecord]:
        """Runs that reference ``event_id`` (record or participant), oldest first."""
        return self._runs(self._store.app_filter(**{layout.F_EVENT_IDS: event_id}))

    @translate_errors
    def get_trigger_runs_for_invocation(self, invocation_id: str) -> list[TriggerRunRecord]:
        """Runs that produced ``invocation_id``, oldest first."""
        return self._runs(self._store.app_filter(**{layout.F_TRIGGERED_INV: invocation_id}))

    @translate_errors
    def get_trigger_runs_sourced_by_invocation(self, invocation_id: str) -> list[TriggerRunRecord]:
        """Override of the base's full scan: runs with ``invocation_id`` as a source
        participant, oldest first (one indexed query)."""
        return self._runs(self._store.app_filter(**{layout.F_SOURCE_INVS: invocation_id}))

    @translate_errors
    def get_trigger_runs_for_valid_condition(
        self, valid_condition_id: str
    ) -> list[TriggerRunRecord]:
        """Override of the base's full scan: runs that include ``valid_condition_id``
        (record or participant), oldest first (one indexed query)."""
        return self._runs(self._store.app_filter(**{layout.F_VALID_IDS: valid_condition_id}))

    @translate_errors
    def get_trigger_runs_in_timerange(
        self,
        start_time: datetime,
        end_time: datetime,
        *,
        event_code: str | None = None,
        task_id_key: str | None = None,
        limit: int | None = None,
    ) -> list[TriggerRunRecord]:
        """Executed runs in ``[start_time, end_time]``, oldest first.

        :param str | None event_code: only runs referencing an event of this code (the
            codes of the events stored when the run was stored).
        :param str | None task_id_key: only runs of this task.
        :param int | None limit: at most this many.
        """
        query = self._store.app_filter(
            **{
                layout.F_KEYS: layout.filter_key((event_code, task_id_key)),
                layout.F_EXECUTED: {"$gte": to_us(start_time), "$lte": to_us(end_time)},
            }
        )
        return self._runs(query, limit)

    @translate_errors
    def get_referenced_atomic_service_run_ids(self) -> set[str]:
        """Override of the base's full scan (run at every atomic-service finalize): one
        ``distinct`` on the indexed ``atomic_service_run_id``."""
        ids = self._retry(
            self._collection(layout.RUNS).distinct, layout.F_ASR, self._store.app_filter()
        )
        return {value for value in ids if isinstance(value, str) and value}


__all__ = ["MARKER_STATES", "NEWEST_FIRST", "RUN_ORDER", "MonitoringPart"]
