"""Hostile and odd input: regex characters, operator dicts, odd keys and ids,
non-BSON config values, and reads of things that do not exist."""

from __future__ import annotations

import enum
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
import pytest
from _fakes import build_raw_app, make_dtos, raw, raw_app_fixture, workflow_identity
from pymongo.errors import OperationFailure
from run_settings import RUN_DATABASE

from pynenc_mongo import schema
from pynenc_mongo.errors import MongoLimitError
from pynenc_mongo.state_backend import MongoStateBackend

#: Longest pattern the server-side stand-in accepts (PCRE's compiled-pattern
#: limit is about 64K code units; MongoDB refuses longer patterns).
FAKE_REGEX_MAX = 32 * 1024


def _ctx(runner_id: str, parent: Any = None) -> Any:
    from pynenc.runner.runner_context import RunnerContext

    return RunnerContext(runner_cls="TestRunner", runner_id=runner_id, parent_ctx=parent)


class RegexCheckingCollection:
    """Refuses ``$regex`` patterns the way MongoDB does: NUL bytes are not allowed
    in a regular expression, and over-long patterns are too large to compile."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def find(self, filter_: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        for value in filter_.values():
            if isinstance(value, dict) and "$regex" in value:
                pattern = value["$regex"]
                if "\x00" in pattern:
                    raise OperationFailure(
                        "Regular expression cannot contain an embedded null byte", 51091
                    )
                if len(pattern) > FAKE_REGEX_MAX:
                    raise OperationFailure("Regular expression is invalid: too large", 51091)
        return self._inner.find(filter_, *args, **kwargs)


@pytest.fixture
def backend_with_runners(make_app: Any, monkeypatch: Any) -> tuple[MongoStateBackend, list[str]]:
    backend = make_app().state_backend
    runner_ids = [
        "plain-runner",
        "a.b",
        "axb",
        "call(1)",
        "star*x",
        "back\\slash",
        "brackets[0]+?{2}|^$",
        "nul\x00inside",
        "ünï-cødé-😀",
        "a" * 40 + "b",
        "long-" + "z" * 50_000,
    ]
    for runner_id in runner_ids:
        backend.store_runner_context(_ctx(runner_id))
    original = backend.store.collection
    monkeypatch.setattr(
        backend.store, "collection", lambda logical: RegexCheckingCollection(original(logical))
    )
    return backend, runner_ids


@pytest.mark.parametrize(
    "partial",
    [
        ".",
        "a.b",
        "(",
        "call(1)",
        "*",
        "\\",
        "[0]+?{2}|^$",
        "ünï",
        "😀",
        "\x00",
        "nul\x00in",
        "(a+)+$",
        "a" * 30 + "b",
        "z" * 40_000,
        "",
        "no such runner",
    ],
)
def test_runner_context_search_is_a_literal_substring_match(
    backend_with_runners: tuple[MongoStateBackend, list[str]], partial: str
) -> None:
    backend, runner_ids = backend_with_runners
    started = time.monotonic()
    found = sorted(ctx.runner_id for ctx in backend.get_matching_runner_contexts(partial))
    assert found == sorted(r for r in runner_ids if partial in r)
    assert time.monotonic() - started < 5


def test_runner_context_search_refuses_non_strings(make_app: Any) -> None:
    backend = make_app().state_backend
    with pytest.raises(TypeError, match="partial_id"):
        list(backend.get_matching_runner_contexts({"$ne": None}))  # type: ignore[arg-type]


def test_operator_dicts_as_ids_are_refused_not_interpreted(make_app: Any) -> None:
    """An id that is a dict would be a query operator: ``{"$ne": None}`` matches
    another invocation's documents. Every read refuses it instead."""
    backend = make_app().state_backend
    inv, call = make_dtos("victim", {"secret": '"victim data"'}, parent="victim-parent")
    backend._upsert_invocations([(inv, call)])
    backend._set_result("victim", '"victim result"')
    backend._set_exception("victim", '"victim exception"')
    backend.store_runner_context(_ctx("victim-runner"))
    backend.store_workflow_sub_invocation("victim-wf", "victim-sub")
    backend.set_workflow_data(workflow_identity("victim-wf"), "k", "v")
    hostile: Any = {"$ne": None}
    calls = [
        lambda: backend._get_result(hostile),
        lambda: backend._get_exception(hostile),
        lambda: backend._get_invocation(hostile),
        lambda: backend.get_runner_context(hostile),
        lambda: list(backend.get_child_invocations(hostile)),
        lambda: list(backend.get_workflow_sub_invocations(hostile)),
        lambda: backend.get_workflow_data(workflow_identity(hostile), "k"),
        lambda: list(backend.get_invocation_ids_by_workflow(workflow_id=hostile)),
        lambda: backend._set_result(hostile, '"overwrite"'),
    ]
    for call_ in calls:
        with pytest.raises(TypeError):  # "expected a str" (or pynenc's own cache lookup)
            call_()
    assert backend._get_result("victim") == '"victim result"'


