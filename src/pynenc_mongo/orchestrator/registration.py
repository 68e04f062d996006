"""Registration helpers of ``MongoOrchestrator``: argument hashes, concurrency-control
detection, and the bounded per-process id sets that let it skip round trips."""

from __future__ import annotations

import hashlib
import threading
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache

if TYPE_CHECKING:
    from pynenc.invocation.dist_invocation import DistributedInvocation

#: Characters of the sha256 hex digest kept per argument (128 bits).
ARG_HASH_CHARS = 32
#: How many ids the per-process "already done" sets remember.
ID_SET_SIZE = 10_000


def argument_hashes(arguments: dict[str, str]) -> list[str]:
    """``sha256(key NUL value)`` per argument, hex, :data:`ARG_HASH_CHARS` long.

    Serialized values can be large; their hashes keep the ``args_h`` index keys
    bounded. Two different pairs share a hash with probability about 2**-128.

    :param dict arguments: argument name -> serialized value.
    :return: the hashes, sorted.
    """
    return sorted(
        hashlib.sha256(f"{key}\x00{value}".encode("utf-8", "surrogatepass")).hexdigest()[
            :ARG_HASH_CHARS
        ]
        for key, value in arguments.items()
    )


def uses_concurrency_control(invocation: DistributedInvocation[Any, Any]) -> bool:
    """True when the invocation's task has registration or running concurrency control
    (pynenc then looks its invocations up by argument)."""
    conf = invocation.call.task.conf
    for name in ("registration_concurrency", "running_concurrency"):
        value = getattr(conf, name, None)
        if value is not None and getattr(value, "name", str(value)) != "DISABLED":
            return True
    return False


class IdSet:
    """A bounded, thread-safe set of ids (the least recently added are forgotten first).

    :param int size: how many ids it keeps.
    """

    def __init__(self, size: int = ID_SET_SIZE) -> None:
        self._ids: LRUCache[str, bool] = LRUCache(maxsize=max(size, 1))
        self._lock = threading.Lock()

    def add(self, item: str) -> None:
        """Remember ``item``."""
        with self._lock:
            self._ids[item] = True

    def take(self, item: str) -> bool:
        """Forget ``item``; True if it was remembered."""
        with self._lock:
            return self._ids.pop(item, False)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._ids.clear()
