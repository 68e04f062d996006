"""Options of ``pynenc-mongo-setup-indexes``: exit statuses, arguments, settings, messages."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import unquote_plus

from pymongo.errors import ConfigurationError, OperationFailure

from pynenc_mongo import __version__
from pynenc_mongo.config import (
    ConfigStateBackendMongo,
    MongoConfigError,
    check_unknown_settings,
    effective_database,
)
from pynenc_mongo.errors import (
    MongoAuthenticationError,
    MongoUnavailableError,
    translate,
)
from pynenc_mongo.indexes import (
    SETUP_SCRIPT,
    UNAUTHORIZED,
)
from pynenc_mongo.urls import SECRET_OPTIONS, redact_url

PROG = SETUP_SCRIPT

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_UNAUTHORIZED = 4
EXIT_INTERRUPTED = 130

#: Seconds between two progress lines while MongoDB builds indexes.
DEFAULT_PROGRESS_INTERVAL_SECONDS = 5.0
#: Apps listed by name per prefix before "and N more".
MAX_APPS_SHOWN = 20

PRIVILEGES_HINT = (
    "the script needs the listCollections, listIndexes, find and createIndex privilege "
    "actions on the database (dropIndex with --drop-conflicting; the built-in readWrite "
    "role has them all; --check and --dry-run need only the read role)"
)


class Mode(StrEnum):
    """What the script does."""

    CREATE = "create"
    DRY_RUN = "dry-run"
    CHECK = "check"


class Fatal(Exception):
    """Stop with a one-line message and an exit status.

    :ivar int status: the process exit status.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------