ODD_STRINGS = [
    "a.b",
    "$x",
    "$",
    ".",
    "..",
    "a$b.c",
    "",
    "%",
    "%2E",
    "%u0041",
    "k",
    "\x00",
    "nul\x00key",
    "日本語",
    "😀 emoji",
    "lone \ud800 surrogate",
    "x" * 100_000,
]


def test_workflow_data_odd_keys_and_values_round_trip(make_raw_app: Any) -> None:
    app = make_raw_app()
    backend = app.state_backend
    wf = workflow_identity("wf.$odd")
    for i, key in enumerate(ODD_STRINGS):
        backend.set_workflow_data(wf, key, {"i": i, "text": ODD_STRINGS[-1 - i]})
    reader = make_raw_app(app_id=app.app_id).state_backend
    for i, key in enumerate(ODD_STRINGS):
        assert reader.get_workflow_data(wf, key) == {"i": i, "text": ODD_STRINGS[-1 - i]}
    assert reader.get_workflow_data(wf, "a%2Eb") is None  # escapes never collide with keys


def test_workflow_data_key_of_any_length_round_trips_in_a_small_document(
    make_app: Any,
) -> None:
    """A 9 MiB key (longer than a field name may sensibly be) is named by its
    SHA-256: it round-trips and its bucket stays small; a key differing in its last
    character is another key."""
    backend = make_app().state_backend
    wf = workflow_identity("wf")
    key = "k" * (9 * 1024 * 1024)
    backend.set_workflow_data(wf, key, 1)
    backend.set_workflow_data(wf, key[:-1] + "j", 2)
    assert backend.get_workflow_data(wf, key) == 1
    assert backend.get_workflow_data(wf, key[:-1] + "j") == 2
    [bucket] = raw(backend, schema.WORKFLOW_DATA).find({"app_id": backend.app_id})
    assert len(bson.encode(bucket)) < 4096


@pytest.mark.parametrize(
    "name", ["mod.with.dots", "$dollar", "ünï.cødé", "😀", "a$b.c", "x" * 200_000]
)
def test_odd_task_names_and_ids_round_trip(make_app: Any, name: str) -> None:
    app = make_app(app_id=f"app.$-{name[:20]}")
    backend = app.state_backend
    inv_id = f"inv.{name}"
    inv, call = make_dtos(inv_id, {name: f'"{name}"'}, module=name, func_name=f"f_{name}")
    backend._upsert_invocations([(inv, call)])
    backend.store_runner_context(_ctx(f"runner.{name}"))
    backend._set_result(inv_id, f'"{name}"')
    reader = make_app(app_id=app.app_id).state_backend
    inv_back, call_back = reader._get_invocation(inv_id)
    assert inv_back.call_id.task_id.module == name
    assert call_back.serialized_arguments == {name: f'"{name}"'}
    assert reader._get_result(inv_id) == f'"{name}"'
    assert reader.get_runner_context(f"runner.{name}").runner_id == f"runner.{name}"
    assert reader.get_app_info().app_id == app.app_id


def test_ids_too_large_for_a_document_are_refused_naming_the_limit(make_app: Any) -> None:
    backend = make_app().state_backend
    huge = "t" * (17 * 1024 * 1024)
    inv, call = make_dtos("inv-huge-task", {}, func_name=huge)
    with pytest.raises(MongoLimitError, match="16777216 bytes"):
        backend._upsert_invocations([(inv, call)])
    with pytest.raises(MongoLimitError, match="16777216 bytes"):
        backend.store_runner_context(_ctx(huge))
    assert raw(backend, schema.INVOCATIONS).count_documents({"app_id": backend.app_id}) == 0


def test_ids_that_are_not_valid_utf8_are_refused_clearly(make_app: Any) -> None:
    backend = make_app().state_backend
    inv, call = make_dtos("inv-\ud800", {})
    with pytest.raises(MongoLimitError, match="not valid UTF-8"):
        backend._upsert_invocations([(inv, call)])


