"""Errors raised by pynenc-mongo and the retry policy for MongoDB operations.

PyMongo already retries one transient failure of a retryable read or write
(MongoDB manual, "Retryable Reads" / "Retryable Writes"). On top of that,
:func:`with_retry` retries operations that this package has made idempotent
(inserts with client-made ``_id`` or unique keys, ``$set`` upserts, reads) with
exponential backoff, using tenacity, **for up to the outage tolerance**
(``mongo_outage_tolerance_seconds``, default 30 s): a server paused, restarting
or electing a new primary is waited for, server selection timeouts included.
Each attempt runs under ``pymongo.timeout(<time left>)`` (PyMongo's client-side
operation timeout), so an operation stuck on a frozen server ends at the
deadline instead of hanging. A tolerance of 0 restores the plain policy:
:data:`RETRY_ATTEMPTS` attempts, server selection timeouts not retried.

The tolerance comes from, in order: the ``outage_tolerance_seconds`` keyword of
:func:`with_retry` (``MongoStore.retry`` passes its config's), the innermost
:func:`translate_errors`-decorated method's owner (its ``conf``), else
:data:`DEFAULT_OUTAGE_TOLERANCE_SECONDS`.

Errors that outlive the retries become :class:`MongoUnavailableError` (naming the
host and how long the operation waited) or :class:`MongoAuthenticationError`,
whose messages name the host and the cause and never a password.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import pymongo
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
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

logger = logging.getLogger("pynenc_mongo")


#: Attempts per operation (the first try included) when the outage tolerance is 0,
#: and backoff bounds in seconds. The longest wait is short so that work resumes
#: within about a second of the server coming back.
RETRY_ATTEMPTS = 5
RETRY_WAIT_MIN_SECONDS = 0.05
RETRY_WAIT_MAX_SECONDS = 1.0
#: Default of ``mongo_outage_tolerance_seconds``: how long an idempotent operation
#: keeps retrying an unreachable server. A replica-set election takes up to about
#: 12 s (MongoDB manual, "Replica Set Elections"); PyMongo's own default server
#: selection timeout is 30 s.
DEFAULT_OUTAGE_TOLERANCE_SECONDS = 30.0
#: Attribute set on an error that outlived the retries: seconds spent retrying.
WAITED_ATTR = "pynenc_mongo_waited_seconds"
AUTH_FAILED_CODES = frozenset({18, 8000})  # AuthenticationFailed; Atlas "bad auth"
#: MongoDB's limit on one BSON document (MongoDB manual, "BSON Document Size").
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
#: Server error codes for "document would pass the 16 MiB limit": BSONObjectTooLarge
#: (10334), and on update / upsert 17419 and 17420.
DOCUMENT_TOO_LARGE_CODES = frozenset({10334, 17419, 17420})


class MongoBackendError(RuntimeError):
    """Base class of pynenc-mongo's own errors."""


class MongoUnavailableError(MongoBackendError, ConnectionError):
    """MongoDB could not be reached within the outage tolerance (or, with a tolerance
    of 0, the server selection timeout). The message names the host and how long
    the operation waited."""


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


class AsyncUnavailableError(AsyncOperationError, MongoUnavailableError):
    """An asynchronous write gave up because MongoDB stayed unreachable past the
    outage tolerance (catchable as either parent)."""


def is_auth_failure(exc: OperationFailure) -> bool:
    """True when the server refused the credentials: codes :data:`AUTH_FAILED_CODES`,
    or no code and the message MongoDB uses ("Authentication failed"; the wire test
    server's SCRAM replies carry no code)."""
    if exc.code in AUTH_FAILED_CODES:
        return True
    return exc.code is None and "Authentication failed" in str(exc)


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


def is_outage(exc: BaseException) -> bool:
    """True for errors worth waiting out within the outage tolerance: the
    :func:`is_transient` ones and server selection timeouts (no server answered)."""
    return isinstance(exc, ServerSelectionTimeoutError) or is_transient(exc)


#: The tolerance of the innermost :func:`translate_errors` method running (seconds).
_TOLERANCE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "pynenc_mongo_outage_tolerance", default=None
)


