"""Fixtures for the browser tests: pynenc's monitor (pynmon) on our backend, in Chromium.

* ``monitor_data``: the main job's workload (:mod:`pynenc_mongo.demo.workload`) run
  twice, each time by a new ``ThreadRunner``, on the embedded store; then what the
  backend holds, read back as the ground truth the pages are checked against.
* ``pynmon_url``: pynmon's ASGI app served by uvicorn in a thread of this process (the
  embedded store is in-process) on a free loopback port, set up the way pynenc's
  ``monitor`` CLI command sets it up for ``pynenc --app ... monitor``.
* ``browser``: headless Debian ``chromium`` driven by Playwright (no browser download).
  Requests leaving the loopback interface never reach the network: the monitor's CDN
  assets are served from ``.cache/pynmon-assets`` when ``scripts/install_browser`` could
  cache them, everything else external is aborted (and recorded).
* ``server_log``: every ERROR log record and every HTTP status the server produced.
* ``query_audit``: every query the backend sent while the pages were served.

The tests skip, with the reason, when no chromium binary, Playwright or pynmon is
installed; ``scripts/test`` installs all three on a Debian machine.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any

import pytest
from pynmon_support import (
    ASSET_ROUTES,
    ASSETS_DIR,
    CHROMIUM_ARGS,
    MATERIAL_ICONS_CSS,
    PAGE_TIMEOUT_MS,
    SERVER_START_TIMEOUT,
    Browser,
    MonitorData,
    QueryAudit,
    ServerLog,
    find_chromium,
    free_port,
    read_back,
)


@pytest.fixture(scope="module", autouse=True)
def _requirements() -> str:
    """Skip the browser tests early, with the reason, when something they need is
    missing: a chromium binary, Playwright, pynenc's monitor (and uvicorn)."""
    chromium = find_chromium()
    if chromium is None:
        pytest.skip(
            "no chromium binary: run scripts/install_browser (Debian: apt-get install "
            "chromium) or set PYNENC_MONGO_CHROMIUM"
        )
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    pytest.importorskip("pynmon.app", reason="pynenc's monitor (pynenc[monitor]) is not installed")
    pytest.importorskip("uvicorn", reason="uvicorn (pynenc[monitor]) is not installed")
    return chromium


@pytest.fixture(scope="module")
def monitor_data() -> MonitorData:
    """Run the main job's workload twice (a new ThreadRunner each time) and read back
    what the backend holds: succeeded, failed and retried invocations, children, two
    workflow runs with sub-invocations and workflow data, three runner contexts."""
    from pynenc_mongo.demo import workload

    app = workload.app
    app.purge()
    runs: list[list[str]] = []
    thread_runner_ids: list[str] = []
    for _ in range(2):
        app.runner = type(app.runner)(app)  # a new runner (and runner context) per run
        thread_runner_ids.append(app.runner.runner_id)
        runs.append([inv.invocation_id for inv in workload.run_workload(app, timeout_seconds=60)])
    data = MonitorData(app=app, runs=runs, thread_runner_ids=thread_runner_ids)
    read_back(data)

    # The data set has what the monitor's pages are about.
    finals = [f.final_status for f in data.invocations.values()]
    assert "FAILED" in finals and "SUCCESS" in finals
    assert "RETRY" in data.top(0, "flaky").statuses
    assert len(data.children[data.top(0, "fan_out").invocation_id]) == 3
    assert len(data.workflow_runs) == 2
    for workflow_id in data.workflow_runs:
        assert data.workflow_sub_invocations[workflow_id], "workflow without sub-invocations"
        assert data.workflow_data[workflow_id]["status"] == "done"
    assert len(data.runner_contexts) >= 3  # ExternalRunner + one ThreadRunner per run
    assert set(thread_runner_ids) <= set(data.runner_contexts)
    return data


@pytest.fixture(scope="module")
def server_log() -> Iterator[ServerLog]:
    """Attach a :class:`ServerLog` to the root logger for the module (uvicorn's
    loggers propagate to it: the server is started with ``log_config=None``)."""
    handler = ServerLog()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    access = logging.getLogger("uvicorn.access")
    old_level = access.level
    access.setLevel(logging.INFO)
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)
    access.setLevel(old_level)


