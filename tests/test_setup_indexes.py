"""``pynenc-mongo-setup-indexes`` (``pynenc_mongo.cli``) and the index comparison."""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bson.int64 import Int64
from index_helpers import Layout, make_layout
from pymongo.errors import OperationFailure
from pynenc import Pynenc

from pynenc_mongo import cli, schema
from pynenc_mongo.indexes import IndexState, inspect_collection

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "s3cret-Pa55"
ALL = len([s for s in schema.INDEXES if not s.retention_only])
TTL = len([s for s in schema.INDEXES if s.retention_only])


@pytest.fixture
def layout(mongo_url: str) -> Iterator[Layout]:
    yield from make_layout(mongo_url)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the script in-process: (exit status, stdout, stderr)."""
    status = cli.main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def seed(make_app: Callable[..., Pynenc], layout: Layout) -> Pynenc:
    """An app with data under ``layout`` and no index (as before an operator runs the script).

    The data is written with the indexes (without its unique index the results upsert
    is refused, issue 16 item 12), then every index but ``_id_`` is dropped.
    """
    app = make_app(collection_prefix=layout.prefix)
    backend: Any = app.state_backend
    backend.set_result("inv-1", "42")
    from pynenc.app_info import AppInfo

    backend.store_app_info(AppInfo.from_app(app))
    for name in layout.existing_collections():
        layout.db[name].drop_indexes()
    return app


# ---------------------------------------------------------------------------
# IndexSpec comparison
# ---------------------------------------------------------------------------
def test_index_spec_differences_follow_list_indexes_shapes() -> None:
    """Directions as ``1.0``/``Int64``, key documents or pair lists, absent options:
    equal definitions compare equal; each real difference is named."""
    spec = next(s for s in schema.INDEXES if s.collection == schema.RESULTS)
    same = {"name": "app_invocation", "key": {"app_id": 1.0, "invocation_id": Int64(1)},
            "unique": True, "v": 2, "background": True}  # fmt: skip
    assert spec.differences(same) == []
    as_pairs = {"key": [("app_id", 1), ("invocation_id", 1)], "unique": True}
    assert spec.differences(as_pairs) == []
    other = {"key": {"invocation_id": 1, "app_id": 1}, "unique": False, "hidden": True}
    diffs = spec.differences(other)
    assert diffs[0] == (
        "keys: expected {app_id: 1, invocation_id: 1}, found {invocation_id: 1, app_id: 1}"
    )
    assert "unique: expected True, found False" in diffs
    assert "hidden: expected False, found True" in diffs
    collated = dict(same, collation={"locale": "fr", "strength": 2})
    assert spec.differences(collated) == [
        "collation: expected None, found {'locale': 'fr', 'strength': 2}"
    ]
    assert spec.differences(collated, {"locale": "fr", "strength": 2}) == []  # inherited
    ttl = next(s for s in schema.INDEXES if s.retention_only)
    assert ttl.differences({"key": {"expire_at": 1}, "expireAfterSeconds": 3600}) == [
        "expireAfterSeconds: expected 0, found 3600"
    ]


def test_layout_prefixes_finds_every_layout() -> None:
    names = ["pynenc_app_infos", "pynenc_invocations", "pynenc_workflow_sub_invocations",
             "x_invocations", "x_history", "other", "y_invocations"]  # fmt: skip
    assert schema.layout_prefixes(names) == ["pynenc_", "x_"]


# ---------------------------------------------------------------------------
# The script on the embedded store (or the test server)
# ---------------------------------------------------------------------------
def test_dry_run_prints_the_plan_and_writes_nothing(
    layout: Layout, make_app: Callable[..., Pynenc], capsys: pytest.CaptureFixture[str]
) -> None:
    seed(make_app, layout)
    before = (layout.existing_collections(), layout.snapshot())
    status, out, err = run(capsys, *layout.args("--dry-run"))
    assert status == cli.EXIT_OK and err == ""
    assert "dry run (nothing is written)" in out
    collections = len(schema.ALL_COLLECTIONS)
    assert out.count("would create") == ALL + collections + 1  # per index, collection, summary
    assert f"{layout.prefix}results (1 document): would create 1" in out
    assert f"{layout.prefix}history (does not exist yet): would create 2" in out
    assert f"dry run: would create {ALL} indexes; 0 present (nothing was changed)." in out
    assert (layout.existing_collections(), layout.snapshot()) == before


def test_create_then_second_run_changes_nothing_and_says_so(
    layout: Layout, make_app: Callable[..., Pynenc], capsys: pytest.CaptureFixture[str]
) -> None:
    seed(make_app, layout)
    status, out, _ = run(capsys, *layout.args())
    assert status == cli.EXIT_OK
    assert f"created {ALL} indexes; 0 were already present." in out
    assert f"{layout.prefix}invocations (does not exist yet): create 6" in out
    for logical in schema.ALL_COLLECTIONS:
        report = inspect_collection(layout.collection(logical), logical, retention=False)
        assert [s.state for s in report.statuses] == [IndexState.PRESENT] * len(report.statuses)
    first = layout.snapshot()
    status, out, _ = run(capsys, *layout.args())
    assert status == cli.EXIT_OK
    assert (
        f"nothing to do: all {ALL} indexes present in {len(schema.ALL_COLLECTIONS)} collections "
        "(nothing was changed)." in out
    )
    assert f"{layout.prefix}invocations (0 documents): all 6 indexes present" in out
    assert "create" not in out.replace("create missing indexes", "")
    assert layout.snapshot() == first


def test_check_mode_lists_what_is_missing_and_changes_nothing(
    layout: Layout, make_app: Callable[..., Pynenc], capsys: pytest.CaptureFixture[str]
) -> None:
    seed(make_app, layout)
    before = (layout.existing_collections(), layout.snapshot())
    status, out, _ = run(capsys, *layout.args("--check"))
    assert status == cli.EXIT_PROBLEMS
    assert out.count("    missing ") == ALL
    assert "missing       app_task {app_id: 1, invocation.call_id.task_id.key: 1}" in out
    assert f"check failed: {ALL} missing, 0 different, 0 present (nothing was changed)." in out
    assert (layout.existing_collections(), layout.snapshot()) == before
    assert run(capsys, *layout.args())[0] == cli.EXIT_OK
    status, out, _ = run(capsys, *layout.args("--check"))
    assert status == cli.EXIT_OK
    assert f"check passed: all {ALL} indexes present (nothing was changed)." in out
    status, out, _ = run(capsys, *layout.args("--check", "--retention"))
    assert status == cli.EXIT_PROBLEMS
    assert f"check failed: {TTL} missing, 0 different, {ALL} present" in out


def test_conflict_same_name_other_options_is_reported_and_replaced_only_when_told(
    layout: Layout, capsys: pytest.CaptureFixture[str]
) -> None:
    results = layout.collection(schema.RESULTS)
    results.create_index([("app_id", 1), ("invocation_id", 1)], name="app_invocation")
    status, out, err = run(capsys, *layout.args())
    assert status == cli.EXIT_PROBLEMS and err == ""
    assert (
        "conflict      app_invocation: an index named 'app_invocation' exists with another "
        "definition: unique: expected True, found False"
    ) in out
    assert "to fix: rerun with --drop-conflicting" in out
    assert f"db.getCollection('{results.name}').dropIndex('app_invocation')" in out
    assert f"created {ALL - 1} indexes; 0 were already present; 1 in conflict left as is" in out
    assert not {i["name"]: i for i in results.list_indexes()}["app_invocation"].get("unique")

    status, out, _ = run(capsys, *layout.args("--check"))
    assert status == cli.EXIT_PROBLEMS
    assert f"check failed: 0 missing, 1 different, {ALL - 1} present" in out

    status, out, _ = run(capsys, *layout.args("--drop-conflicting"))
    assert status == cli.EXIT_OK
    assert "    drop          app_invocation: an index named 'app_invocation'" in out
    assert "created 1 indexes, dropped 1 in conflict" in out
    assert {i["name"]: i for i in results.list_indexes()}["app_invocation"]["unique"] is True
    assert run(capsys, *layout.args("--check"))[0] == cli.EXIT_OK


def test_conflict_same_keys_other_name_is_reported_and_kept_without_the_flag(
    layout: Layout, capsys: pytest.CaptureFixture[str]
) -> None:
    invocations = layout.collection(schema.INVOCATIONS)
    keys = [("app_id", 1), ("invocation.call_id.task_id.key", 1)]
    invocations.create_index(keys, name="ops_by_task")
    history = layout.collection(schema.HISTORY)
    history.create_index([("status", 1)], name="ops_status")
    status, out, _ = run(capsys, *layout.args())
    assert status == cli.EXIT_PROBLEMS
    assert (
        "conflict      app_task: the same keys {app_id: 1, invocation.call_id.task_id.key: 1} "
        "are indexed under the name 'ops_by_task' (same options, so queries are served)"
    ) in out
    assert "rerun with --drop-conflicting to drop 'ops_by_task' and create 'app_task'" in out
    assert "other indexes left alone: ops_status" in out
    assert layout.index_names(schema.INVOCATIONS) >= {"ops_by_task"}
    assert "app_task" not in layout.index_names(schema.INVOCATIONS)

    before = layout.snapshot()
    status, out, _ = run(capsys, *layout.args("--drop-conflicting", "--dry-run"))
    assert status == cli.EXIT_OK
    assert "would drop    ops_by_task" in out
    assert "would create  app_task" in out
    assert layout.snapshot() == before

    status, out, _ = run(capsys, *layout.args("--drop-conflicting"))
    assert status == cli.EXIT_OK
    assert "ops_by_task" not in layout.index_names(schema.INVOCATIONS)
    assert "app_task" in layout.index_names(schema.INVOCATIONS)
    assert "ops_status" in layout.index_names(schema.HISTORY)  # never dropped


def test_unique_index_over_duplicates_fails_alone_and_is_reported(
    layout: Layout, capsys: pytest.CaptureFixture[str]
) -> None:
    invocations = layout.collection(schema.INVOCATIONS)
    invocations.insert_many([{"app_id": "a", "invocation_id": "dup"} for _ in range(2)])
    status, out, _ = run(capsys, *layout.args())
    assert status == cli.EXIT_PROBLEMS
    assert "FAILED        " in out and ".app_invocation: code 11000" in out
    assert "holds duplicates of a unique key" in out
    assert "created       5 in" in out  # the others of the collection were built
    assert f"created {ALL - 1} indexes; 0 were already present; 1 failed." in out


def test_retention_from_flag_or_configuration(
    layout: Layout, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    status, out, _ = run(capsys, *layout.args("--retention", "--dry-run"))
    assert "TTL (retention) indexes: included (--retention)" in out
    assert f"would create {ALL + TTL} indexes" in out
    monkeypatch.setenv("PYNENC__MONGO_RETENTION_DAYS", "3")
    status, out, _ = run(capsys, *layout.args())
    assert status == cli.EXIT_OK
    assert "TTL (retention) indexes: included (mongo_retention_days is 3)" in out
    assert f"created {ALL + TTL} indexes" in out
    assert "history_ttl" in layout.index_names(schema.HISTORY)


def test_all_apps_and_app_id(
    layout: Layout, make_app: Callable[..., Pynenc], capsys: pytest.CaptureFixture[str]
) -> None:
    app = seed(make_app, layout)
    second = Layout(layout.url, layout.database, layout.prefix + "b_")
    other = seed(make_app, second)
    try:
        status, out, _ = run(capsys, *layout.args("--all-apps"))
        assert status == cli.EXIT_OK
        assert f"prefix {layout.prefix!r}: apps with stored app info: {app.app_id}" in out
        assert f"prefix {second.prefix!r}: apps with stored app info: {other.app_id}" in out
        for where in (layout, second):
            assert "app_task" in where.index_names(schema.INVOCATIONS)
        status, out, _ = run(capsys, *layout.args("--app-id", app.app_id, "--check"))
        assert f"app {app.app_id!r}: found (app info stored)" in out
        status, out, _ = run(capsys, *layout.args("--app-id", "nobody", "--check"))
        assert status == cli.EXIT_OK
        assert "app 'nobody': not found under prefix" in out
    finally:
        for name in second.existing_collections():
            second.db.drop_collection(name)


# ---------------------------------------------------------------------------
# Failures: fast, one line, no password
# ---------------------------------------------------------------------------
def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_fails_within_the_timeout_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = _unused_port()
    url = f"mongodb://ops:{PASSWORD}@127.0.0.1:{port}/?authSource=admin"
    started = time.monotonic()
    status, out, err = run(capsys, "--url", url, "--timeout", "1", "--check")
    elapsed = time.monotonic() - started
    assert status == cli.EXIT_UNAVAILABLE
    assert elapsed < 1 + 2.5
    assert err.count("\n") == 1 and err.startswith("pynenc-mongo-setup-indexes: error: ")
    assert f"127.0.0.1:{port}" in err and "is not reachable" in err
    assert err.rstrip().endswith("(server selection timeout 1 s)")
    assert PASSWORD not in err + out and "Traceback" not in err
    assert "ops:***@" in out  # the plan header names the target, redacted


def test_unreachable_server_as_a_process(tmp_path: Path) -> None:
    """The installed entry point, end to end: exit status 3, one line, no traceback."""
    port = _unused_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYNENC")}
    url = f"mongodb://ops:{PASSWORD}@127.0.0.1:{port}"
    proc = subprocess.run(
        [sys.executable, "-m", "pynenc_mongo.cli", "--url", url, "--timeout", "0.5"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == cli.EXIT_UNAVAILABLE, proc.stderr
    assert proc.stderr.count("\n") == 1 and f"127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr and PASSWORD not in proc.stderr + proc.stdout


class _FakeDb:
    """Stands in for a ``Database`` whose server answers with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def command(self, name: str) -> Any:
        raise self.error


