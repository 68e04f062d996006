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
from typing import Any, cast

from pymongo.errors import (
    AutoReconnect,
    ConfigurationError,
    ConnectionFailure,
    DocumentTooLarge,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
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
