"""The atomic-service methods of ``MongoOrchestrator`` (a mixin), for both pynenc lines.

pynenc >= 0.3 calls the storage-gate methods (record start, finalize, active, window,
purge), served by :class:`~pynenc_mongo.orchestrator.atomic_service.AtomicServiceLedger`;
pynenc 0.2.3 calls ``record_atomic_service_execution`` (one window per runner), kept on
the runner's heartbeat document. pynenc's atomic-service types are imported only for
type checking, so this module loads on 0.2.3 too.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from pynenc_mongo.errors import translate_errors

if TYPE_CHECKING:
    from pynenc.orchestrator.atomic_service import (
        AtomicServiceExecution,
        AtomicServiceExecutionStatus,
        AtomicServiceRun,
    )

    from pynenc_mongo.orchestrator.atomic_service import AtomicServiceLedger
    from pynenc_mongo.orchestrator.runners import RunnerRegistry


class AtomicServiceMethods:
    """pynenc's atomic-service contract, delegated to the ledger and the runner registry.

    The class using it sets ``_ledger`` (None on pynenc 0.2.3) and ``_runners``, and
    provides ``describe_target()`` (for :func:`~pynenc_mongo.errors.translate_errors`).
    """

    _ledger: AtomicServiceLedger | None
    _runners: RunnerRegistry

    def describe_target(self) -> str:
        """Where the documents are (overridden by the orchestrator)."""
        raise NotImplementedError  # pragma: no cover

    def _gate(self) -> AtomicServiceLedger:
        if self._ledger is None:  # pragma: no cover (pynenc 0.2.3 never calls these)
            raise NotImplementedError("atomic-service executions need pynenc >= 0.3")
        return self._ledger

    @translate_errors
    def record_atomic_service_execution(
        self, runner_id: str, start_time: datetime, end_time: datetime
    ) -> None:
        """pynenc 0.2.3: keep ``runner_id``'s last atomic-service window (UTC datetimes)."""
        self._runners.record_service_window(runner_id, start_time, end_time)

    @translate_errors
    def record_atomic_service_execution_start(
        self,
        atomic_service_run: AtomicServiceRun,
        started_at: datetime | None,
        status: AtomicServiceExecutionStatus | None = None,
        reason: str = "",
    ) -> bool:
        """The storage gate (see :mod:`.atomic_service`).

        :param AtomicServiceRun atomic_service_run: the claimed run (its
            ``started_at`` is set).
        :param datetime | None started_at: the start; None stamps now.
        :param status: RUNNING (default: the gate) or a recorded skip (BLOCKED...).
        :param str reason: diagnostic text.
        :return: True when the run may execute work.
        """
        from pynenc.orchestrator.atomic_service import AtomicServiceExecutionStatus as Status

        return self._gate().record_start(
            atomic_service_run, started_at, status or Status.RUNNING, reason
        )

    @translate_errors
    def finalize_atomic_service_execution(
        self,
        atomic_service_run: AtomicServiceRun,
        end_time: datetime,
        status: AtomicServiceExecutionStatus,
        reason: str = "",
    ) -> None:
        """Move the RUNNING execution to ``status``; the first terminal write wins."""
        self._gate().finalize(atomic_service_run, end_time, status, reason)

    @translate_errors
    def get_active_atomic_service_executions(self) -> list[AtomicServiceExecution]:
        """RUNNING executions, most recently started first."""
        return self._gate().active()

    @translate_errors
    def get_atomic_service_executions_in_timerange(
        self,
        start_time: datetime,
        end_time: datetime,
        limit: int = 1000,
        *,
        runner_id: str | None = None,
        min_duration_seconds: float = 0.0,
    ) -> list[AtomicServiceExecution]:
        """Executions overlapping ``[start_time, end_time]``, newest first, at most ``limit``."""
        return self._gate().in_timerange(
            start_time, end_time, limit, runner_id, min_duration_seconds
        )

    @translate_errors
    def purge_atomic_service_executions(self) -> int:
        """Age and capacity purge of executions (never RUNNING or referenced ones).

        :return: how many were deleted.
        """
        return self._gate().purge()
