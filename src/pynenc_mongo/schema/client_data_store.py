"""The client data store collections, their document shapes and indexes.

(Filled in by the client data store component; empty until it lands.)
"""

from __future__ import annotations

from typing import Final

from pynenc_mongo.schema.layout import IndexSpec

#: This component's logical collection names.
COLLECTIONS: Final[tuple[str, ...]] = ()
#: Every index this component's queries need.
INDEXES: Final[tuple[IndexSpec, ...]] = ()
