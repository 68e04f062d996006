"""Packaging: production installs get only what the runtime imports; the embedded store
is an extra, and selecting it without the extra fails with one line naming it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs in a fresh interpreter where mongomock and mongomock_motor cannot be imported.
_WITHOUT_MONGOMOCK = """
import sys
sys.modules["mongomock"] = None
sys.modules["mongomock_motor"] = None
from pynenc import PynencBuilder
import pynenc_mongo
from pynenc_mongo.monitoring import count_operations
with count_operations():
    pass
app = PynencBuilder().app_id("no-extra").mongo(url="mongomock://x").build()
try:
    app.state_backend
except Exception as exc:
    print(type(exc).__name__, exc)
else:
    print("no error")
"""


def test_runtime_dependencies_leave_out_the_embedded_store_and_motor() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [
        dep.split(">")[0].split("<")[0].split("=")[0].strip() for dep in project["dependencies"]
    ]
    assert "pymongo" in names and "pynenc" in names
    assert not {"mongomock", "mongomock-motor", "motor"} & set(names), names
    extras = project["optional-dependencies"]
    assert any(dep.startswith("mongomock") for dep in extras["embedded"])
    assert any(dep.startswith("motor") for dep in extras["motor"])


def test_mongomock_url_without_the_extra_fails_with_one_line_naming_it() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _WITHOUT_MONGOMOCK],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.strip()
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    assert lines[0].startswith("EmbeddedStoreMissingError mongo_url:"), out
    assert 'pip install "pynenc-mongo[embedded]"' in lines[0]
