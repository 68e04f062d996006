"""The purge hooks of pynenc's ``BaseTrigger._auto_purge_events``: by age and by cap,
for events and trigger runs, in batches.

Each hook reads one batch of ids (500, newest first or in run order) with an indexed
query and deletes it with one ``delete_many($in)``, until nothing is left: no single
query or delete grows with the number of records.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pynenc_mongo.errors import translate_errors
from pynenc_mongo.schema import to_us
from pynenc_mongo.schema import trigger as layout
from pynenc_mongo.trigger.monitoring import NEWEST_FIRST, RUN_ORDER, MonitoringPart
from pynenc_mongo.trigger.part import batch_size, chunks, unique


class PurgePart(MonitoringPart):
    """Age and capacity purges of events and trigger runs."""

    def _delete_events(self, ids: list[str]) -> None:
        collection = self._collection(layout.EVENTS)
        for part in chunks(ids):
            self._retry(
                collection.delete_many,
                self._store.app_filter(**{layout.F_EVENT: {"$in": list(part)}}),
            )

    def _delete_runs(self, ids: list[str]) -> None:
        collection = self._collection(layout.RUNS)
        for part in chunks(ids):
            self._retry(
                collection.delete_many,
                self._store.app_filter(**{layout.F_RUN: {"$in": list(part)}}),
            )

    def _event_ids(self, query: dict[str, Any], skip: int = 0) -> list[str]:
        """At most one batch of event ids, newest first."""
        docs = self._find(
            layout.EVENTS, query, {layout.F_EVENT: 1, "_id": 0}, NEWEST_FIRST, skip, batch_size()
        )
        return [doc[layout.F_EVENT] for doc in docs]

    @translate_errors
    def _age_purge_events(self, threshold: datetime) -> list[str]:
        """Delete events older than ``threshold``, one batch (500) at a time; return their ids."""
        removed: list[str] = []
        query = self._event_filter(before_us=to_us(threshold))
        while batch := self._event_ids(query):
            self._delete_events(batch)
            removed += batch
        return removed

    @translate_errors
    def _cap_purge_events(self) -> list[str]:
        """Delete the oldest events beyond ``event_max_records``, one batch (500) at a time."""
        cap = self._settings().event_max_records
        if cap <= 0:
            return []
        removed: list[str] = []
        while batch := self._event_ids(self._event_filter(), skip=cap):
            self._delete_events(batch)
            removed += batch
        return removed

    def _run_ids(
        self, query: dict[str, Any], sort: list[tuple[str, int]], skip: int = 0
    ) -> list[str]:
        docs = self._find(layout.RUNS, query, {layout.F_RUN: 1, "_id": 0}, sort, skip, batch_size())
        return [doc[layout.F_RUN] for doc in docs]

    @translate_errors
    def _age_purge_trigger_runs(self, threshold: datetime) -> int:
        """Delete runs executed before ``threshold``, a batch (500) at a time; return
        the count."""
        query = self._store.app_filter(
            **{
                layout.F_KEYS: layout.filter_key((None, None)),
                layout.F_EXECUTED: {"$lt": to_us(threshold)},
            }
        )
        count = 0
        while batch := self._run_ids(query, RUN_ORDER):
            self._delete_runs(batch)
            count += len(batch)
        return count

    @translate_errors
    def _cascade_delete_runs_for_events(self, event_ids: list[str]) -> int:
        """Delete runs that reference any of ``event_ids``: one ``delete_many`` per batch of 500."""
        count = 0
        collection = self._collection(layout.RUNS)
        for part in chunks(unique(event_ids)):
            result = self._retry(
                collection.delete_many,
                self._store.app_filter(**{layout.F_EVENT_IDS: {"$in": list(part)}}),
            )
            count += result.deleted_count
        return count

    @translate_errors
    def _cap_purge_trigger_runs(self) -> int:
        """Delete the oldest runs beyond ``trigger_run_max_records`` (by executed, else
        claimed time, as SQLite), one batch (500) at a time; return the count."""
        cap = self._settings().trigger_run_max_records
        if cap <= 0:
            return 0
        count = 0
        order = [(layout.F_SORT, -1), (layout.F_RUN, -1)]
        while batch := self._run_ids(self._store.app_filter(), order, skip=cap):
            self._delete_runs(batch)
            count += len(batch)
        return count


__all__ = ["PurgePart"]
