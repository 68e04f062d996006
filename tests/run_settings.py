"""Settings of this test run, shared by conftest and test helpers.

(Imported by module name; ``conftest`` cannot be, since ``tests/browser`` has its own.)
"""

from __future__ import annotations

import os
import uuid

#: A real server for the whole run (``PYNENC_MONGO_TEST_URL``), or "" for mongomock.
REAL_URL = os.environ.get("PYNENC_MONGO_TEST_URL", "").strip()
RUN_ID = uuid.uuid4().hex[:10]
#: This run's database; on a real server it is dropped at the end of the run.
RUN_DATABASE = f"pynenc_mongo_test_{RUN_ID}"
