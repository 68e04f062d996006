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

The package: :mod:`.options` (exit statuses, arguments, settings, one-line
messages), :mod:`.progress` (index build progress from ``$currentOp``), and here
the run itself (:class:`Runner`, :func:`main`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure, PyMongoError

from pynenc_mongo import schema
from pynenc_mongo.cli.options import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_UNAUTHORIZED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    MAX_APPS_SHOWN,
    PROG,
    Fatal,
    Mode,
    Settings,
    build_parser,
    mongo_fatal,
    one_line,
    resolve_settings,
)
from pynenc_mongo.cli.progress import BuildProgress, describe_build_progress, run_with_progress
from pynenc_mongo.client import get_database
from pynenc_mongo.indexes import (
    UNAUTHORIZED,
    CollectionReport,
    IndexState,
    IndexStatus,
    create_indexes,
    inspect_collection,
)
from pynenc_mongo.urls import MongoUrlError


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
        raise mongo_fatal(exc, settings) from None


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


__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PROBLEMS",
    "EXIT_UNAUTHORIZED",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "BuildProgress",
    "Mode",
    "Runner",
    "Settings",
    "build_parser",
    "create_indexes",
    "describe_build_progress",
    "get_database",
    "inspect_collection",
    "main",
    "one_line",
    "resolve_settings",
    "run_with_progress",
]