def current_tolerance(explicit: float | None = None) -> float:
    """The outage tolerance in force, in seconds (see the module docstring)."""
    if explicit is not None:
        return float(explicit)
    found = _TOLERANCE.get()
    return DEFAULT_OUTAGE_TOLERANCE_SECONDS if found is None else found


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    if state.attempt_number in (1, 5, 20) or state.attempt_number % 50 == 0:
        logger.warning(
            "pynenc-mongo: MongoDB operation failed (attempt %d, %.1f s so far), retrying: %s: %s",
            state.attempt_number,
            state.seconds_since_start or 0.0,
            type(exc).__name__,
            str(exc)[:200],
        )


def retry_policy(tolerance_seconds: float | None = None) -> dict[str, Any]:
    """tenacity keyword arguments of this package's retry policy (sync and async).

    :param float | None tolerance_seconds: the outage tolerance; None for
        :func:`current_tolerance`.
    :return: with a tolerance > 0: :func:`is_outage` errors retried until that many
        seconds have passed; with 0: :func:`is_transient` errors only,
        :data:`RETRY_ATTEMPTS` attempts. Exponential backoff from
        :data:`RETRY_WAIT_MIN_SECONDS` to :data:`RETRY_WAIT_MAX_SECONDS` between
        attempts; the last error re-raised unchanged.
    """
    tolerance = current_tolerance(tolerance_seconds)
    wait = wait_exponential(
        multiplier=RETRY_WAIT_MIN_SECONDS, min=RETRY_WAIT_MIN_SECONDS, max=RETRY_WAIT_MAX_SECONDS
    )
    if tolerance <= 0:
        return {
            "retry": retry_if_exception(is_transient),
            "stop": stop_after_attempt(RETRY_ATTEMPTS),
            "wait": wait,
            "reraise": True,
        }
    return {
        "retry": retry_if_exception(is_outage),
        "stop": stop_after_delay(tolerance),
        "wait": wait,
        "reraise": True,
        "before_sleep": _log_retry,
    }


def _attempt_timeout(deadline: float) -> float | None:
    """Seconds the next attempt may take (``pymongo.timeout``), or None for no bound."""
    if deadline == float("inf"):
        return None
    return max(deadline - time.monotonic(), 0.001)


@contextmanager
def _bounded(deadline: float) -> Iterator[None]:
    seconds = _attempt_timeout(deadline)
    if seconds is None:
        yield
        return
    with pymongo.timeout(seconds):
        yield


def _deadline(tolerance: float) -> float:
    return time.monotonic() + tolerance if tolerance > 0 else float("inf")


def _mark_waited(exc: BaseException, started: float, tolerance: float) -> None:
    """Record on ``exc`` how long the retries waited (read by :func:`translate`)."""
    if tolerance > 0 and is_outage(exc):
        try:
            setattr(exc, WAITED_ATTR, time.monotonic() - started)
        except AttributeError:  # pragma: no cover - exceptions accept attributes
            pass


def with_retry[T](
    func: Callable[..., T],
    *args: Any,
    outage_tolerance_seconds: float | None = None,
    **kwargs: Any,
) -> T:
    """Call ``func(*args, **kwargs)``, retrying MongoDB errors under :func:`retry_policy`.

    Only pass idempotent operations. With an outage tolerance > 0 each attempt runs
    under ``pymongo.timeout`` with the time left, so the whole call ends within the
    tolerance (plus one backoff step). The last error is re-raised unchanged, marked
    with how long it waited (see :func:`translate`).

    :param func: the operation, e.g. ``collection.find_one``.
    :param float | None outage_tolerance_seconds: seconds to keep retrying an
        unreachable server; None for :func:`current_tolerance`; 0 for
        :data:`RETRY_ATTEMPTS` attempts without waiting out server selection timeouts.
    :return: what ``func`` returns.
    """
    tolerance = current_tolerance(outage_tolerance_seconds)
    started = time.monotonic()
    deadline = _deadline(tolerance)
    try:
        for attempt in Retrying(**retry_policy(tolerance)):
            with attempt, _bounded(deadline):
                return func(*args, **kwargs)
    except PyMongoError as exc:
        _mark_waited(exc, started, tolerance)
        raise
    raise AssertionError("unreachable")  # pragma: no cover