# Arguments and settings
# ---------------------------------------------------------------------------
def _seconds(text: str) -> float:
    """argparse type: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _non_empty(text: str) -> str:
    """argparse type: a non-blank string."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a non-empty value, got {text!r}")
    return text.strip()


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (argparse; ``--help`` shows every option).

    :return: an ``argparse.ArgumentParser`` whose namespace has ``url``,
        ``database``, ``prefix``, ``config``, ``timeout`` (seconds), ``app_id``,
        ``all_apps``, ``retention``, ``dry_run``, ``check``, ``drop_conflicting``
        and ``progress_interval`` (seconds).
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Create (or plan, or check) the MongoDB indexes that pynenc-mongo needs. "
            "Idempotent; drops nothing unless --drop-conflicting is given."
        ),
        epilog=(
            "Exit status: 0 done or nothing to do; 1 check failed or indexes left missing "
            "or in conflict; 2 bad usage or configuration; 3 server unreachable or "
            "credentials refused; 4 not authorized. Settings not given here come from the "
            "pynenc configuration (PYNENC__FILEPATH, pyproject.toml, PYNENC__MONGO_URL, ...)."
        ),
    )
    conn = parser.add_argument_group("connection (default: the pynenc configuration)")
    conn.add_argument("--url", help="MongoDB connection string (mongo_url)")
    conn.add_argument("--database", help="database name (mongo_database)")
    conn.add_argument("--prefix", help="collection name prefix (mongo_collection_prefix)")
    conn.add_argument(
        "--config", metavar="FILE", help="pynenc config file (YAML/TOML/JSON) to read settings from"
    )
    conn.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="server selection timeout in seconds (mongo_server_selection_timeout_seconds)",
    )
    scope = parser.add_argument_group("scope").add_mutually_exclusive_group()
    scope.add_argument(
        "--app-id",
        type=_non_empty,
        help="report whether this app is stored (indexes are per collection: they serve every "
        "app using the same collections)",
    )
    scope.add_argument(
        "--all-apps",
        action="store_true",
        help="every collection prefix in the database that holds pynenc-mongo collections",
    )
    parser.add_argument(
        "--retention",
        action="store_true",
        help="include the TTL indexes used by mongo_retention_days (included anyway when "
        "the configuration sets mongo_retention_days > 0)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    mode.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 listing the indexes missing or different (for CI/deploys)",
    )
    parser.add_argument(
        "--drop-conflicting",
        action="store_true",
        help="drop an existing index that conflicts with a defined one (same name with another "
        "definition, or the same keys under another name) and create the defined one",
    )
    parser.add_argument(
        "--progress-interval",
        type=_seconds,
        default=DEFAULT_PROGRESS_INTERVAL_SECONDS,
        metavar="SECONDS",
        help="seconds between progress lines while MongoDB builds (default %(default)s)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


@dataclass(frozen=True)
class Settings:
    """Where and how the script works.

    :ivar str url: connection string (secret: print :attr:`where` instead).
    :ivar str database: database name.
    :ivar str prefix: configured collection prefix.
    :ivar float timeout_seconds: server selection timeout, seconds.
    :ivar bool retention: include the TTL indexes.
    :ivar str retention_reason: why (or why not), for the output.
    :ivar str url_source: where ``url`` came from (``--url``, ``default``, ...).
    """

    url: str
    database: str
    prefix: str
    timeout_seconds: float
    retention: bool
    retention_reason: str
    url_source: str

    @property
    def where(self) -> str:
        """Redacted URL and database, for messages."""
        return f"{redact_url(self.url)} database={self.database!r}"


def resolve_settings(args: argparse.Namespace) -> Settings:
    """Read the pynenc configuration, then apply the command-line overrides.

    :param argparse.Namespace args: parsed by :func:`build_parser`.
    :return: the :class:`Settings`.
    :raises Fatal: (status 2) for a missing config file or a bad value, naming
        the option or setting and the value (passwords redacted).
    """
    if args.config is not None and not os.path.isfile(args.config):
        raise Fatal(EXIT_USAGE, f"--config {args.config!r}: no such file")
    try:
        check_unknown_settings(None)  # misspelt PYNENC__MONGO_* variables, as the backend
        conf = ConfigStateBackendMongo(config_filepath=args.config)
    except MongoConfigError as exc:
        raise Fatal(EXIT_USAGE, f"configuration: {exc}") from None
    except (OSError, ValueError) as exc:
        raise Fatal(EXIT_USAGE, f"cannot read the configuration: {exc}") from None
    source = conf.field_info("mongo_url").source
    overrides = (
        ("--url", "mongo_url", args.url),
        ("--database", "mongo_database", args.database),
        ("--prefix", "mongo_collection_prefix", args.prefix),
        ("--timeout", "mongo_server_selection_timeout_seconds", args.timeout),
    )
    for option, setting, value in overrides:
        if value is None:
            continue
        try:
            setattr(conf, setting, value)  # the setting's own validation (config.py)
        except MongoConfigError as exc:
            raise Fatal(EXIT_USAGE, f"{option}: {exc}") from None
    if args.url is not None:
        source = "--url"
    if args.retention:
        retention, reason = True, "included (--retention)"
    elif conf.mongo_retention_days > 0:
        retention = True
        reason = f"included (mongo_retention_days is {conf.mongo_retention_days:g})"
    else:
        retention, reason = False, "not included: mongo_retention_days is 0 (--retention adds them)"
    return Settings(
        url=conf.mongo_url,
        database=effective_database(conf),
        prefix=conf.mongo_collection_prefix,
        timeout_seconds=conf.mongo_server_selection_timeout_seconds,
        retention=retention,
        retention_reason=reason,
        url_source=source,
    )


# ---------------------------------------------------------------------------
# Errors: one line, host named, password never shown
# ---------------------------------------------------------------------------
_USERINFO = re.compile(r"^[a-z+]+://([^@/?]*)@", re.IGNORECASE)


def _secrets(url: str) -> list[str]:
    """The password of ``url`` (raw and percent-decoded) and its secret option values
    (:data:`pynenc_mongo.urls.SECRET_OPTIONS`), longest first."""
    found: list[str] = []
    match = _USERINFO.match(url)
    if match and ":" in match.group(1):
        password = match.group(1).split(":", 1)[1]
        found += [password, unquote_plus(password)]
    for item in url.partition("?")[2].replace(";", "&").split("&"):
        key, eq, value = item.partition("=")
        if eq and key.lower() in SECRET_OPTIONS:
            found += [value, unquote_plus(value)]
    return sorted({s for s in found if s}, key=len, reverse=True)


def one_line(message: str, url: str = "") -> str:
    """``message`` on one line, with every secret of ``url`` replaced by ``***``."""
    text = " ".join(str(message).split())
    for secret in _secrets(url) if url else []:
        text = text.replace(secret, "***")
    return text


_SOCKET_TIMEOUTS = re.compile(r"\s*\(configured timeouts:[^)]*\)")


def mongo_fatal(exc: BaseException, settings: Settings) -> Fatal:
    """Map a PyMongo error to a :class:`Fatal` with the right exit status."""
    mapped = translate(exc, settings.where)
    if isinstance(mapped, MongoUnavailableError):
        # PyMongo appends its socket timeouts; the one that applied is ours.
        text = _SOCKET_TIMEOUTS.sub("", str(mapped))
        if "server selection timeout" not in text:  # translate() may have named it already
            text += f" (server selection timeout {settings.timeout_seconds:g} s)"
        return Fatal(EXIT_UNAVAILABLE, text)
    if isinstance(mapped, MongoAuthenticationError):
        return Fatal(EXIT_UNAVAILABLE, str(mapped))
    if isinstance(exc, OperationFailure) and exc.code == UNAUTHORIZED:
        errmsg = (exc.details or {}).get("errmsg", str(exc))
        return Fatal(
            EXIT_UNAUTHORIZED, f"not authorized on {settings.where}: {errmsg}; {PRIVILEGES_HINT}"
        )
    if isinstance(exc, ConfigurationError):
        return Fatal(EXIT_UNAVAILABLE, f"cannot connect to {settings.where}: {exc}")
    return Fatal(EXIT_PROBLEMS, f"MongoDB error on {settings.where}: {type(exc).__name__}: {exc}")
