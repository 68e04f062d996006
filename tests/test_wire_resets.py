"""Connections reset in the middle of a batch (a TCP proxy on 127.0.0.1 that kills
every open connection now and then): retried batches leave no duplicates and lose
nothing, sync and async."""

from __future__ import annotations

import socket
import struct
import threading
import time
import uuid
from collections.abc import Generator
from typing import Any

import pymongo
import pytest
from wire_support import WireServer, WireServerUnavailable, start_wire_server

from pynenc_mongo import schema

pytestmark = pytest.mark.wire


class ResettingProxy:
    """Forward 127.0.0.1:<port> to ``target``; :meth:`reset` drops every open
    connection, on both sides, whatever is in flight on it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self.resets = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._open += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.close()
            except OSError:
                pass

    def reset(self) -> None:
        """Abort every connection open now."""
        with self._lock:
            victims, self._open = self._open, []
        for sock in victims:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)  # wakes the pipe thread blocked in recv
                sock.close()
            except OSError:
                pass
        self.resets += 1

    def close(self) -> None:
        self.listener.close()
        self.reset()


@pytest.fixture(scope="module")
def own_server() -> Generator[WireServer, None, None]:
    """A wire server for this module only."""
    try:
        server = start_wire_server()
    except WireServerUnavailable as exc:
        pytest.skip(f"wire test server unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_connections_reset_mid_batch_leave_no_duplicates(own_server: WireServer, mode: str) -> None:
    from pynenc import PynencBuilder
    from pynenc.invocation.status import InvocationStatus, InvocationStatusRecord
    from pynenc.runner.runner_context import RunnerContext
    from pynenc.state_backend.base_state_backend import InvocationHistory

    port = int(own_server.url.split("127.0.0.1:")[1].split("/")[0])
    proxy = ResettingProxy(("127.0.0.1", port))
    database = f"resets_{uuid.uuid4().hex[:8]}"
    app = (
        PynencBuilder()
        .app_id(f"resets-{mode}-{uuid.uuid4().hex[:6]}")
        .memory()
        .mongo(
            url=f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true",
            database=database,
            history_write_mode=mode,
        )
        .build()
    )
    backend: Any = app.state_backend
    ctx = RunnerContext(runner_cls="ResetRunner", runner_id="reset-runner")
    backend.store_runner_context(ctx)
    stop = threading.Event()

    def keep_resetting() -> None:  # a few resets, spread over the workload
        while proxy.resets < 5 and not stop.wait(0.4):
            proxy.reset()

    resetter = threading.Thread(target=keep_resetting, daemon=True)
    resetter.start()
    invocations = [f"inv-{i:04d}" for i in range(150)]
    statuses = ("REGISTERED", "PENDING", "RUNNING", "SUCCESS")
    try:
        for name in statuses:
            record = InvocationStatusRecord(InvocationStatus[name], runner_id=ctx.runner_id)
            history = InvocationHistory(invocations[0], record, ctx.runner_id)
            backend._add_histories(invocations[:75], history)  # one insert_many of 75
            for inv in invocations[75:]:
                backend.add_history(inv, record, ctx)
            time.sleep(0.05)
        backend.wait_for_all_async_operations()
    finally:
        stop.set()
        resetter.join()
        proxy.close()
    backend.close()
    assert proxy.resets >= 3, "no connection was reset"
    raw: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(own_server.url)
    try:
        docs = list(
            raw[database][backend.collection_name(schema.HISTORY)].find(
                {schema.F_APP: app.app_id}, {schema.F_INV: 1, "status": 1, "_id": 0}
            )
        )
    finally:
        raw.drop_database(database)
        raw.close()
    keys = [(d[schema.F_INV], d["status"]) for d in docs]
    assert len(keys) == len(set(keys)), "duplicated history records"
    assert len(set(keys)) == len(invocations) * len(statuses), "lost history records"