async def with_retry_async[T](
    func: Callable[[], Any], outage_tolerance_seconds: float | None = None
) -> T:
    """The asynchronous :func:`with_retry`: ``await func()`` under the same policy.

    :param func: a coroutine function without arguments (an idempotent operation).
    :param float | None outage_tolerance_seconds: as for :func:`with_retry`.
    :return: what the coroutine returns.
    """
    tolerance = current_tolerance(outage_tolerance_seconds)
    started = time.monotonic()
    deadline = _deadline(tolerance)
    try:
        async for attempt in AsyncRetrying(**retry_policy(tolerance)):
            with attempt, _bounded(deadline):
                return cast(T, await func())
    except PyMongoError as exc:
        _mark_waited(exc, started, tolerance)
        raise
    raise AssertionError("unreachable")  # pragma: no cover


def tolerance_of(owner: Any) -> float | None:
    """The ``mongo_outage_tolerance_seconds`` of ``owner.conf``, or None if it has none."""
    try:
        conf = getattr(owner, "conf", None)
    except Exception:  # noqa: BLE001 - a bad config is reported by the method itself
        return None
    value = getattr(conf, "mongo_outage_tolerance_seconds", None)
    return float(value) if isinstance(value, int | float) else None


@contextmanager
def outage_tolerance(seconds: float | None) -> Iterator[None]:
    """Make ``seconds`` the tolerance of :func:`with_retry` calls in this block
    (None: leave it as it is)."""
    if seconds is None:
        yield
        return
    token = _TOLERANCE.set(seconds)
    try:
        yield
    finally:
        _TOLERANCE.reset(token)


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
    if isinstance(exc, OperationFailure) and is_auth_failure(exc):
        return MongoAuthenticationError(f"MongoDB at {where} refused the credentials: {exc}")
    retried = getattr(exc, WAITED_ATTR, None)
    after = (
        f" (gave up after waiting {retried:.1f} s, the outage tolerance: "
        "mongo_outage_tolerance_seconds)"
        if isinstance(retried, float)
        else ""
    )
    if isinstance(exc, ServerSelectionTimeoutError):
        text = str(exc)
        cause = re.sub(r" \(configured timeouts: [^)]*\)", "", text.split(", Timeout:")[0])
        waited = re.search(r", Timeout: ([0-9.]+)s", text)
        if waited:
            cause += f" (server selection timeout {float(waited.group(1)):g} s)"
        return MongoUnavailableError(f"MongoDB at {where} is not reachable: {cause}{after}")
    if is_dns_failure(exc):
        return MongoUnavailableError(f"MongoDB at {where} is not reachable: {exc}")
    if isinstance(exc, ConnectionFailure):
        return MongoUnavailableError(f"MongoDB at {where} connection failed: {exc}{after}")
    if after and isinstance(exc, PyMongoError) and exc.timeout:
        return MongoUnavailableError(f"MongoDB at {where} did not answer: {exc}{after}")
    return exc


def translate_errors[**P, T](method: Callable[P, T]) -> Callable[P, T]:
    """Decorator for backend methods: connection and auth failures get clear errors.

    The decorated method's first argument must have ``describe_target()``
    (host and database, password redacted); if it has a ``conf`` with
    ``mongo_outage_tolerance_seconds``, :func:`with_retry` calls made by the method
    use that tolerance (see :func:`outage_tolerance`) and the whole method runs under
    ``pymongo.timeout(tolerance)``: also its operations outside any retry (lazy
    index creation on a collection's first use) end by the tolerance instead of
    hanging on a frozen server. Generator methods are wrapped
    so that errors raised while iterating are translated too (their retries use the
    default tolerance: a context variable cannot span a generator's suspensions).
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
        tolerance = tolerance_of(args[0]) if args else None
        started = time.monotonic()
        try:
            with outage_tolerance(tolerance), _bounded(_deadline(tolerance or 0.0)):
                return method(*args, **kwargs)
        except (PyMongoError, ConnectionError) as exc:
            if tolerance and not hasattr(exc, WAITED_ATTR):
                _mark_waited(exc, started, tolerance)
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
