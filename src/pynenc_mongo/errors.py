"""Errors raised by pynenc-mongo and the retry policy for MongoDB operations.

PyMongo already retries one transient failure of a retryable read or write
(MongoDB manual, "Retryable Reads" / "Retryable Writes"). On top of that,
:func:`with_retry` retries operations that this package has made idempotent
(inserts with client-made ``_id`` or unique keys, ``$set`` upserts, reads) a
bounded number of times with exponential backoff, using tenacity. Errors that
outlive the retries become :class:`MongoUnavailableError` or
:class:`MongoAuthenticationError`, whose messages name the host and the cause
and never a password.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import Any, cast

from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConfigurationError,
    ConnectionFailure,
    DocumentTooLarge,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WriteConcernError,
)
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

logger = logging.getLogger("pynenc_mongo")


#: Attempts per operation (the first try included) and backoff bounds in seconds.
RETRY_ATTEMPTS = 5
RETRY_WAIT_MIN_SECONDS = 0.05
RETRY_WAIT_MAX_SECONDS = 2.0
AUTH_FAILED_CODES = frozenset({18, 8000})  # AuthenticationFailed; Atlas "bad auth"
#: MongoDB's limit on one BSON document (MongoDB manual, "BSON Document Size").
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
#: Server error codes for "document would pass the 16 MiB limit": BSONObjectTooLarge
#: (10334), and on update / upsert 17419 and 17420.
DOCUMENT_TOO_LARGE_CODES = frozenset({10334, 17419, 17420})


class MongoBackendError(RuntimeError):
    """Base class of pynenc-mongo's own errors."""


class MongoUnavailableError(MongoBackendError, ConnectionError):
    """MongoDB could not be reached (within the server selection timeout)."""


class MongoAuthenticationError(MongoBackendError, PermissionError):
    """MongoDB refused the credentials."""


class MongoLimitError(MongoBackendError, ValueError):
    """Something is too large for MongoDB to hold (a document over 16 MiB).

    The message names the limit and what passed it.
    """


def is_document_too_large(exc: BaseException) -> bool:
    """True when ``exc`` says a document would pass MongoDB's 16 MiB limit.

    Covers PyMongo's client-side ``DocumentTooLarge`` and the server's errors
    :data:`DOCUMENT_TOO_LARGE_CODES` (also inside a bulk write's first error).
    """
    if isinstance(exc, DocumentTooLarge):
        return True
    if isinstance(exc, OperationFailure):
        if exc.code in DOCUMENT_TOO_LARGE_CODES:
            return True
        details = exc.details or {}
        errors = details.get("writeErrors") or []
        return any(err.get("code") in DOCUMENT_TOO_LARGE_CODES for err in errors)
    return False


class AsyncOperationError(MongoBackendError):
    """An asynchronous write failed for good; raised by the ``wait_for_*`` methods.

    :ivar str invocation_id: the invocation whose write failed.
    """

    def __init__(self, invocation_id: str, cause: BaseException) -> None:
        super().__init__(
            f"asynchronous write for invocation {invocation_id} failed: "
            f"{type(cause).__name__}: {cause}"
        )
        self.invocation_id = invocation_id


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: PyMongo's retryable labels and lost connections.

    ``ServerSelectionTimeoutError`` is excluded: it already waited the whole
    server selection timeout, so retrying would multiply the wait.
    """
    if isinstance(exc, ServerSelectionTimeoutError):
        return False
    if isinstance(exc, AutoReconnect | ConnectionFailure):
        return True
    if isinstance(exc, PyMongoError):
        return exc.has_error_label("RetryableWriteError") or exc.has_error_label(
            "TransientTransactionError"
        )
    return False


def retry_policy() -> dict[str, Any]:
    """tenacity keyword arguments of this package's retry policy (sync and async):
    transient errors only, :data:`RETRY_ATTEMPTS` attempts, exponential backoff from
    :data:`RETRY_WAIT_MIN_SECONDS` to :data:`RETRY_WAIT_MAX_SECONDS`, last error re-raised."""
    return {
        "retry": retry_if_exception(is_transient),
        "stop": stop_after_attempt(RETRY_ATTEMPTS),
        "wait": wait_exponential(
            multiplier=RETRY_WAIT_MIN_SECONDS,
            min=RETRY_WAIT_MIN_SECONDS,
            max=RETRY_WAIT_MAX_SECONDS,
        ),
        "reraise": True,
    }


def with_retry[**P, T](func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call ``func(*args, **kwargs)``, retrying transient MongoDB errors.

    Only pass idempotent operations. Retries :data:`RETRY_ATTEMPTS` times in all
    with exponential backoff between :data:`RETRY_WAIT_MIN_SECONDS` and
    :data:`RETRY_WAIT_MAX_SECONDS`; the last error is re-raised unchanged.
    """
    for attempt in Retrying(**retry_policy()):
        with attempt:
            return func(*args, **kwargs)
    raise AssertionError("unreachable")  # pragma: no cover


