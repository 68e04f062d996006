"""``pynenc-mongo-setup-indexes``: create, plan or check the indexes pynenc-mongo needs.

Installed as a console script with the package (and ``scripts/setup_indexes`` in
a clone); ``python -m pynenc_mongo.cli`` works too. The indexes are the ones
defined in :data:`pynenc_mongo.schema.INDEXES`; the comparison with what exists
is :func:`pynenc_mongo.indexes.inspect_collection`.

Modes (``--help`` lists every option):

* default: create the missing indexes, one ``createIndexes`` command per
  collection (MongoDB manual, "db.collection.createIndexes()"), printing what it
  did per collection and, while MongoDB builds on a large collection, the build's
  progress (from ``$currentOp``). Idempotent: a second run changes nothing and
  says so.
* ``--dry-run``: print the plan, write nothing.
* ``--check``: write nothing; exit 1 listing what is missing or different.

An index in the way (same name with another definition, or the same keys under
another name) is reported with what to do and left alone, unless
``--drop-conflicting`` is given: then it is dropped and the defined one created.

Connection settings come from the same sources as the backend (pynenc config
file via ``--config`` or ``PYNENC__FILEPATH``, ``[tool.pynenc]`` in
``./pyproject.toml``, ``PYNENC__MONGO_URL`` and the other env vars); ``--url``,
``--database``, ``--prefix`` and ``--timeout`` override them.

Exit status: 0 done (or nothing to do, or check passed); 1 check failed, or
indexes left missing or in conflict; 2 bad usage or configuration; 3 server not
reachable within the server selection timeout, or credentials refused; 4 not
authorized for a needed action; 130 interrupted. Errors are one line on stderr,
naming the host and never the password.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TextIO
from urllib.parse import unquote_plus

from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import ConfigurationError, OperationFailure, PyMongoError

from pynenc_mongo import __version__, schema
from pynenc_mongo.client import get_database
from pynenc_mongo.config import (
    ConfigStateBackendMongo,
    MongoConfigError,
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
    CollectionReport,
    IndexState,
    IndexStatus,
    create_indexes,
    inspect_collection,
)
from pynenc_mongo.urls import SECRET_OPTIONS, MongoUrlError, redact_url

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


def _mongo_fatal(exc: BaseException, settings: Settings) -> Fatal:
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


# ---------------------------------------------------------------------------
# Progress of index builds ($currentOp)
# ---------------------------------------------------------------------------
#: The phase in a ``$currentOp`` ``msg`` such as ``"Index Build: scanning collection
#: Index Build: scanning collection: 450/1000 45%"``.
_PHASE = re.compile(r"Index Build:\s*(.+?)(?=\s*Index Build|:|$)")


def describe_build_progress(operations: Iterable[Mapping[str, Any]]) -> str | None:
    """Summarize ``$currentOp`` documents of an index build.

    MongoDB reports a build's ``progress: {done, total}`` (documents or keys) and a
    ``msg`` such as ``"Index Build: scanning collection"`` (MongoDB manual,
    "$currentOp", output fields ``progress`` and ``msg``).

    :param Iterable[Mapping] operations: documents from ``$currentOp``.
    :return: e.g. ``"45% (450,000/1,000,000) scanning collection"``, the bare
        ``msg``, or None when nothing describes a build.
    """
    message = None
    for op in operations:
        msg = op.get("msg")
        phase = ""
        if isinstance(msg, str) and msg:
            phases = _PHASE.findall(msg)
            phase = phases[-1].strip() if phases else ""
            message = message or msg
        progress = op.get("progress")
        if isinstance(progress, Mapping):
            try:
                done, total = float(progress.get("done", 0)), float(progress.get("total", 0))
            except (TypeError, ValueError):
                continue
            if total > 0:
                text = f"{100 * done / total:.0f}% ({int(done):,}/{int(total):,})"
                return f"{text} {phase}".strip()
    return message


class BuildProgress:
    """Polls ``$currentOp`` (on the ``admin`` database) for the index builds of one
    collection. Best effort: without the ``inprog`` privilege it falls back to
    ``allUsers: false`` (the user's own operations, always allowed); where
    ``$currentOp`` is not available (mongomock, some hosted tiers) it gives up
    quietly and :meth:`poll` returns None.

    :param Collection collection: the collection whose indexes are being built.
    """

    def __init__(self, collection: Collection[Any]) -> None:
        self._client = collection.database.client
        self._namespace = f"{collection.database.name}.{collection.name}"
        self._all_users = True
        self.enabled = True

    def _pipeline(self) -> list[dict[str, Any]]:
        return [
            {"$currentOp": {"allUsers": self._all_users, "idleConnections": False}},
            {
                "$match": {
                    "ns": self._namespace,
                    "$or": [
                        {"command.createIndexes": {"$exists": True}},
                        {"msg": {"$regex": "^Index Build"}},
                    ],
                }
            },
        ]

    def poll(self) -> str | None:
        """One ``$currentOp`` round trip.

        :return: a summary (see :func:`describe_build_progress`) or None.
        """
        if not self.enabled:
            return None
        try:
            operations = list(self._client.admin.aggregate(self._pipeline()))
        except OperationFailure as exc:
            if exc.code == UNAUTHORIZED and self._all_users:
                self._all_users = False
                return self.poll()
            self.enabled = False
            return None
        except Exception:  # noqa: BLE001 - progress is optional; never fail a build for it
            self.enabled = False
            return None
        return describe_build_progress(operations)


def run_with_progress[T](
    work: Callable[[], T],
    poll: Callable[[], str | None],
    report: Callable[[str], None],
    interval_seconds: float,
) -> T:
    """Run ``work()`` in a thread, calling ``report`` with a progress line every
    ``interval_seconds`` until it returns.

    :param work: the blocking call (``createIndexes``).
    :param poll: returns a progress summary or None (see :class:`BuildProgress`).
    :param report: receives lines such as ``"building (10 s): 45% (...)"``.
    :param float interval_seconds: seconds between lines.
    :return: what ``work`` returned.
    :raises BaseException: whatever ``work`` raised.
    """
    outcome: dict[str, Any] = {}
    finished = threading.Event()

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = exc
        finally:
            finished.set()

    started = time.monotonic()
    thread = threading.Thread(target=target, name="pynenc-mongo-index-build", daemon=True)
    thread.start()
    while not finished.wait(interval_seconds):
        summary = poll()
        elapsed = time.monotonic() - started
        report(f"building ({elapsed:.0f} s)" + (f": {summary}" if summary else ""))
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------
@dataclass
class Totals:
    """Counts over the whole run (numbers of indexes, except ``collections``)."""

    collections: int = 0
    present: int = 0
    created: int = 0
    missing: int = 0
    conflicts: int = 0
    dropped: int = 0
    failed: int = 0


def _count(n: int | None) -> str:
    if n is None:
        return "documents: unknown"
    return f"{n:,} document" + ("" if n == 1 else "s")


def _drop_hint(collection: str, index: str) -> str:
    return f"db.getCollection({collection!r}).dropIndex({index!r})"


class Runner:
    """Does one run over one database (see :func:`main`).

    :param Database db: the database.
    :param Settings settings: resolved settings.
    :param Mode mode: create, dry run or check.
    :param bool drop_conflicting: drop indexes in the way (create mode).
    :param float progress_interval: seconds between progress lines.
    :param TextIO out: where the report goes.
    """

    def __init__(
        self,
        db: Database[dict[str, Any]],
        settings: Settings,
        mode: Mode,
        *,
        drop_conflicting: bool,
        progress_interval: float,
        out: TextIO,
    ) -> None:
        self.db = db
        self.settings = settings
        self.mode = mode
        self.drop_conflicting = drop_conflicting
        self.progress_interval = progress_interval
        self.out = out
        self.totals = Totals()
        self._existing: set[str] | None = None
        self._listed = False

    def line(self, text: str = "") -> None:
        """Write one line of the report."""
        self.out.write(text + "\n")
        self.out.flush()

    # -- scope ------------------------------------------------------------------
    def collection_names(self) -> set[str] | None:
        """The database's collection names (None without ``listCollections``)."""
        if not self._listed:
            try:
                self._existing = set(self.db.list_collection_names())
            except OperationFailure as exc:
                if exc.code != UNAUTHORIZED:
                    raise
            self._listed = True
        return self._existing

    def prefixes(self, all_apps: bool) -> list[str]:
        """The configured prefix, or with ``all_apps`` every prefix found."""
        if not all_apps:
            return [self.settings.prefix]
        names = self.collection_names()
        if names is None:
            raise Fatal(
                EXIT_UNAUTHORIZED,
                f"--all-apps needs the listCollections privilege action on {self.settings.where}",
            )
        found = schema.layout_prefixes(names)
        if not found:
            self.line(
                f"no pynenc-mongo collections found in database {self.settings.database!r}; "
                f"using the configured prefix {self.settings.prefix!r}"
            )
            return [self.settings.prefix]
        return found

    def report_apps(self, prefix: str, app_id: str | None) -> None:
        """Print the apps stored under ``prefix`` (and whether ``app_id`` is)."""
        names = schema.CollectionNames(prefix)
        infos = self.db[names[schema.APP_INFOS]]
        docs = list(
            infos.find({}, {"_id": 0, schema.F_APP: 1, "info.config_values": 1}).sort(
                schema.F_APP, 1
            )
        )
        apps = [str(doc.get(schema.F_APP)) for doc in docs]
        shown = ", ".join(apps[:MAX_APPS_SHOWN])
        if len(apps) > MAX_APPS_SHOWN:
            shown += f" and {len(apps) - MAX_APPS_SHOWN} more"
        self.line(f"prefix {prefix!r}: apps with stored app info: {shown or 'none'}")
        if app_id is not None:
            if app_id in apps:
                self.line(f"  app {app_id!r}: found (app info stored)")
            elif infos.database[names[schema.INVOCATIONS]].find_one(
                {schema.F_APP: app_id}, {"_id": 1}
            ):
                self.line(f"  app {app_id!r}: found (invocations stored, no app info)")
            else:
                self.line(
                    f"  app {app_id!r}: not found under prefix {prefix!r} (indexes are per "
                    "collection and serve every app using these collections; continuing)"
                )
        if not self.settings.retention:
            for doc in docs:
                values = schema.decode_config_value((doc.get("info") or {}).get("config_values"))
                days = values.get("mongo_retention_days") if isinstance(values, dict) else None
                try:
                    if days is not None and float(days) > 0:
                        self.line(
                            f"  note: app {doc.get(schema.F_APP)!r} was configured with "
                            f"mongo_retention_days={days}; pass --retention to include the TTL "
                            "indexes"
                        )
                except (TypeError, ValueError):
                    continue

    # -- per collection ---------------------------------------------------------
    def document_count(self, collection: Collection[dict[str, Any]]) -> int | None:
        """``estimatedDocumentCount`` (collection metadata, no scan), or None."""
        try:
            return int(collection.estimated_document_count())
        except OperationFailure as exc:
            if exc.code != UNAUTHORIZED:
                raise
            return None

    def process(self, prefix: str, logical: str) -> None:
        """Inspect one collection, print its state and act per the mode."""
        collection = self.db[schema.CollectionNames(prefix)[logical]]
        report = inspect_collection(collection, logical, self.settings.retention)
        self.totals.collections += 1
        self.totals.present += len(report.present)
        existing = self.collection_names()
        if existing is not None and collection.name not in existing:
            header = f"  {collection.name} (does not exist yet)"
        else:
            header = f"  {collection.name} ({_count(self.document_count(collection))})"
        others = (
            f"; other indexes left alone: {', '.join(report.other_indexes)}"
            if report.other_indexes
            else ""
        )
        if not report.missing and not report.conflicts:
            n = len(report.present)
            present = "1 index present" if n == 1 else f"all {n} indexes present"
            self.line(f"{header}: {present}{others}")
            return
        if self.mode is Mode.CHECK:
            self.check(header, report, others)
        else:
            self.plan_and_create(header, collection, report, others)

    def item(self, verb: str, text: str) -> None:
        """One indented line about one index: ``    <verb> <text>``."""
        self.line(f"    {verb:<13} {text}")

    def _conflict_lines(self, collection: str, status: IndexStatus) -> None:
        self.item("conflict", f"{status.spec.name}: {status.explain()}")
        existing = status.existing_name or status.spec.name
        if status.state is IndexState.DIFFERENT:
            fix = (
                f"rerun with --drop-conflicting to drop it and create the defined one "
                f"({status.spec.describe()}; queries that need it scan until the build ends)"
            )
        else:
            fix = (
                f"rerun with --drop-conflicting to drop {existing!r} and create "
                f"{status.spec.name!r}, or keep it and ignore this line"
            )
        self.item("", f"to fix: {fix}, or drop it yourself: {_drop_hint(collection, existing)}")

    def check(self, header: str, report: CollectionReport, others: str) -> None:
        """``--check``: list what is missing or in conflict."""
        parts = [f"{len(report.present)} present"]
        if report.missing:
            parts.append(f"{len(report.missing)} missing")
        if report.conflicts:
            parts.append(f"{len(report.conflicts)} different")
        self.line(f"{header}: {', '.join(parts)}{others}")
        for status in report.missing:
            self.item("missing", f"{status.spec.name} {status.spec.describe()}")
        for status in report.conflicts:
            self._conflict_lines(report.name, status)
        self.totals.missing += len(report.missing)
        self.totals.conflicts += len(report.conflicts)

    def plan_and_create(
        self,
        header: str,
        collection: Collection[dict[str, Any]],
        report: CollectionReport,
        others: str,
    ) -> None:
        """Create mode and ``--dry-run``: drop (if told to) and create."""
        dry = self.mode is Mode.DRY_RUN
        would = "would " if dry else ""
        to_drop = [s for s in report.conflicts if self.drop_conflicting]
        kept = [s for s in report.conflicts if not self.drop_conflicting]
        to_create = [s.spec for s in report.missing] + [s.spec for s in to_drop]
        parts = []
        if report.present:
            parts.append(f"{len(report.present)} present")
        if to_drop:
            parts.append(f"{would}drop {len(to_drop)}")
        if to_create:
            parts.append(f"{would}create {len(to_create)}")
        if kept:
            parts.append(f"{len(kept)} in conflict, left as is")
        self.line(f"{header}: {', '.join(parts)}{others}")
        for status in kept:
            self._conflict_lines(collection.name, status)
        self.totals.conflicts += len(kept)
        for status in to_drop:
            existing = status.existing_name or status.spec.name
            self.item(f"{would}drop", f"{existing}: {status.explain()}")
            if not dry:
                collection.drop_index(existing)
                self.totals.dropped += 1
        for spec in to_create:
            self.item(f"{would}create", f"{spec.name} {spec.describe()}")
        if dry or not to_create:
            self.totals.missing += len(to_create)
            return
        self.create(collection, to_create)

    def _build(self, collection: Collection[dict[str, Any]], specs: list[schema.IndexSpec]) -> None:
        progress = BuildProgress(collection)
        run_with_progress(
            lambda: create_indexes(collection, specs),
            progress.poll,
            lambda text: self.item("", text),
            self.progress_interval,
        )

    def create(self, collection: Collection[dict[str, Any]], specs: list[schema.IndexSpec]) -> None:
        """Build ``specs`` together; if that fails, one by one to find which fail."""
        started = time.monotonic()
        try:
            self._build(collection, specs)
            created = list(specs)
        except OperationFailure as exc:
            if exc.code == UNAUTHORIZED or len(specs) == 1:
                if exc.code == UNAUTHORIZED:
                    raise
                self._failed(collection, specs[0], exc)
                return
            created = []
            for spec in specs:
                try:
                    self._build(collection, [spec])
                    created.append(spec)
                except OperationFailure as one:
                    if one.code == UNAUTHORIZED:
                        raise
                    self._failed(collection, spec, one)
        elapsed = time.monotonic() - started
        if created:
            self.totals.created += len(created)
            self.item("created", f"{len(created)} in {elapsed:.1f} s")

    def _failed(
        self, collection: Collection[dict[str, Any]], spec: schema.IndexSpec, exc: OperationFailure
    ) -> None:
        errmsg = (exc.details or {}).get("errmsg", str(exc))
        text = f"{collection.name}.{spec.name}: code {exc.code}: {errmsg}"
        if exc.code == 11000:
            text += " (the collection holds duplicates of a unique key; remove them and rerun)"
        self.item("FAILED", text)
        self.totals.failed += 1

    # -- summary ----------------------------------------------------------------
    def summary(self) -> int:
        """Print the closing line and return the exit status."""
        t = self.totals
        unchanged = "nothing was changed"
        if self.mode is Mode.CHECK:
            if t.missing or t.conflicts:
                self.line(
                    f"check failed: {t.missing} missing, {t.conflicts} different, {t.present} "
                    f"present ({unchanged}). Run {PROG} without --check to create the missing "
                    "ones; see the lines above for the others."
                )
                return EXIT_PROBLEMS
            self.line(f"check passed: all {t.present} indexes present ({unchanged}).")
            return EXIT_OK
        if self.mode is Mode.DRY_RUN:
            if not t.missing and not t.conflicts:
                self.line(f"dry run: nothing to do, all {t.present} indexes present.")
            else:
                self.line(
                    f"dry run: would create {t.missing} indexes"
                    + (f", {t.conflicts} in conflict left as is" if t.conflicts else "")
                    + f"; {t.present} present ({unchanged})."
                )
            return EXIT_OK
        if not (t.created or t.dropped or t.conflicts or t.failed):
            self.line(
                f"nothing to do: all {t.present} indexes present in {t.collections} "
                f"collections ({unchanged})."
            )
            return EXIT_OK
        text = f"created {t.created} indexes"
        if t.dropped:
            text += f", dropped {t.dropped} in conflict"
        text += f"; {t.present} were already present"
        if t.conflicts:
            text += f"; {t.conflicts} in conflict left as is (see above; --drop-conflicting)"
        if t.failed:
            text += f"; {t.failed} failed"
        self.line(text + ".")
        return EXIT_PROBLEMS if (t.conflicts or t.failed) else EXIT_OK


def _run(args: argparse.Namespace, out: TextIO) -> int:
    settings = resolve_settings(args)
    try:
        return _run_with(settings, args, out)
    except Fatal as exc:
        raise Fatal(exc.status, one_line(str(exc), settings.url)) from None


def _run_with(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    mode = Mode.CHECK if args.check else Mode.DRY_RUN if args.dry_run else Mode.CREATE
    title = {
        Mode.CREATE: "create missing indexes",
        Mode.DRY_RUN: "dry run (nothing is written)",
        Mode.CHECK: "check (nothing is written)",
    }[mode]
    out.write(f"{PROG}: {title} on {settings.where} (mongo_url from {settings.url_source})\n")
    out.write(f"TTL (retention) indexes: {settings.retention_reason}\n")
    try:
        db = get_database(settings.url, settings.database, settings.timeout_seconds)
        db.command("ping")  # fails within the server selection timeout
        runner = Runner(
            db,
            settings,
            mode,
            drop_conflicting=args.drop_conflicting,
            progress_interval=args.progress_interval,
            out=out,
        )
        for prefix in runner.prefixes(args.all_apps):
            runner.report_apps(prefix, args.app_id)
            for logical in schema.ALL_COLLECTIONS:
                runner.process(prefix, logical)
        return runner.summary()
    except (PyMongoError, ConnectionError) as exc:
        raise _mongo_fatal(exc, settings) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pynenc-mongo-setup-indexes`` and ``python -m pynenc_mongo.cli``.

    :param Sequence[str] | None argv: arguments (default ``sys.argv[1:]``).
    :return: the exit status (see the module docstring).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.check and args.drop_conflicting:
        parser.error("--drop-conflicting cannot be combined with --check (it changes nothing)")
    url_for_scrub = args.url or os.environ.get("PYNENC__MONGO_URL", "")
    try:
        return _run(args, sys.stdout)
    except Fatal as exc:
        return _fail(exc.status, str(exc), url_for_scrub)
    except MongoUrlError as exc:
        return _fail(EXIT_USAGE, str(exc), url_for_scrub)
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPTED, "interrupted", "")
    except Exception as exc:  # noqa: BLE001 - one line for operators, never a traceback
        return _fail(EXIT_PROBLEMS, f"unexpected {type(exc).__name__}: {exc}", url_for_scrub)


def _fail(status: int, message: str, url: str) -> int:
    sys.stdout.flush()
    sys.stderr.write(f"{PROG}: error: {one_line(message, url)}\n")
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
