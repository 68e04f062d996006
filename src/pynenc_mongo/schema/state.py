"""The state backend's storage layout: collections, document shapes, indexes.

Open this module to see everything pynenc-mongo keeps in MongoDB. Every document
carries ``app_id``: two pynenc apps sharing a database never see, overwrite or
purge each other's documents, and every index starts with ``app_id``.

Collections (names get the ``mongo_collection_prefix``, default ``pynenc_``):

``invocations`` -- one document per invocation::

    {app_id, invocation_id,
     invocation: {invocation_id,
                  call_id: {key, args_id, task_id: {key, module, func_name}},
                  workflow: {workflow_id, parent_workflow_id,
                             workflow_type: {key, module, func_name}} | null,
                  parent_invocation_id, parent_event_id},
     call: {call_id: {...as above...},
            serialized_arguments: [{name, value}]},   # a list: argument names are
                                                      # arbitrary strings
     expire_at?}                                      # only with retention on

``history`` -- one document per history entry, time-indexed::

    {_id: ObjectId (client-made, so a retried insert is idempotent),
     app_id, invocation_id,
     ts: Date (milliseconds, for people and TTL), ts_us: Int64 (microseconds
     since the epoch: the exact order key), status, status_runner_id,
     status_ts_us, runner_context_id, registered_by_inv_id, expire_at?}

  Entries sort by ``(ts_us, _id)``: exact to the microsecond, ties broken by
  ``_id``; two entries with equal status and time are two documents.

``results`` / ``exceptions`` -- ``{app_id, invocation_id, value, expire_at?}``
``runner_contexts`` -- ``{app_id, runner_id, runner_cls, parent_runner_id, pid,
  hostname, thread_id}``
``app_infos`` -- ``{app_id, info: {module, config_values, config_filepath,
  module_filepath, app_variable}}``; ``config_values`` is tagged so sets, tuples
  and bytes round-trip, and the Mongo URL is stored without its password.
``workflow_runs`` -- ``{app_id, workflow_id, workflow_type: {key, module,
  func_name}, parent_workflow_id}``; read newest first (``_id`` descending)
``workflow_sub_invocations`` -- ``{app_id, workflow_id, sub_invocation_id}``
``workflow_data`` -- a workflow's data in bounded bucket documents (the bucket
  pattern): ``{app_id, workflow_id, bucket: 0, 1, ..., keys: [<key digest>...],
  count, bytes, data: {<encoded key>: value}, expire_at?}``. A key lives in one
  bucket (unique multikey index on ``keys``); new keys go to the newest bucket
  until it holds :data:`BUCKET_MAX_KEYS` keys or :data:`BUCKET_SOFT_MAX_BYTES`
  (then the next bucket is upserted), so no document nears 16 MiB and an update
  rewrites one bounded document. A read by key is one query on that index.
  :func:`encode_data_key` makes any string a legal field name (``a.b``, ``$x``,
  ``""``, non-ASCII all round-trip); :func:`data_key_digest` names it in ``keys``.
``value_pieces`` -- pieces of large values: ``{app_id, value_id, owner, n, data:
  BinData, expire_at?}`` (see :mod:`pynenc_mongo.values`).

A stored ``value`` (result, exception, argument, workflow-data value) is either
the serialized string itself or, above ``mongo_inline_value_max_bytes``, a
reference ``{value_id, pieces, size, codec}`` into ``value_pieces``.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Final

from pynenc_mongo.schema.layout import F_APP, IndexSpec, ttl_index

if TYPE_CHECKING:
    pass

# Logical collection names (the prefix is added by :class:`~pynenc_mongo.schema.CollectionNames`).
INVOCATIONS: Final = "invocations"
HISTORY: Final = "history"
RESULTS: Final = "results"
EXCEPTIONS: Final = "exceptions"
RUNNER_CONTEXTS: Final = "runner_contexts"
APP_INFOS: Final = "app_infos"
WORKFLOW_RUNS: Final = "workflow_runs"
WORKFLOW_SUB_INVOCATIONS: Final = "workflow_sub_invocations"
WORKFLOW_DATA: Final = "workflow_data"
VALUE_PIECES: Final = "value_pieces"

#: The state backend's collections (the catalogue, :mod:`pynenc_mongo.schema`, joins
#: them with the other components').
COLLECTIONS: Final = (
    INVOCATIONS,
    HISTORY,
    RESULTS,
    EXCEPTIONS,
    RUNNER_CONTEXTS,
    APP_INFOS,
    WORKFLOW_RUNS,
    WORKFLOW_SUB_INVOCATIONS,
    WORKFLOW_DATA,
    VALUE_PIECES,
)

#: Collections whose documents belong to one invocation and expire with it.
INVOCATION_OWNED: Final = (INVOCATIONS, HISTORY, RESULTS, EXCEPTIONS, VALUE_PIECES)
#: Collections with a TTL index when ``mongo_retention_days`` > 0: the invocation's
#: own, plus a workflow's documents (they expire with the workflow's root invocation).
#: ``runner_contexts`` and ``app_infos`` are kept (one per runner / app).
RETENTION_COLLECTIONS: Final = (
    *INVOCATION_OWNED,
    WORKFLOW_RUNS,
    WORKFLOW_DATA,
    WORKFLOW_SUB_INVOCATIONS,
)

# Field paths used in queries (kept here so indexes and queries agree).
F_INV: Final = "invocation_id"
F_PARENT: Final = "invocation.parent_invocation_id"
F_PARENT_EVENT: Final = "invocation.parent_event_id"
F_WF_ID: Final = "invocation.workflow.workflow_id"
F_WF_TYPE: Final = "invocation.workflow.workflow_type.key"
F_TASK: Final = "invocation.call_id.task_id.key"
F_TS_US: Final = "ts_us"
# Workflow-data bucket documents (see the module docstring).
F_BUCKET: Final = "bucket"
F_KEYS: Final = "keys"
F_COUNT: Final = "count"
F_BYTES: Final = "bytes"

#: Most keys one ``workflow_data`` bucket document takes. With field names of at most
#: 1 KiB and inline values of at most 16 KiB (the workflow-data limits in
#: :mod:`pynenc_mongo.state_backend.workflows`), a bucket stays under 9 MiB even if
#: every value is later overwritten at the largest size: below MongoDB's 16 MiB.
BUCKET_MAX_KEYS: Final = 500
#: A bucket takes no new key once its keys and values, as first written, reach this
#: many bytes (about 1 MiB): buckets of large values hold fewer keys.
BUCKET_SOFT_MAX_BYTES: Final = 1024 * 1024


#: Every index the backend needs; every query it issues is served by one of these
#: (``tests/test_query_coverage.py`` checks each query the test suite issues).
INDEXES: Final[tuple[IndexSpec, ...]] = (
    IndexSpec(INVOCATIONS, ((F_APP, 1), (F_INV, 1)), "app_invocation", unique=True),
    IndexSpec(INVOCATIONS, ((F_APP, 1), (F_PARENT, 1)), "app_parent_invocation"),
    IndexSpec(INVOCATIONS, ((F_APP, 1), (F_PARENT_EVENT, 1)), "app_parent_event"),
    IndexSpec(INVOCATIONS, ((F_APP, 1), (F_WF_ID, 1), (F_WF_TYPE, 1)), "app_workflow"),
    IndexSpec(INVOCATIONS, ((F_APP, 1), (F_WF_TYPE, 1)), "app_workflow_type"),
    IndexSpec(INVOCATIONS, ((F_APP, 1), (F_TASK, 1)), "app_task"),
    IndexSpec(HISTORY, ((F_APP, 1), (F_INV, 1), (F_TS_US, 1), ("_id", 1)), "app_invocation_time"),
    IndexSpec(HISTORY, ((F_APP, 1), (F_TS_US, 1), ("_id", 1)), "app_time"),
    IndexSpec(RESULTS, ((F_APP, 1), (F_INV, 1)), "app_invocation", unique=True),
    IndexSpec(EXCEPTIONS, ((F_APP, 1), (F_INV, 1)), "app_invocation", unique=True),
    IndexSpec(RUNNER_CONTEXTS, ((F_APP, 1), ("runner_id", 1)), "app_runner", unique=True),
    IndexSpec(APP_INFOS, ((F_APP, 1),), "app", unique=True),
    IndexSpec(WORKFLOW_RUNS, ((F_APP, 1), ("workflow_id", 1)), "app_workflow", unique=True),
    # Workflow runs are read newest first (``_id`` descending), by type or all of them.
    IndexSpec(
        WORKFLOW_RUNS,
        ((F_APP, 1), ("workflow_type.key", 1), ("_id", -1)),
        "app_workflow_type_newest",
    ),
    IndexSpec(WORKFLOW_RUNS, ((F_APP, 1), ("_id", -1)), "app_newest"),
    IndexSpec(
        WORKFLOW_SUB_INVOCATIONS,
        ((F_APP, 1), ("workflow_id", 1), ("sub_invocation_id", 1)),
        "app_workflow_sub_invocation",
        unique=True,
    ),
    # One document per bucket; the newest bucket is found by sorting on it.
    IndexSpec(
        WORKFLOW_DATA,
        ((F_APP, 1), ("workflow_id", 1), (F_BUCKET, 1)),
        "app_workflow_bucket",
        unique=True,
    ),
    # Multikey: a read by key is one lookup, and a key is in one bucket only.
    IndexSpec(
        WORKFLOW_DATA,
        ((F_APP, 1), ("workflow_id", 1), (F_KEYS, 1)),
        "app_workflow_key",
        unique=True,
    ),
    IndexSpec(
        VALUE_PIECES, ((F_APP, 1), ("value_id", 1), ("n", 1)), "app_value_piece", unique=True
    ),
    IndexSpec(VALUE_PIECES, ((F_APP, 1), ("owner", 1)), "app_owner"),
    *(ttl_index(c) for c in RETENTION_COLLECTIONS),
)


# ---------------------------------------------------------------------------
# Workflow-data keys
# ---------------------------------------------------------------------------
_KEY_ESCAPES = {"%": "%25", ".": "%2E", "$": "%24", "\x00": "%00"}
_KEY_UNESCAPE = re.compile(r"%(25|2E|24|00|u[0-9A-F]{4})")


def _escape_key_char(ch: str) -> str:
    escaped = _KEY_ESCAPES.get(ch)
    if escaped is not None:
        return escaped
    if "\ud800" <= ch <= "\udfff":  # a lone surrogate: not valid UTF-8, so not BSON
        return f"%u{ord(ch):04X}"
    return ch


def encode_data_key(key: str) -> str:
    """Make any string a legal, addressable MongoDB field name.

    ``%``, ``.``, ``$`` and NUL are percent-escaped (lone surrogates, which no
    UTF-8 field name can hold, become ``%uXXXX``) and a ``k`` is prepended, so
    ``""`` becomes ``"k"``, ``"a.b"`` becomes ``"ka%2Eb"`` and ``"$x"`` becomes
    ``"k%24x"``; the result never starts with ``$`` and never contains ``.``
    (MongoDB manual, "Field Names"), so ``$set: {"data.<encoded>": v}`` works.

    :param str key: the user's workflow-data key.
    :return: the encoded field name.
    :raises TypeError: if ``key`` is not a string.
    """
    if not isinstance(key, str):
        raise TypeError(f"workflow data key: expected a str, got {type(key).__name__}")
    if key.isascii() and not any(ch in key for ch in "%.$\x00"):
        return "k" + key
    return "k" + "".join(_escape_key_char(ch) for ch in key)


def data_key_digest(encoded: str) -> str:
    """The name of a workflow-data key in its bucket's ``keys`` array: 32 hex digits
    of the SHA-256 of the encoded key (128 bits: fixed-size index entries whatever
    the key's length; a collision is not to be expected below 2**64 keys).

    :param str encoded: a field name made by :func:`encode_data_key`.
    :return: the digest, 32 lowercase hex digits.
    """
    return hashlib.sha256(encoded.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def decode_data_key(encoded: str) -> str:
    """Inverse of :func:`encode_data_key`.

    :param str encoded: a field name made by :func:`encode_data_key`.
    :return: the original key.
    """

    def unescape(match: re.Match[str]) -> str:
        code = match.group(1)
        if code.startswith("u"):
            return chr(int(code[1:], 16))
        return chr(int(code, 16))

    return _KEY_UNESCAPE.sub(unescape, encoded[1:])


#: Re-exported by the catalogue (:mod:`pynenc_mongo.schema`) as before the split; the
#: mapping between pynenc's DTOs and these documents is in :mod:`.state_documents`.
__all__ = [
    "APP_INFOS",
    "BUCKET_MAX_KEYS",
    "BUCKET_SOFT_MAX_BYTES",
    "EXCEPTIONS",
    "F_BUCKET",
    "F_BYTES",
    "F_COUNT",
    "F_INV",
    "F_KEYS",
    "F_PARENT",
    "F_PARENT_EVENT",
    "F_TASK",
    "F_TS_US",
    "F_WF_ID",
    "F_WF_TYPE",
    "HISTORY",
    "INVOCATIONS",
    "INVOCATION_OWNED",
    "RESULTS",
    "RETENTION_COLLECTIONS",
    "RUNNER_CONTEXTS",
    "VALUE_PIECES",
    "WORKFLOW_DATA",
    "WORKFLOW_RUNS",
    "WORKFLOW_SUB_INVOCATIONS",
    "data_key_digest",
    "decode_data_key",
    "encode_data_key",
]