@pytest.fixture(scope="module")
def query_audit() -> Iterator[QueryAudit]:
    """Record every backend query for the module (started after the workload)."""
    audit = QueryAudit()
    with audit.active():
        yield audit


@pytest.fixture(scope="module")
def pynmon_url(
    monitor_data: MonitorData, server_log: ServerLog, query_audit: QueryAudit
) -> Iterator[str]:
    """pynmon for the workload's app, served by uvicorn on 127.0.0.1:<free port>.

    Mirrors ``pynenc --app pynenc_mongo.demo.workload:app monitor``: the app infos come
    from pynenc's ``get_all_available_apps`` (the app's own state backend), the
    instances from pynmon's ``hydrate_app_instances``. Only ``start_monitor`` itself is
    not called: it blocks in ``uvicorn.run`` and refuses Python >= 3.13.
    """
    uvicorn = pytest.importorskip("uvicorn")
    import pynmon.app as pynmon_app
    from pynenc.cli.monitor_cli import get_all_available_apps
    from pynenc.cli.namespace import PynencCLINamespace

    app = monitor_data.app
    # A monitor process has its own state backend, with cold caches: drop the one that
    # ran the workload (its DTO and runner-context caches would hide the reads). The
    # new one stores the app info on creation, as in any new process.
    app.state_backend.close()
    app._state_backend = None
    assert app.state_backend is not None
    args = PynencCLINamespace()
    args.app_instance = app
    apps = get_all_available_apps(args)
    assert app.app_id in apps
    assert apps[app.app_id].config_values is not None
    saved = (dict(pynmon_app.all_pynenc_instances), pynmon_app.pynenc_instance)
    pynmon_app.all_pynenc_instances.clear()
    pynmon_app.all_pynenc_instances.update(pynmon_app.hydrate_app_instances(apps, app))
    pynmon_app.pynenc_instance = app
    if not any(getattr(r, "path", "") == "/invocations/" for r in pynmon_app.app.routes):
        pynmon_app.setup_routes()  # once per process: FastAPI would add the routes again

    port = free_port()
    config = uvicorn.Config(
        pynmon_app.app,
        host="127.0.0.1",
        port=port,
        log_config=None,  # keep the process's logging: ServerLog sees everything
        access_log=True,
        loop="asyncio",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="pynmon-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail(f"pynmon did not start on 127.0.0.1:{port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        pynmon_app.all_pynenc_instances.clear()
        pynmon_app.all_pynenc_instances.update(saved[0])
        pynmon_app.pynenc_instance = saved[1]


@pytest.fixture(scope="module")
def browser(_requirements: str, pynmon_url: str) -> Generator[Browser, None, None]:
    """A headless Chromium context (fresh profile) that only talks to loopback."""
    chromium = _requirements
    sync_api = pytest.importorskip("playwright.sync_api")
    assets_served = (ASSETS_DIR / "material-icons.woff2").is_file()
    profile = tempfile.mkdtemp(prefix="pynmon-chromium-")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
            timeout=PAGE_TIMEOUT_MS,
        )
        state = Browser(context=context, assets_served=assets_served)

        def route(route: Any) -> None:
            url = route.request.url
            if url.startswith(pynmon_url + "/") or url == pynmon_url:
                route.continue_()
                return
            for prefix, (name, content_type) in ASSET_ROUTES.items():
                if url.startswith(prefix) and assets_served:
                    if name is None:
                        route.fulfill(
                            status=200, body=MATERIAL_ICONS_CSS, content_type=content_type
                        )
                    else:
                        route.fulfill(
                            status=200, path=str(ASSETS_DIR / name), content_type=content_type
                        )
                    return
            state.blocked.add(url)
            route.abort()

        context.route("**/*", route)
        context.set_default_timeout(PAGE_TIMEOUT_MS)
        context.set_default_navigation_timeout(PAGE_TIMEOUT_MS)
        try:
            yield state
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)
