"""Large values: results, exceptions, arguments and workflow data of any size.

Every test here runs with :class:`SizeLimitedCollection` where it matters, so a
document over MongoDB's 16 MiB limit fails on mongomock as it would on a server.
"""

from __future__ import annotations

import base64
import os
import threading
from typing import Any

import pytest
from _fakes import (
    MAX_BSON,
    install_size_limit,
    largest_document,
    make_dtos,
    raw,
    raw_app_fixture,
    workflow_identity,
)

from pynenc_mongo import schema, values
from pynenc_mongo.state_backend import MongoStateBackend

make_raw_app = raw_app_fixture()


def _text(n_bytes: int, seed: int = 0) -> str:
    """An incompressible ASCII string of exactly ``n_bytes`` bytes."""
    chunk = base64.b64encode(os.urandom(n_bytes * 3 // 4 + 3)).decode()
    return (chunk * (1 + n_bytes // max(len(chunk), 1)))[:n_bytes] if n_bytes else ""


def _refs(value: Any) -> list[str]:
    """value_ids referenced anywhere inside a stored document."""
    found: list[str] = []
    if isinstance(value, dict):
        if set(value) >= {"value_id", "pieces", "codec"}:
            found.append(value["value_id"])
        for item in value.values():
            found.extend(_refs(item))
    elif isinstance(value, list):
        for item in value:
            found.extend(_refs(item))
    return found


def referenced_ids(backend: MongoStateBackend) -> set[str]:
    ids: set[str] = set()
    for logical in (schema.INVOCATIONS, schema.RESULTS, schema.EXCEPTIONS, schema.WORKFLOW_DATA):
        for doc in raw(backend, logical).find({"app_id": backend.app_id}):
            ids.update(_refs(doc))
    return ids


def piece_ids(backend: MongoStateBackend) -> set[str]:
    return set(raw(backend, schema.VALUE_PIECES).distinct("value_id", {"app_id": backend.app_id}))


def assert_no_orphans(backend: MongoStateBackend) -> None:
    assert piece_ids(backend) == referenced_ids(backend)


@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 1025, 5000, 300_000])
def test_result_round_trips_at_every_size_around_the_threshold(make_app: Any, size: int) -> None:
    backend = make_app(inline_value_max_bytes=1024).state_backend
    text = _text(size)
    backend._set_result("inv", text)
    assert backend._get_result("inv") == text
    stored = raw(backend, schema.RESULTS).find_one({"invocation_id": "inv"})["value"]
    assert isinstance(stored, str) == (size <= 1024)
    assert_no_orphans(backend)


def test_pieces_are_compressed(make_app: Any) -> None:
    backend = make_app(inline_value_max_bytes=1024).state_backend
    text = "abc" * 1_000_000  # compressible: 3 MB of text
    backend._set_result("inv", text)
    stored = raw(backend, schema.RESULTS).find_one({"invocation_id": "inv"})["value"]
    pieces = list(raw(backend, schema.VALUE_PIECES).find({"value_id": stored["value_id"]}))
    assert sum(len(p["data"]) for p in pieces) < len(text) // 50
    assert backend._get_result("inv") == text


@pytest.mark.slow
@pytest.mark.wire_gap(
    "reply batches are not split at 16 MiB: the largest_document helper's 40 MB "
    "find reply passes the emulator's message size"
)
def test_40_mb_values_round_trip_byte_identical(make_raw_app: Any, monkeypatch: Any) -> None:
    app = make_raw_app()
    backend = app.state_backend
    install_size_limit(monkeypatch, backend)
    big = _text(40 * 1024 * 1024)
    big_unicode = "é€😀\ud800" + big[: 10 * 1024 * 1024] + "\x00end"  # non-ASCII, lone surrogate
    inv, call = make_dtos("inv-40", {"data": big, "other": "small"})
    backend._upsert_invocations([(inv, call)])
    backend._set_result("inv-40", big)
    backend._set_exception("inv-40", big_unicode)
    wf = workflow_identity("wf-40")
    backend.set_workflow_data(wf, "blob", big)

    reader = make_raw_app(app_id=app.app_id).state_backend  # no cache: reads the store
    _, call_back = reader._get_invocation("inv-40")
    assert call_back.serialized_arguments == {"data": big, "other": "small"}
    assert reader._get_result("inv-40") == big
    assert reader._get_exception("inv-40") == big_unicode
    assert reader.get_workflow_data(wf, "blob") == big
    assert largest_document(backend) <= 9 * 1024 * 1024
    assert_no_orphans(backend)


def test_overwrite_large_with_small_and_back_leaves_no_orphans(make_raw_app: Any) -> None:
    backend = make_raw_app(inline_value_max_bytes=1024).state_backend
    wf = workflow_identity("wf")
    sequence = [_text(100_000), "small", _text(200_000), _text(150_000), "tiny"]
    for text in sequence:
        backend._set_result("inv", text)
        backend._set_exception("inv", text)
        backend.set_workflow_data(wf, "k", text)
        assert backend._get_result("inv") == text
        assert backend._get_exception("inv") == text
        assert backend.get_workflow_data(wf, "k") == text
        assert_no_orphans(backend)
    assert piece_ids(backend) == set()


def test_reader_never_sees_a_mix_of_old_and_new_pieces(make_app: Any, monkeypatch: Any) -> None:
    app = make_app(inline_value_max_bytes=1024)
    writer = app.state_backend
    reader = make_app(app_id=app.app_id, inline_value_max_bytes=1024).state_backend
    monkeypatch.setattr(values, "PIECE_BYTES", 64 * 1024)  # several pieces per value
    if True:
        versions = [_text(400_000) for _ in range(3)]
        writer._set_result("inv", versions[0])
        stop = threading.Event()
        errors: list[BaseException] = []

        def write() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                writer._set_result("inv", versions[i % 3])

        thread = threading.Thread(target=write)
        thread.start()
        try:
            for _ in range(150):
                try:
                    assert reader._get_result("inv") in versions
                except BaseException as exc:  # noqa: BLE001 - collected for the assert
                    errors.append(exc)
        finally:
            stop.set()
            thread.join()
        assert errors == []
        assert_no_orphans(writer)


def test_purge_removes_pieces(make_raw_app: Any) -> None:
    app = make_raw_app(inline_value_max_bytes=1024)
    other = make_raw_app(inline_value_max_bytes=1024)
    backend = app.state_backend
    backend._set_result("inv", _text(50_000))
    backend.set_workflow_data(workflow_identity("wf"), "k", _text(70_000))
    other.state_backend._set_result("inv", _text(50_000))
    assert piece_ids(backend)
    backend.purge()
    assert raw(backend, schema.VALUE_PIECES).count_documents({"app_id": app.app_id}) == 0
    assert piece_ids(other.state_backend)  # another app's pieces are untouched


def test_many_medium_arguments_stay_under_the_document_limit(
    make_app: Any, monkeypatch: Any
) -> None:
    """24 arguments of 1 MB each: every one is under the inline threshold, together
    they pass 16 MiB; the largest go to pieces so the document fits."""
    app = make_app()
    backend = app.state_backend
    install_size_limit(monkeypatch, backend)
    arguments = {f"arg{i}": _text(1_000_000) for i in range(24)}
    inv, call = make_dtos("inv-many", arguments)
    backend._upsert_invocations([(inv, call)])
    doc = raw(backend, schema.INVOCATIONS).find_one({"invocation_id": "inv-many"})
    assert doc is not None
    reader = make_app(app_id=app.app_id).state_backend
    assert reader._get_invocation("inv-many")[1].serialized_arguments == arguments
    assert largest_document(backend) < MAX_BSON
    assert_no_orphans(backend)


def test_workflow_data_document_growing_past_16_mib_falls_back_to_pieces(
    make_raw_app: Any, monkeypatch: Any
) -> None:
    """Each value is under the 64 KiB workflow inline threshold; 280 of them pass
    16 MiB in the workflow's one document. MongoDB refuses the update (17419);
    the backend stores the value as pieces instead."""
    app = make_raw_app()
    backend = app.state_backend
    install_size_limit(monkeypatch, backend)
    wf = workflow_identity("wf-grow")
    data = {f"key.{i}": _text(63 * 1024) for i in range(280)}
    for key, value in data.items():
        backend.set_workflow_data(wf, key, value)
    reader = make_raw_app(app_id=app.app_id).state_backend
    for key, value in data.items():
        assert reader.get_workflow_data(wf, key) == value
    assert largest_document(backend) < MAX_BSON
    assert piece_ids(backend)  # some values went to pieces
    assert_no_orphans(backend)


def test_losing_duplicate_writer_deletes_its_pieces(make_app: Any) -> None:
    """Two processes (no shared cache) store the same invocation with a large
    argument: one document stays, and the loser's pieces are gone."""
    app = make_app(inline_value_max_bytes=1024)
    first = app.state_backend
    second = make_app(app_id=app.app_id, inline_value_max_bytes=1024).state_backend
    args = {"x": _text(10_000)}
    inv, call = make_dtos("inv-dup", args)
    for backend in (first, second):  # stored, then registered (which writes it), as pynenc does
        backend._upsert_invocations([(inv, call)])
        backend._upsert_invocations([(inv, call)])
    query = {"app_id": app.app_id, "invocation_id": "inv-dup"}
    assert raw(first, schema.INVOCATIONS).count_documents(query) == 1
    assert_no_orphans(first)
    third = make_app(app_id=app.app_id).state_backend
    assert third._get_invocation("inv-dup")[1].serialized_arguments == args


def test_values_that_are_not_str_are_refused(make_app: Any) -> None:
    backend = make_app().state_backend
    with pytest.raises(TypeError, match="expected a serialized str"):
        backend._set_result("inv", b"bytes")  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        backend._get_result("inv")
