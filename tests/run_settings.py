"""Settings of this test run, shared by conftest and test helpers.

(Imported by module name; ``conftest`` cannot be, since ``tests/browser`` has its own.)

The run's mode (README, "Testing"):

* ``embedded``: no ``PYNENC_MONGO_TEST_URL``; every test on mongomock (one process).
* ``wire``: ``PYNENC_MONGO_TEST_URL`` points at the local wire-protocol test server
  and ``PYNENC_MONGO_TEST_SERVER=wire`` says so (``scripts/test`` sets both).
* ``real``: ``PYNENC_MONGO_TEST_URL`` points at a real MongoDB server.
"""

from __future__ import annotations

import os
import uuid

#: A server for the whole run (``PYNENC_MONGO_TEST_URL``: a real one, or the wire
#: test server in wire mode), or "" for mongomock.
REAL_URL = os.environ.get("PYNENC_MONGO_TEST_URL", "").strip()
_DECLARED = os.environ.get("PYNENC_MONGO_TEST_SERVER", "").strip().lower()
if _DECLARED not in ("", "wire", "real"):
    raise RuntimeError(
        f"PYNENC_MONGO_TEST_SERVER: expected 'wire' or 'real' (or unset), got {_DECLARED!r}"
    )
if _DECLARED and not REAL_URL:
    raise RuntimeError(
        f"PYNENC_MONGO_TEST_SERVER={_DECLARED} needs PYNENC_MONGO_TEST_URL (the server's URL)"
    )
#: ``embedded``, ``wire`` or ``real`` (see the module docstring).
MODE = "embedded" if not REAL_URL else ("wire" if _DECLARED == "wire" else "real")
RUN_ID = uuid.uuid4().hex[:10]
#: This run's database; on a real server it is dropped at the end of the run.
RUN_DATABASE = f"pynenc_mongo_test_{RUN_ID}"
