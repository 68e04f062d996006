"""What every part of the state backend shares: the base of the parts and the id check.

Each part (:mod:`.invocations`, :mod:`.history`, :mod:`.results`, :mod:`.workflows`,
:mod:`.runners`, :mod:`.app_info`, :mod:`.async_reads`) is a plain object holding the
app's :class:`~pynenc_mongo.store.MongoStore`;
:class:`~pynenc_mongo.state_backend.MongoStateBackend` makes one of each and maps
pynenc's methods onto them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pynenc_mongo.store import MongoStore

if TYPE_CHECKING:
    from pynenc.models.call_dto import CallDTO
    from pynenc.models.invocation_dto import InvocationDTO

#: An invocation's two stored DTOs (both frozen: they never change once stored).
DTOPair = tuple["InvocationDTO", "CallDTO"]


def check_str(name: str, value: Any) -> str:
    """Return ``value`` if it is a ``str``; refuse anything else.

    Identifiers go into query filters as values: a dict such as ``{"$ne": None}``
    would be read by MongoDB as an operator and match other documents.

    :param str name: the argument's name, for the message.
    :param Any value: the value received.
    :return: ``value``.
    :raises TypeError: naming ``name`` and the type received.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a str, got {type(value).__name__}")
    return value


class StorePart:
    """Base of the state backend's parts: the store, the app id, the error target.

    :param MongoStore store: the app's store; every MongoDB operation goes through it.

    ``describe_target()`` lets :func:`~pynenc_mongo.errors.translate_errors` decorate
    a part's methods as it decorates the backend's.
    """

    def __init__(self, store: MongoStore) -> None:
        self.store = store
        self.app_id = store.app_id

    def describe_target(self) -> str:
        """Where the store writes: redacted URL and database (for error messages)."""
        return self.store.describe_target()


__all__ = ["DTOPair", "StorePart", "check_str"]
