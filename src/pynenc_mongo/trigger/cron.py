"""Cron state, trigger-run claims and valid conditions: what must happen once.

* ``store_last_cron_execution`` is a compare-and-set in one ``update_one`` whose
  filter states the expected previous value; ``matched_count`` says who won. Of
  several processes that read the same last execution and try to move it, exactly
  one matches (MongoDB updates one document atomically), so a cron fires once per
  slot however many runners check it (field notes, finding 12).
* ``claim_trigger_run`` is one upsert whose filter asks for an expired claim: no
  document inserts one (claimed), an expired one is taken over (claimed), a live one
  makes the upsert insert a second document with the same ``_id``, which MongoDB
  refuses (``DuplicateKeyError``: already claimed; finding 14). The server does not
  retry that upsert itself, because its filter is more than an equality on ``_id``
  (MongoDB manual, "Upsert with Duplicate Values").
* Valid conditions are recorded with one unordered ``insert_many`` that skips ids
  already present. Their id names the condition and its context, so "skip" and
  "replace" store the same JSON; this also avoids ``bulk_write`` with ``UpdateOne``,
  which mongomock cannot run with PyMongo >= 4.11.

None of these writes goes through the retry wrapper except the idempotent ones
(valid conditions); the compare-and-set and the claim rely on the driver's own
retryable writes (MongoDB manual, "Retryable Writes").
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from pymongo.errors import DuplicateKeyError
from pynenc.trigger.conditions import ValidCondition

from pynenc_mongo.errors import translate_errors
from pynenc_mongo.operations import insert_if_absent
from pynenc_mongo.schema import trigger as layout
from pynenc_mongo.trigger.part import TriggerPart, aware_utc, chunks, to_millis, unique


class CronPart(TriggerPart):
    """Cron last executions, trigger-run claims and valid conditions."""

    # ------------------------------------------------------------------ cron
    @translate_errors
    def get_last_cron_execution(self, condition_id: str) -> datetime | None:
        """The last execution stored for a cron condition.

        :param str condition_id: the cron condition.
        :return: a datetime with ``tzinfo`` ``datetime.UTC`` equal to the one stored
            (milliseconds), or None if it never ran or is not registered.
        """
        doc = self._retry(
            self._collection(layout.CONDITIONS).find_one,
            self._by_id(condition_id),
            {layout.F_LAST_CRON: 1, "_id": 0},
        )
        return aware_utc((doc or {}).get(layout.F_LAST_CRON))

    @translate_errors
    def store_last_cron_execution(
        self,
        condition_id: str,
        execution_time: datetime,
        expected_last_execution: datetime | None = None,
    ) -> bool:
        """Atomically move a condition's last execution from ``expected_last_execution``
        to ``execution_time``.

        One ``update_one({condition_id, last_cron_execution: expected}, $set)``: it
        matches only while the stored value is still the expected one (None: never
        executed), so of several racing processes one wins. Times are stored in UTC
        truncated to milliseconds (BSON dates), and ``expected`` is compared the same
        way, so a value read with :meth:`get_last_cron_execution` always matches.

        :param str condition_id: a registered cron condition.
        :param datetime execution_time: the new last execution (naive means UTC).
        :param datetime | None expected_last_execution: the value read before.
        :return: True if this call stored it (``matched_count`` 1, also when the value
            was already ``execution_time``); False if another process moved it first or
            the condition is not registered.
        """
        expected = None if expected_last_execution is None else to_millis(expected_last_execution)
        result = self._collection(layout.CONDITIONS).update_one(
            self._by_id(condition_id, **{layout.F_LAST_CRON: expected}),
            {"$set": {layout.F_LAST_CRON: to_millis(execution_time)}},
        )
        return result.matched_count == 1

    # ------------------------------------------------------------------ claims
    @translate_errors
    def claim_trigger_run(self, trigger_run_id: str, expiration_seconds: int = 60) -> bool:
        """Atomically claim the right to execute ``trigger_run_id`` for
        ``expiration_seconds``.

        :param str trigger_run_id: the run (pynenc derives it from the trigger and the
            valid conditions, so every runner computes the same id).
        :param int expiration_seconds: how long the claim holds; after that another
            runner may claim the same id (pynenc's contract). A TTL index on
            ``expires_at`` deletes old claims.
        :return: True if this call holds the claim; False if a live claim exists.
        """
        now = datetime.now(UTC)
        try:
            self._collection(layout.RUN_CLAIMS).update_one(
                self._by_id(trigger_run_id, **{layout.F_EXPIRES: {"$lte": now}}),
                {
                    "$set": {
                        layout.F_EXPIRES: now + timedelta(seconds=expiration_seconds),
                        "claimed_at": now,
                    },
                    "$setOnInsert": {layout.F_RUN: trigger_run_id},
                },
                upsert=True,
            )
        except DuplicateKeyError:
            return False
        return True

    # ------------------------------------------------------------------ valid conditions
    def record_valid_condition(self, valid_condition: ValidCondition) -> None:
        """Record one satisfied condition (see :meth:`record_valid_conditions`)."""
        self.record_valid_conditions([valid_condition])

    @translate_errors
    def record_valid_conditions(self, valid_conditions: list[ValidCondition]) -> None:
        """Record satisfied conditions: one unordered ``insert_many`` per 500; ids already
        recorded are skipped (same id, same JSON). Idempotent, so retried."""
        docs = {
            vc.valid_condition_id: self._store.app_filter(
                **{
                    layout.F_VALID: vc.valid_condition_id,
                    "valid_condition_json": vc.to_json(self.app),
                }
            )
            for vc in valid_conditions
        }
        collection = self._collection(layout.VALID_CONDITIONS)
        for part in chunks(list(docs.values())):
            self._retry(insert_if_absent, collection, list(part))

    @translate_errors
    def get_valid_conditions(self) -> dict[str, ValidCondition]:
        """Every recorded valid condition: ``{valid_condition_id: ValidCondition}``."""
        docs = self._find(
            layout.VALID_CONDITIONS,
            self._store.app_filter(),
            {layout.F_VALID: 1, "valid_condition_json": 1, "_id": 0},
        )
        return {
            doc[layout.F_VALID]: ValidCondition.from_json(doc["valid_condition_json"], self.app)
            for doc in docs
        }

    @translate_errors
    def clear_valid_conditions(self, conditions: Iterable[ValidCondition]) -> None:
        """Delete these valid conditions: one ``delete_many($in)`` per 500 ids."""
        ids = unique(vc.valid_condition_id for vc in conditions)
        collection = self._collection(layout.VALID_CONDITIONS)
        for part in chunks(ids):
            self._retry(
                collection.delete_many,
                self._store.app_filter(**{layout.F_VALID: {"$in": list(part)}}),
            )
