"""App info: the ``app_infos`` collection (one document per app, for discovery).

Config values are stored without credentials (:func:`safe_config_values`). pynenc stores
the app info when it creates the backend; if the server cannot be reached then,
the info is kept as pending and stored by the next operation that reaches the
server (the backend's ``before_operation`` hook calls :meth:`AppInfos.store_pending`).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

from pymongo.errors import PyMongoError

from pynenc_mongo import schema
from pynenc_mongo.errors import translate_errors
from pynenc_mongo.redaction import redact_config
from pynenc_mongo.schema import F_APP
from pynenc_mongo.state_backend.common import StorePart
from pynenc_mongo.store import MongoStore, check_document_size
from pynenc_mongo.write_outcomes import is_refused_write

if TYPE_CHECKING:
    from pynenc.app_info import AppInfo

logger = logging.getLogger("pynenc_mongo")


def safe_config_values(config_values: dict[str, Any] | None) -> dict[str, Any] | None:
    """Config values without credentials (:func:`pynenc_mongo.redaction.redact_config`:
    secret setting names, URL user info, secret ``name=value`` pairs in URLs and DSNs);
    None stays None."""
    if config_values is None:
        return None
    safe = redact_config(config_values)
    assert isinstance(safe, dict)
    return safe


class AppInfos(StorePart):
    """Store and read app info documents; remember an info whose store failed.

    :param MongoStore store: the app's store.
    """

    def __init__(self, store: MongoStore) -> None:
        super().__init__(store)
        self._lock = threading.RLock()
        self._local = threading.local()
        self.pending: AppInfo | None = None
        _live_app_infos.add(self)

    def reset_after_fork(self) -> None:
        """In a forked child: a fresh lock (another parent thread may have held it
        across the network upsert of :meth:`store_info`)."""
        self._lock = threading.RLock()
        self._local = threading.local()

    @property
    def storing(self) -> bool:
        """True while this thread is storing the app info (the hook must not recurse)."""
        return bool(getattr(self._local, "storing", False))

    @translate_errors
    def store_info(self, app_info: AppInfo) -> None:
        """Store the app's info (``replace_one`` upsert), secrets removed.

        On failure the info stays pending (see the module docstring) and the
        error is raised.

        :raises pynenc_mongo.errors.MongoUnavailableError: server unreachable.
        :raises pynenc_mongo.errors.MongoLimitError: if the document would pass 16 MiB.
        """
        doc = schema.app_info_doc(app_info, safe_config_values(app_info.config_values))
        check_document_size(doc, f"app info of {app_info.app_id[:80]!r}")
        with self._lock:
            self.pending = app_info
            self._local.storing = True
            try:
                self.store.upsert(
                    self.store.collection(schema.APP_INFOS).replace_one,
                    {F_APP: app_info.app_id},
                    doc,
                    upsert=True,
                )
            except PyMongoError as exc:
                if not is_refused_write(exc):
                    raise
                # Refused for authorization or validation (a read-only or restricted
                # role): retrying before every operation cannot succeed. The app works
                # without it; only discovery (pynmon) misses this app.
                logger.warning(
                    "pynenc-mongo: app info of %r not stored, the server refused it "
                    "(code %s); discovery will not list this app",
                    app_info.app_id[:80],
                    getattr(exc, "code", None),
                )
            finally:
                self._local.storing = False
            self.pending = None

    def store_pending(self) -> None:
        """Store the app info whose first store failed, if any (and if this thread
        is not storing it right now)."""
        pending = self.pending
        if pending is not None and not self.storing:
            self.store_info(pending)

    def get(self) -> AppInfo:
        """This app's stored info. :raises KeyError: if none is stored."""
        doc = self.store.retry(
            self.store.collection(schema.APP_INFOS).find_one, {F_APP: self.app_id}
        )
        if doc is None:
            raise KeyError(f"App info for {self.app_id} not found")
        return schema.app_info_from(doc)


_live_app_infos: weakref.WeakSet[AppInfos] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for part in list(_live_app_infos):
        part.reset_after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)

__all__ = ["AppInfos", "safe_config_values"]
