"""Helpers shared by the index tests: an isolated collection layout per test.

Each test gets its own collection prefix, so the tests hold on a real server
(``PYNENC_MONGO_TEST_URL``), where every test of a run shares one database; the
collections of the prefix are dropped afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from run_settings import REAL_URL, RUN_DATABASE

from pynenc_mongo import schema
from pynenc_mongo.client import get_database
from pynenc_mongo.indexes import forget_ensured


@dataclass(frozen=True)
class Layout:
    """One test's collections: URL, database and a unique prefix."""

    url: str
    database: str
    prefix: str

    @property
    def db(self) -> Any:
        """The ``Database``."""
        return get_database(self.url, self.database, 10.0)

    def collection(self, logical: str) -> Any:
        """The physical collection of ``logical`` under this prefix."""
        return self.db[schema.CollectionNames(self.prefix)[logical]]

    def args(self, *extra: str) -> list[str]:
        """Command-line arguments pointing the setup script here."""
        return ["--url", self.url, "--database", self.database, "--prefix", self.prefix, *extra]

    def index_names(self, logical: str) -> set[str]:
        """Names of the indexes of one collection (``_id_`` included)."""
        return {info["name"] for info in self.collection(logical).list_indexes()}

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Every collection of the prefix -> its index documents (to compare runs)."""
        names = set(self.db.list_collection_names())
        out = {}
        for logical in schema.ALL_COLLECTIONS:
            collection = self.collection(logical)
            if collection.name in names:
                out[collection.name] = sorted(
                    (dict(info) for info in collection.list_indexes()), key=lambda i: i["name"]
                )
        return out

    def existing_collections(self) -> set[str]:
        """Collections of this prefix that exist."""
        return {n for n in self.db.list_collection_names() if n.startswith(self.prefix)}


def make_layout(mongo_url: str) -> Iterator[Layout]:
    """Body of a ``layout`` fixture: a fresh, isolated collection layout (see the
    module docstring); test modules define ``layout`` with ``yield from``."""
    forget_ensured()
    result = Layout(mongo_url, RUN_DATABASE, f"t{uuid.uuid4().hex[:10]}_")
    yield result
    if REAL_URL:
        for name in result.existing_collections():
            result.db.drop_collection(name)
    forget_ensured()
