"""The catalogue: every collection, document shape and index of every component.

Open this package to see everything pynenc-mongo keeps in MongoDB. Each component
declares its own collections and indexes in one module here:

* :mod:`~pynenc_mongo.schema.state` -- the state backend (invocations, history,
  results, workflows, runner contexts, app info, value pieces), and
  :mod:`~pynenc_mongo.schema.state_documents`, its DTO <-> document mapping;
* :mod:`~pynenc_mongo.schema.orchestrator` -- status records, blocking edges,
  runner heartbeats, atomic-service executions;
* :mod:`~pynenc_mongo.schema.broker` -- the queue;
* :mod:`~pynenc_mongo.schema.trigger` -- conditions, triggers, claims, events, runs;
* :mod:`~pynenc_mongo.schema.client_data_store` -- large serialized arguments.

:mod:`~pynenc_mongo.schema.layout` holds the building blocks (:class:`IndexSpec`,
time encoding). This module joins the components into :data:`ALL_COLLECTIONS` and
:data:`INDEXES`, which lazy index creation (:mod:`pynenc_mongo.indexes`), the index
setup script (:mod:`pynenc_mongo.cli`) and the query audit
(``tests/query_recorder.py``) all read. The rule: a query's index is declared here
before the query is written.

Every document carries ``app_id`` and every index (but the TTL ones) starts with
it: two pynenc apps sharing a database never see, overwrite or purge each other's
documents. Physical names are ``<mongo_collection_prefix><logical name>``.

The state backend's names are re-exported here (``schema.INVOCATIONS``,
``schema.invocation_doc``...), as before the split.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from pynenc_mongo.schema import broker, client_data_store, orchestrator, state, trigger
from pynenc_mongo.schema.layout import (
    COMPARED_INDEX_OPTIONS as COMPARED_INDEX_OPTIONS,
)
from pynenc_mongo.schema.layout import (
    F_APP as F_APP,
)
from pynenc_mongo.schema.layout import (
    F_EXPIRE as F_EXPIRE,
)
from pynenc_mongo.schema.layout import (
    ID_INDEX_NAME as ID_INDEX_NAME,
)
from pynenc_mongo.schema.layout import (
    IndexSpec as IndexSpec,
)
from pynenc_mongo.schema.layout import (
    format_keys as format_keys,
)
from pynenc_mongo.schema.layout import (
    from_us as from_us,
)
from pynenc_mongo.schema.layout import (
    key_pairs as key_pairs,
)
from pynenc_mongo.schema.layout import (
    to_us as to_us,
)
from pynenc_mongo.schema.layout import (
    ttl_index as ttl_index,
)
from pynenc_mongo.schema.state import *  # noqa: F403  (the state layout, as before the split)
from pynenc_mongo.schema.state import APP_INFOS, HISTORY, INVOCATIONS
from pynenc_mongo.schema.state_documents import *  # noqa: F403  (its DTO mapping)

#: Component name -> its logical collections, in catalogue order.
COMPONENT_COLLECTIONS: Final[dict[str, tuple[str, ...]]] = {
    "state_backend": state.COLLECTIONS,
    "orchestrator": orchestrator.COLLECTIONS,
    "broker": broker.COLLECTIONS,
    "trigger": trigger.COLLECTIONS,
    "client_data_store": client_data_store.COLLECTIONS,
}
#: The state backend's collections (what ``MongoStateBackend.purge`` empties).
STATE_COLLECTIONS: Final[tuple[str, ...]] = state.COLLECTIONS
#: Every logical collection of every component.
ALL_COLLECTIONS: Final[tuple[str, ...]] = tuple(
    name for names in COMPONENT_COLLECTIONS.values() for name in names
)
#: Every index of every component; every query pynenc-mongo issues is served by one of
#: these (``tests/test_query_coverage.py`` checks each query the test suite issues).
INDEXES: Final[tuple[IndexSpec, ...]] = (
    *state.INDEXES,
    *orchestrator.INDEXES,
    *broker.INDEXES,
    *trigger.INDEXES,
    *client_data_store.INDEXES,
)

if len(set(ALL_COLLECTIONS)) != len(ALL_COLLECTIONS):  # pragma: no cover (a layout bug)
    raise RuntimeError(f"schema: a logical collection name is declared twice: {ALL_COLLECTIONS}")
_undeclared = {spec.collection for spec in INDEXES} - set(ALL_COLLECTIONS)
if _undeclared:  # pragma: no cover (a layout bug)
    raise RuntimeError(f"schema: indexes on undeclared collections {sorted(_undeclared)}")


def indexes_for(collection: str, retention: bool) -> list[IndexSpec]:
    """The indexes of one logical collection.

    :param str collection: logical collection name.
    :param bool retention: include the TTL indexes used by ``mongo_retention_days``.
    :return: list of :class:`IndexSpec`.
    """
    return [
        spec
        for spec in INDEXES
        if spec.collection == collection and (retention or not spec.retention_only)
    ]


def layout_prefixes(collection_names: Iterable[str]) -> list[str]:
    """The collection prefixes that hold a pynenc-mongo layout in a database.

    A prefix counts when ``<prefix>app_infos`` exists, or both ``<prefix>invocations``
    and ``<prefix>history`` do (an app that never stored its app info).

    :param Iterable[str] collection_names: the database's collection names
        (``Database.list_collection_names()``).
    :return: the prefixes, sorted.
    """
    names = set(collection_names)
    found = set()
    for name in names:
        if name.endswith(APP_INFOS):
            found.add(name[: -len(APP_INFOS)])
        elif name.endswith(INVOCATIONS):
            prefix = name[: -len(INVOCATIONS)]
            if prefix + HISTORY in names:
                found.add(prefix)
    return sorted(found)


@dataclass(frozen=True)
class CollectionNames:
    """Physical collection names for one ``mongo_collection_prefix``."""

    prefix: str = "pynenc_"
    names: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self.names.update({c: f"{self.prefix}{c}" for c in ALL_COLLECTIONS})

    def __getitem__(self, logical: str) -> str:
        return self.names[logical]
