"""The embedded store (``mongomock://``): optional, behind the ``embedded`` extra.

mongomock (and mongomock-motor for the async API) keep an in-process store for tests,
demos and single-process apps. Production deployments talk to a real server and need
neither, so they are not runtime dependencies: ``pip install "pynenc-mongo[embedded]"``
adds them. Selecting a ``mongomock://`` URL without them fails with one line naming the
extra (:func:`require`).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from pynenc_mongo.config import MongoConfigError

#: The pip requirement that installs the embedded store.
EXTRA = "pynenc-mongo[embedded]"


class EmbeddedStoreMissingError(MongoConfigError, ImportError):
    """``mongomock://`` was selected but the embedded store is not installed."""


def require(module: str = "mongomock") -> ModuleType:
    """Import ``module`` (``mongomock`` or ``mongomock_motor``) for the embedded store.

    :param str module: the module to import.
    :return: the module.
    :raises EmbeddedStoreMissingError: naming the setting and the extra to install.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise EmbeddedStoreMissingError(
            f"mongo_url: mongomock:// selects the embedded store, which needs {module}; "
            f'install it with: pip install "{EXTRA}"'
        ) from None


def is_embedded(obj: Any) -> bool:
    """True for an object of the embedded store (a mongomock collection, client...),
    decided without importing mongomock."""
    return type(obj).__module__.split(".", 1)[0] in ("mongomock", "mongomock_motor")


def installed() -> bool:
    """True when mongomock can be imported (it is then imported)."""
    try:
        importlib.import_module("mongomock")
    except ImportError:
        return False
    return True
