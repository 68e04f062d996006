"""Workflows: runs, sub-invocations and workflow data.

* ``workflow_runs``: one document per run (idempotent upsert), listed newest first.
* ``workflow_sub_invocations``: one document per (workflow, sub-invocation).
* ``workflow_data``: one document per workflow; each key is a field of ``data``
  (encoded by :func:`pynenc_mongo.schema.encode_data_key`), its value inline up
  to :data:`WORKFLOW_INLINE_MAX_BYTES` or as pieces owned by ``workflow:<id>``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pynenc_mongo import schema
from pynenc_mongo.errors import MAX_DOCUMENT_BYTES, MongoLimitError
from pynenc_mongo.schema import F_APP
from pynenc_mongo.state_backend.common import StorePart, check_str
from pynenc_mongo.store import check_document_size

if TYPE_CHECKING:
    from pynenc.identifiers.invocation_id import InvocationId
    from pynenc.identifiers.task_id import TaskId
    from pynenc.workflow.workflow_identity import WorkflowIdentity

#: Workflow-data values share one document per workflow, so they are inlined
#: only up to this many bytes (at most ``mongo_inline_value_max_bytes``).
WORKFLOW_INLINE_MAX_BYTES = 64 * 1024
#: Longest workflow-data key (bytes of its encoded field name): the key is a field
#: name in the workflow's single document, which MongoDB caps at 16 MiB.
MAX_DATA_KEY_BYTES = 8 * 1024 * 1024


def data_field(key: str) -> str:
    """The field path of workflow-data ``key`` (see :func:`schema.encode_data_key`).

    :raises TypeError: if ``key`` is not a str.
    :raises pynenc_mongo.errors.MongoLimitError: if longer than :data:`MAX_DATA_KEY_BYTES`.
    """
    encoded = schema.encode_data_key(key)
    size = len(encoded.encode("utf-8"))
    if size > MAX_DATA_KEY_BYTES:
        raise MongoLimitError(
            f"workflow data key of {size} bytes is longer than the limit of "
            f"{MAX_DATA_KEY_BYTES} bytes: keys are field names in the workflow's one "
            f"document, which MongoDB caps at {MAX_DOCUMENT_BYTES} bytes (16 MiB)"
        )
    return "data." + encoded


class Workflows(StorePart):
    """Workflow runs, sub-invocations and data of one app.

    :param MongoStore store: the app's store.
    """

    # ------------------------------------------------------------------ data
    def set_data(
        self, workflow_id: str, key: str, value: Any, serialize: Callable[[Any], str]
    ) -> None:
        """Set ``key`` of a workflow's data to ``value``: one ``$set`` upsert on the
        workflow's document (after any pieces).

        :param Callable serialize: turns ``value`` into text (the app's client data
            store); called once the key is checked.
        :raises TypeError: if ``key`` or ``workflow_id`` is not a string.
        :raises pynenc_mongo.errors.MongoLimitError: if the key is longer than
            :data:`MAX_DATA_KEY_BYTES`.
        """
        field = data_field(key)
        text = serialize(value)
        check_str("workflow_id", workflow_id)
        self.require_unique(schema.WORKFLOW_DATA)
        self.store.write_value(
            schema.WORKFLOW_DATA,
            {F_APP: self.app_id, "workflow_id": workflow_id},
            field,
            f"workflow:{workflow_id}",
            text,
            limit=WORKFLOW_INLINE_MAX_BYTES,
        )

    def get_data(self, workflow_id: str, key: str) -> tuple[bool, str]:
        """The serialized value under ``key``: ``(found, text)``.

        :raises TypeError: if ``key`` or ``workflow_id`` is not a string.
        """
        field = data_field(key)
        return self.store.read_value(
            schema.WORKFLOW_DATA,
            {F_APP: self.app_id, "workflow_id": check_str("workflow_id", workflow_id)},
            field,
        )

    # ------------------------------------------------------------------ runs
    def store_run(self, workflow_identity: WorkflowIdentity) -> None:
        """Record a workflow run (idempotent upsert).

        :raises pynenc_mongo.errors.MongoLimitError: if the run's document would pass 16 MiB.
        """
        doc = schema.workflow_run_doc(self.app_id, workflow_identity)
        check_str("workflow_id", workflow_identity.workflow_id)
        check_document_size(doc, f"workflow run {workflow_identity.workflow_id[:80]!r}")
        self.require_unique(schema.WORKFLOW_RUNS)
        self.store.upsert(
            self.store.collection(schema.WORKFLOW_RUNS).update_one,
            {F_APP: self.app_id, "workflow_id": workflow_identity.workflow_id},
            {"$set": doc},
            upsert=True,
        )

    def all_types(self) -> Iterator[TaskId]:
        """Distinct workflow types (task ids) that have runs, sorted by key."""
        from pynenc.identifiers.task_id import TaskId

        keys: list[str] = self.store.retry(
            self.store.collection(schema.WORKFLOW_RUNS).distinct,
            "workflow_type.key",
            {F_APP: self.app_id},
        )
        return iter([TaskId.from_key(key) for key in sorted(keys)])

    def runs(self, workflow_type_key: str | None = None) -> Iterator[WorkflowIdentity]:
        """Workflow runs (of one type, or all), newest first.

        Newest first, to the second (``_id`` is the ObjectId made when the run was first
        stored): pynenc's monitor shows the first run as a type's "latest run" and
        charts the first three.

        :raises TypeError: if ``workflow_type_key`` is given and not a str.
        """
        filter_: dict[str, Any] = {F_APP: self.app_id}
        if workflow_type_key is not None:
            filter_["workflow_type.key"] = check_str("workflow_type.key", workflow_type_key)
        docs = self.stream(
            self.store.collection(schema.WORKFLOW_RUNS), filter_, {"_id": 0}, sort=[("_id", -1)]
        )
        return (schema.workflow_run_from(doc) for doc in docs)

    # ------------------------------------------------------------------ sub-invocations
    def store_sub_invocation(
        self, parent_workflow_id: InvocationId, sub_invocation_id: InvocationId
    ) -> None:
        """Record that ``sub_invocation_id`` runs inside ``parent_workflow_id`` (idempotent).

        :raises TypeError: if an id is not a str.
        """
        key = {
            F_APP: self.app_id,
            "workflow_id": check_str("parent_workflow_id", parent_workflow_id),
            "sub_invocation_id": check_str("sub_invocation_id", sub_invocation_id),
        }
        check_document_size(key, f"workflow sub-invocation {sub_invocation_id[:80]!r}")
        self.require_unique(schema.WORKFLOW_SUB_INVOCATIONS)
        self.store.upsert(
            self.store.collection(schema.WORKFLOW_SUB_INVOCATIONS).update_one,
            key,
            {"$setOnInsert": key},
            upsert=True,
        )

    def sub_invocations(self, workflow_id: InvocationId) -> Iterator[InvocationId]:
        """Ids of the invocations that run inside ``workflow_id``."""
        docs = self.stream(
            self.store.collection(schema.WORKFLOW_SUB_INVOCATIONS),
            {F_APP: self.app_id, "workflow_id": check_str("workflow_id", workflow_id)},
            {"_id": 0, "sub_invocation_id": 1},
        )
        return (doc["sub_invocation_id"] for doc in docs)


__all__ = ["MAX_DATA_KEY_BYTES", "WORKFLOW_INLINE_MAX_BYTES", "Workflows", "data_field"]