def test_refused_credentials_exit_3_naming_the_host_not_the_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    error = OperationFailure(f"Authentication failed. {PASSWORD}", 18, {"codeName": "AuthFailed"})
    monkeypatch.setattr(cli, "get_database", lambda *args: _FakeDb(error))
    status, out, err = run(capsys, "--url", f"mongodb://ops:{PASSWORD}@db1.example:27017/app")
    assert status == cli.EXIT_UNAVAILABLE
    assert "mongodb://ops:***@db1.example:27017/app" in err and "refused the credentials" in err
    assert PASSWORD not in err + out and err.count("\n") == 1


def test_not_authorized_exit_4_naming_the_privileges(
    layout: Layout, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any) -> Any:
        raise OperationFailure("not authorized on db to execute command listIndexes", 13)

    monkeypatch.setattr(cli, "inspect_collection", refuse)
    status, _, err = run(capsys, *layout.args("--check"))
    assert status == cli.EXIT_UNAUTHORIZED
    assert "not authorized" in err and "listIndexes" in err and "createIndex" in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--url", "http://db1"], "--url: mongo_url 'http://db1': expected a URL starting with"),
        (
            ["--url", f"mongodb://ops:{PASSWORD}@db1/?bogusOption=1"],
            "URI option 'bogusOption'='1' is not accepted",
        ),
        (["--database", "a.b"], "--database: mongo_database: expected a MongoDB database name"),
        (["--prefix", "$x"], "--prefix: mongo_collection_prefix: expected a string without '$'"),
        (["--config", "/nonexistent/pynenc.yaml"], "--config '/nonexistent/pynenc.yaml': no such"),
    ],
)
def test_bad_input_exits_2_naming_the_value(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(capsys, *args)
    assert status == cli.EXIT_USAGE
    assert expected in err and PASSWORD not in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--timeout", "-1"], "expected a number of seconds > 0, got '-1'"),
        (["--timeout", "soon"], "got 'soon'"),
        (["--app-id", " "], "expected a non-empty value"),
        (["--check", "--dry-run"], "not allowed with argument"),
        (["--check", "--drop-conflicting"], "--drop-conflicting cannot be combined with --check"),
        (["--all-apps", "--app-id", "x"], "not allowed with argument"),
    ],
)
def test_bad_arguments_are_usage_errors(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code == cli.EXIT_USAGE
    assert expected in capsys.readouterr().err


def test_settings_come_from_the_pynenc_configuration(
    layout: Layout, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Without --url/--database/--prefix the script reads the pynenc config file."""
    config = tmp_path / "pynenc.json"
    settings = {"mongo_url": layout.url, "mongo_database": layout.database}
    config.write_text(json.dumps(dict(settings, mongo_collection_prefix=layout.prefix)))
    status, out, _ = run(capsys, "--config", str(config))
    assert status == cli.EXIT_OK
    assert f"database={layout.database!r}" in out and f"prefix {layout.prefix!r}" in out
    assert "app_task" in layout.index_names(schema.INVOCATIONS)


# ---------------------------------------------------------------------------
# Progress while MongoDB builds
# ---------------------------------------------------------------------------
def test_progress_lines_while_a_build_runs() -> None:
    lines: list[str] = []

    def slow_build() -> str:
        time.sleep(0.35)
        return "built"

    result = cli.run_with_progress(slow_build, lambda: "45% (450/1,000)", lines.append, 0.1)
    assert result == "built"
    assert len(lines) >= 2 and lines[0].startswith("building (") and "45% (450/1,000)" in lines[0]

    def failing() -> None:
        raise OperationFailure("boom", 11000)

    with pytest.raises(OperationFailure, match="boom"):
        cli.run_with_progress(failing, lambda: None, lines.append, 0.1)


def test_describe_build_progress_reads_current_op_documents() -> None:
    scanning = {
        "msg": "Index Build: scanning collection Index Build: scanning collection: 450/1000 45%",
        "progress": {"done": 450, "total": 1000},
        "command": {"createIndexes": "pynenc_history"},
    }
    assert cli.describe_build_progress([scanning]) == "45% (450/1,000) scanning collection"
    draining = {"msg": "Index Build: draining writes received during build"}
    assert cli.describe_build_progress([draining]) == draining["msg"]
    assert cli.describe_build_progress([{"command": {"createIndexes": "x"}}]) is None


def test_build_progress_gives_up_quietly_where_current_op_is_missing(layout: Layout) -> None:
    """mongomock has no ``$currentOp``; a server has no build running: None, no error."""
    progress = cli.BuildProgress(layout.collection(schema.HISTORY))
    assert progress.poll() is None
    assert progress.poll() is None


def test_create_prints_progress_while_mongodb_builds(
    layout: Layout, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build that outlasts ``--progress-interval`` prints ``building (N s)`` lines."""
    real = cli.create_indexes

    def slow(collection: Any, specs: Any) -> list[str]:
        time.sleep(0.25)
        return real(collection, specs)

    monkeypatch.setattr(cli, "create_indexes", slow)
    status, out, _ = run(capsys, *layout.args("--progress-interval", "0.1"))
    assert status == cli.EXIT_OK
    assert out.count("                  building (") >= 10  # >= 1 per collection
    assert f"created {ALL} indexes" in out


@pytest.mark.real_server
def test_current_op_pipeline_is_accepted_by_the_server(layout: Layout) -> None:
    """The ``$currentOp`` pipeline the progress display sends is valid on MongoDB."""
    progress = cli.BuildProgress(layout.collection(schema.HISTORY))
    assert progress.poll() is None  # no build running
    assert progress.enabled


@pytest.mark.real_server
def test_mongodb_refuses_the_same_keys_under_another_name(layout: Layout) -> None:
    """Why ``other_name`` is a conflict (mongomock accepts the second index)."""
    results = layout.collection(schema.RESULTS)
    results.create_index([("app_id", 1), ("invocation_id", 1)], name="ops_results")
    with pytest.raises(OperationFailure) as exc:
        results.create_index([("app_id", 1), ("invocation_id", 1)], name="app_invocation")
    assert exc.value.code in (85, 86)


# ---------------------------------------------------------------------------
# Packaging
# ---------------------------------------------------------------------------
def test_console_script_and_wrapper_are_installed() -> None:
    scripts = importlib.metadata.entry_points(group="console_scripts")
    [entry] = [e for e in scripts if e.name == "pynenc-mongo-setup-indexes"]
    assert entry.value == "pynenc_mongo.cli:main"
    wrapper = ROOT / "scripts" / "setup_indexes"
    assert os.access(wrapper, os.X_OK)
    assert subprocess.run(["bash", "-n", str(wrapper)], check=False).returncode == 0
    assert 'python" -m pynenc_mongo.cli' in wrapper.read_text()


def test_one_line_hides_every_secret_of_the_url() -> None:
    url = (
        f"mongodb://ops:{PASSWORD}%21@db1/?tls=true"
        "&tlsCertificateKeyFilePassword=k3y-secret&authSource=admin"
    )
    text = f"failed: {PASSWORD}! {PASSWORD}%21 k3y-secret admin\nsecond line"
    assert cli.one_line(text, url) == "failed: *** *** *** admin second line"


def test_misspelt_setting_in_the_environment_is_refused_naming_the_closest(
    layout: Layout, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The script reads the backend's sources, so it refuses what the backend refuses
    (the fresh-clone review: ``PYNENC__MONGO_COLECTION_PREFIX`` passed the check)."""
    monkeypatch.setenv("PYNENC__MONGO_COLECTION_PREFIX", "other_")
    status, out, err = run(capsys, *layout.args("--check"))
    assert status == cli.EXIT_USAGE and out == ""
    assert "mongo_colection_prefix: unknown pynenc-mongo setting" in err
    assert "did you mean 'mongo_collection_prefix'" in err
