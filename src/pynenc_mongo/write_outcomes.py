"""What a failed write did on the server: "maybe applied" is not "not applied".

A write concern error (``WTimeoutError``, code 64) or an unordered bulk error whose
``writeErrors`` do not cover a document can come back for a write the primary applied
(MongoDB manual, "Write Concern"; PyMongo's ``BulkWriteError.details``). Callers delete
what a stored pointer may reference only for writes :func:`write_outcome` calls
REJECTED (issue 16, item 1).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pymongo.errors import (
    BulkWriteError,
    DocumentTooLarge,
    OperationFailure,
    WriteConcernError,
)

from pynenc_mongo.errors import DOCUMENT_TOO_LARGE_CODES, is_document_too_large


# ---------------------------------------------------------------------------
# "Maybe applied" is not "not applied" (issue 16, item 1)
# ---------------------------------------------------------------------------
class WriteOutcome(StrEnum):
    """What a failed write did on the server, as far as its error tells."""

    REJECTED = "rejected"
    """Surely not applied: refused before anything was written."""
    APPLIED = "applied"
    """Applied on the primary, but the write concern was not satisfied (a
    ``writeConcernError``, e.g. code 64 WriteConcernFailed on ``wtimeout``, or 100
    UnsatisfiableWriteConcern): it may still replicate, or be rolled back."""
    UNKNOWN = "unknown"
    """May or may not be applied, and may still be running on the server (lost
    connection, timeout, primary stepping down)."""


#: Error codes that mean "not written": duplicate key (11000, 11001, 12582),
#: DocumentValidationFailure (121), Unauthorized (13), document too large
#: (:data:`DOCUMENT_TOO_LARGE_CODES`), and refusals of bad input before writing:
#: BadValue (2), FailedToParse (9), TypeMismatch (14), ConflictingUpdateOperators
#: (40), DollarPrefixedFieldName (52), InvalidDBRef (55), EmptyFieldName (56),
#: DottedFieldName (57), ImmutableField (66). MongoDB manual, "Error Codes".
REJECTED_WRITE_CODES: frozenset[int] = (
    frozenset({11000, 11001, 12582, 121, 13, 2, 9, 14, 40, 52, 55, 56, 57, 66})
    | DOCUMENT_TOO_LARGE_CODES
)
#: Error labels that mean the write may have happened.
_MAYBE_LABELS = ("RetryableWriteError", "TransientTransactionError")


def _write_concern_errors(exc: BaseException) -> list[Any]:
    details = getattr(exc, "details", None)
    if isinstance(exc, WriteConcernError):
        return [details or {}]
    if isinstance(details, dict):
        found = details.get("writeConcernErrors") or []
        single = details.get("writeConcernError")
        return [*found, single] if single else list(found)
    return []


def rejected_positions(exc: BulkWriteError) -> set[int]:
    """Positions, in the documents given to an unordered bulk write, of the documents
    its error says were surely not written (``writeErrors`` with a code of
    :data:`REJECTED_WRITE_CODES`).

    Every other document of an **unordered** bulk write was attempted and may be
    stored (PyMongo raises ``BulkWriteError`` only after the whole batch ran), even
    when ``writeErrors`` is empty and only ``writeConcernErrors`` came back.
    A duplicate-key position means "not written by this call": a document with the
    same key exists, which may be this call's own from an earlier attempt.

    :param BulkWriteError exc: the error of ``insert_many(..., ordered=False)``.
    :return: the positions (``writeErrors[i]["index"]``).
    """
    details = exc.details or {}
    return {
        int(err["index"])
        for err in details.get("writeErrors") or []
        if err.get("code") in REJECTED_WRITE_CODES and "index" in err
    }


def write_outcome(exc: BaseException, documents: int | None = None) -> WriteOutcome:
    """Classify the error of a write: surely not applied, applied, or unknown.

    Only definite rejections are ``REJECTED``: PyMongo's client-side
    ``DocumentTooLarge`` (never sent), a server refusal with a code of
    :data:`REJECTED_WRITE_CODES` and no write concern error, and a bulk error whose
    ``writeErrors`` cover all ``documents`` with such codes. A write concern error
    (``WriteConcernError``/``WTimeoutError``, or ``writeConcernErrors`` in a bulk
    error) is ``APPLIED``: MongoDB reports it after applying the write on the
    primary. Everything else (connection lost, timeouts, step-downs, errors with a
    ``RetryableWriteError`` label, non-PyMongo errors) is ``UNKNOWN``.

    :param BaseException exc: the error raised by the write.
    :param int | None documents: for a bulk write, how many documents it was given
        (needed to call a bulk error ``REJECTED``).
    :return: the outcome.
    """
    if isinstance(exc, DocumentTooLarge):
        return WriteOutcome.REJECTED
    if not isinstance(exc, OperationFailure):
        return WriteOutcome.UNKNOWN
    if _write_concern_errors(exc):
        return WriteOutcome.APPLIED
    if any(exc.has_error_label(label) for label in _MAYBE_LABELS) or exc.timeout:
        return WriteOutcome.UNKNOWN
    if isinstance(exc, BulkWriteError):
        rejected = rejected_positions(exc)
        if documents is not None and len(rejected) >= documents:
            return WriteOutcome.REJECTED
        return WriteOutcome.UNKNOWN
    if exc.code in REJECTED_WRITE_CODES or is_document_too_large(exc):
        return WriteOutcome.REJECTED
    return WriteOutcome.UNKNOWN


def is_surely_not_applied(exc: BaseException, documents: int | None = None) -> bool:
    """True only when ``exc`` says the write was surely not applied (see
    :func:`write_outcome`): its new value pieces may then be deleted. Any other
    error is "maybe applied": a stored pointer may reference them."""
    return write_outcome(exc, documents) is WriteOutcome.REJECTED


def is_refused_write(exc: BaseException) -> bool:
    """True for a write the server refuses for authorization (13) or validation
    (121) reasons: retrying it cannot succeed, so a best-effort write (the app info)
    is logged and dropped instead of being retried before every operation."""
    return (
        isinstance(exc, OperationFailure)
        and exc.code in (13, 121)
        and not (_write_concern_errors(exc))
    )