make_raw_app = raw_app_fixture()


class Color(enum.Enum):
    RED = "red"


def test_app_info_with_non_bson_config_values_round_trips(mongo_url: str) -> None:
    app = build_raw_app(mongo_url, RUN_DATABASE)
    backend = app.state_backend
    from pynenc.app_info import AppInfo

    config = {
        "trigger_task_modules": {"b.mod", "a.mod"},
        "frozen": frozenset({1, 2}),
        "pair": (1, "two", (3,)),
        "blob": b"\x00\xffbytes",
        "nested": {1: "int key", "a.b": {"$x": [1, {2, 3}]}},
        "huge_int": 2**70,
        "when": datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        "delta": timedelta(days=2, microseconds=5),
        "color": Color.RED,
        "lone": "bad \ud800 text",
    }
    info = AppInfo(app_id=app.app_id, module="tests", config_values=dict(config))
    backend.store_app_info(info)
    back = backend.get_app_info().config_values
    expected = dict(config)
    expected["color"] = "red"  # enums come back as their value
    assert back == expected
    other = {"path": Path("/tmp/x")}
    backend.store_app_info(AppInfo(app_id=app.app_id, module="tests", config_values=other))
    assert backend.get_app_info().config_values == {"path": repr(Path("/tmp/x"))}
    backend.purge()


def test_reading_what_does_not_exist_gives_the_documented_result(make_app: Any) -> None:
    from pynenc.exceptions import InvocationNotFoundError

    app = make_app()
    backend = app.state_backend
    with pytest.raises(InvocationNotFoundError):
        backend.get_invocation("unknown")
    with pytest.raises(KeyError):
        backend._get_result("unknown")
    with pytest.raises(KeyError):
        backend._get_exception("unknown")
    inv, call = make_dtos("known", {})
    backend._upsert_invocations([(inv, call)])
    with pytest.raises(KeyError):
        backend._get_result("known")  # result not yet set
    assert backend.get_runner_context("unknown") is None
    assert backend.get_runner_contexts(["unknown", "other"]) == []
    assert backend.get_workflow_data(workflow_identity("unknown"), "k", "dflt") == "dflt"
    backend.set_workflow_data(workflow_identity("wf"), "present", 1)
    assert backend.get_workflow_data(workflow_identity("wf"), "absent", 7) == 7
    assert backend.get_history("unknown") == []
    assert list(backend.get_child_invocations("unknown")) == []
    assert list(backend.get_workflow_sub_invocations("unknown")) == []
    assert list(backend.get_matching_runner_contexts("unknown")) == []
    stranger = make_app().state_backend
    stranger.purge()  # pynenc stored its app info at creation; now there is none
    with pytest.raises(KeyError):
        stranger.get_app_info()


def test_runner_context_parent_loop_does_not_recurse_forever(make_app: Any) -> None:
    backend = make_app().state_backend
    contexts = raw(backend, schema.RUNNER_CONTEXTS)
    base = {"app_id": backend.app_id, "runner_cls": "R", "pid": 1, "hostname": "h", "thread_id": 1}
    contexts.insert_many(
        [
            {**base, "runner_id": "A", "parent_runner_id": "B"},
            {**base, "runner_id": "B", "parent_runner_id": "A"},
            {**base, "runner_id": "self", "parent_runner_id": "self"},
        ]
    )
    ctx = backend.get_runner_context("A")
    assert ctx is not None and ctx.parent_ctx is not None
    assert ctx.parent_ctx.runner_id == "B" and ctx.parent_ctx.parent_ctx is None
    own = backend.get_runner_context("self")
    assert own is not None and own.parent_ctx is None


@pytest.mark.real_server
def test_regex_characters_on_the_real_server(make_app: Any) -> None:
    backend = make_app().state_backend
    for runner_id in ["a.b", "axb", "nul\x00x", "p" * 70_000]:
        backend.store_runner_context(_ctx(runner_id))
    assert [c.runner_id for c in backend.get_matching_runner_contexts("a.b")] == ["a.b"]
    assert [c.runner_id for c in backend.get_matching_runner_contexts("\x00")] == ["nul\x00x"]
    assert len(list(backend.get_matching_runner_contexts("p" * 60_000))) == 1
    assert re.escape("a.b") == "a\\.b"