def is_dns_failure(exc: BaseException) -> bool:
    """True for PyMongo's ``ConfigurationError`` raised when a ``mongodb+srv://`` host
    name does not resolve (PyMongo resolves SRV and TXT records when the client is
    made): an unreachable server, not a bad setting."""
    text = str(exc)
    return isinstance(exc, ConfigurationError) and (
        "DNS" in text or "resolution lifetime" in text or "SRV" in text
    )


def translate(exc: BaseException, where: str) -> BaseException:
    """Map a PyMongo error to this package's error, naming ``where`` (host, redacted).

    Returns ``exc`` itself when it is not a connection or authentication failure.
    """
    if is_document_too_large(exc):
        return MongoLimitError(
            f"MongoDB at {where} refused a document larger than its limit of "
            f"{MAX_DOCUMENT_BYTES} bytes (16 MiB): {type(exc).__name__}: {str(exc)[:300]}"
        )
    if isinstance(exc, OperationFailure) and exc.code in AUTH_FAILED_CODES:
        return MongoAuthenticationError(f"MongoDB at {where} refused the credentials: {exc}")
    if isinstance(exc, ServerSelectionTimeoutError):
        text = str(exc)
        cause = re.sub(r" \(configured timeouts: [^)]*\)", "", text.split(", Timeout:")[0])
        waited = re.search(r", Timeout: ([0-9.]+)s", text)
        if waited:
            cause += f" (server selection timeout {float(waited.group(1)):g} s)"
        return MongoUnavailableError(f"MongoDB at {where} is not reachable: {cause}")
    if is_dns_failure(exc):
        return MongoUnavailableError(f"MongoDB at {where} is not reachable: {exc}")
    if isinstance(exc, ConnectionFailure):
        return MongoUnavailableError(f"MongoDB at {where} connection failed: {exc}")
    return exc


def translate_errors[**P, T](method: Callable[P, T]) -> Callable[P, T]:
    """Decorator for backend methods: connection and auth failures get clear errors.

    The decorated method's first argument must have ``describe_target()``
    (host and database, password redacted). Generator methods are wrapped so
    that errors raised while iterating are translated too.
    """

    def mapped_error(args: tuple[Any, ...], exc: BaseException) -> BaseException | None:
        owner: Any = args[0]
        mapped = translate(exc, owner.describe_target())
        return None if mapped is exc else mapped

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def gen_wrapper(*args: P.args, **kwargs: P.kwargs) -> Iterator[Any]:
            try:
                yield from cast(Iterator[Any], method(*args, **kwargs))
            except (PyMongoError, ConnectionError) as exc:
                mapped = mapped_error(args, exc)
                if mapped is None:
                    raise
                raise mapped from None

        return cast(Callable[P, T], gen_wrapper)

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except (PyMongoError, ConnectionError) as exc:
            mapped = mapped_error(args, exc)
            if mapped is None:
                raise
            raise mapped from None

    return wrapper


# ---------------------------------------------------------------------------
# Missing unique indexes (issue 16, item 12)
# ---------------------------------------------------------------------------
class MongoIndexMissingError(MongoBackendError):
    """A write whose race-safety rests on a unique index was refused: the index is
    missing (``mongo_create_indexes`` off and the setup script not run, or its
    creation refused or failed). The message names the index and the script.

    :ivar str collection: the physical collection.
    :ivar str index: the index name.
    """

    def __init__(self, message: str, collection: str, index: str) -> None:
        super().__init__(message)
        self.collection = collection
        self.index = index


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
