"""App info: the ``app_infos`` collection (one document per app, for discovery).

Config values are stored without secrets (:func:`without_secrets`). pynenc stores
the app info when it creates the backend; if the server cannot be reached then,
the info is kept as pending and stored by the next operation that reaches the
server (the backend's ``before_operation`` hook calls :meth:`AppInfos.store_pending`).
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, Any

from pynenc_mongo import schema
from pynenc_mongo.errors import translate_errors
from pynenc_mongo.schema import F_APP
from pynenc_mongo.state_backend.common import StorePart
from pynenc_mongo.store import MongoStore, check_document_size
from pynenc_mongo.urls import SCHEMES, strip_password

if TYPE_CHECKING:
    from pynenc.app_info import AppInfo

_SECRET_KEY = re.compile(
    r"pass(word)?|passwd|pwd|secret|token|credential|api_?key|private_?key|auth(?!ors?\b)|"
    r"(^|_)key$|cookie|session|signature",
    re.IGNORECASE,
)
_URL_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*@|^[^/?#\s]*:[^/?#\s]*@")


def without_secrets(value: Any, key: Any = None) -> Any:
    """A copy of a config value with secrets removed, recursively.

    * values under keys that look secret (password, secret, token, credential,
      api key, private key) are dropped, unless the key names a URL;
    * strings that are URLs with user info (any scheme: ``mongodb://``,
      ``mongomock://``, ``redis://``...) lose their password and secret options
      (:func:`~pynenc_mongo.urls.strip_password`, or ``***`` for other schemes);
    * dicts, lists, tuples and sets are walked.
    """
    if isinstance(value, str):
        if _URL_USERINFO.search(value) or value.startswith(SCHEMES):
            return strip_password(value)
        return value
    if isinstance(value, dict):
        safe: dict[Any, Any] = {}
        for k, v in value.items():
            if isinstance(k, str) and _SECRET_KEY.search(k) and "url" not in k.lower():
                continue
            safe[k] = without_secrets(v, k)
        return safe
    if isinstance(value, list):
        return [without_secrets(v) for v in value]
    if isinstance(value, tuple):
        return tuple(without_secrets(v) for v in value)
    if isinstance(value, set | frozenset):
        return type(value)(without_secrets(v) for v in value)
    return value


def safe_config_values(config_values: dict[str, Any] | None) -> dict[str, Any] | None:
    """Config values without secrets (see :func:`without_secrets`); None stays None."""
    if config_values is None:
        return None
    safe = without_secrets(config_values)
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


__all__ = ["AppInfos", "safe_config_values", "without_secrets"]
