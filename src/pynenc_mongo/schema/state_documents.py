"""The state backend's documents: pynenc DTOs to MongoDB documents and back.

The collections, fields and indexes these documents live in are declared in
:mod:`pynenc_mongo.schema.state`; this module only maps.
"""

from __future__ import annotations

import enum
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from bson.int64 import Int64

from pynenc_mongo.schema.layout import F_APP, from_us, to_us

if TYPE_CHECKING:
    from pynenc.app_info import AppInfo
    from pynenc.models.call_dto import CallDTO
    from pynenc.models.invocation_dto import InvocationDTO
    from pynenc.runner.runner_context import RunnerContext
    from pynenc.state_backend.base_state_backend import InvocationHistory
    from pynenc.workflow.workflow_identity import WorkflowIdentity

from pynenc_mongo.schema.state import F_INV, F_TS_US


# ---------------------------------------------------------------------------
# DTO <-> document mapping
# ---------------------------------------------------------------------------
def task_id_doc(task_id: Any) -> dict[str, str]:
    """``TaskId`` -> ``{key, module, func_name}``."""
    return {"key": task_id.key, "module": task_id.module, "func_name": task_id.func_name}


def call_id_doc(call_id: Any) -> dict[str, Any]:
    """``CallId`` -> ``{key, args_id, task_id: {...}}``."""
    return {"key": call_id.key, "args_id": call_id.args_id, "task_id": task_id_doc(call_id.task_id)}


def workflow_doc(workflow: WorkflowIdentity | None) -> dict[str, Any] | None:
    """``WorkflowIdentity`` -> ``{workflow_id, workflow_type, parent_workflow_id}``."""
    if workflow is None:
        return None
    return {
        "workflow_id": workflow.workflow_id,
        "workflow_type": task_id_doc(workflow.workflow_type),
        "parent_workflow_id": workflow.parent_workflow_id,
    }


def invocation_doc(
    app_id: str,
    inv: InvocationDTO,
    call: CallDTO,
    stored_arguments: list[dict[str, Any]],
) -> dict[str, Any]:
    """Build an ``invocations`` document.

    :param str app_id: owning app.
    :param InvocationDTO inv: the invocation DTO.
    :param CallDTO call: its call DTO.
    :param list stored_arguments: ``[{name, value}]`` with values already passed
        through :mod:`pynenc_mongo.values` (inline string or piece reference).
    :return: the document (no ``_id``: MongoDB assigns one).
    """
    return {
        F_APP: app_id,
        F_INV: inv.invocation_id,
        "invocation": {
            "invocation_id": inv.invocation_id,
            "call_id": call_id_doc(inv.call_id),
            "workflow": workflow_doc(inv.workflow),
            "parent_invocation_id": inv.parent_invocation_id,
            "parent_event_id": getattr(inv, "parent_event_id", None),
        },
        "call": {"call_id": call_id_doc(call.call_id), "serialized_arguments": stored_arguments},
    }


def task_id_from(doc: dict[str, Any]) -> Any:
    """``{module, func_name}`` -> ``TaskId``."""
    from pynenc.identifiers.task_id import TaskId

    return TaskId(doc["module"], doc["func_name"])


def call_id_from(doc: dict[str, Any]) -> Any:
    """``{args_id, task_id}`` -> ``CallId``."""
    from pynenc.identifiers.call_id import CallId

    return CallId(task_id=task_id_from(doc["task_id"]), args_id=doc["args_id"])


def workflow_from(doc: dict[str, Any] | None) -> WorkflowIdentity | None:
    """Inverse of :func:`workflow_doc`."""
    if not doc:
        return None
    from pynenc.workflow.workflow_identity import WorkflowIdentity

    return WorkflowIdentity(
        workflow_id=doc["workflow_id"],
        workflow_type=task_id_from(doc["workflow_type"]),
        parent_workflow_id=doc.get("parent_workflow_id") or None,
    )


def invocation_dto_from(doc: dict[str, Any]) -> InvocationDTO:
    """The ``invocation`` sub-document -> ``InvocationDTO`` (0.2.3 and 0.4.x)."""
    from dataclasses import fields

    from pynenc.models.invocation_dto import InvocationDTO

    inv = doc["invocation"]
    kwargs: dict[str, Any] = {
        "invocation_id": inv["invocation_id"],
        "call_id": call_id_from(inv["call_id"]),
        "workflow": workflow_from(inv.get("workflow")),
        "parent_invocation_id": inv.get("parent_invocation_id"),
    }
    if "parent_event_id" in {f.name for f in fields(InvocationDTO)}:  # pynenc >= 0.4
        kwargs["parent_event_id"] = inv.get("parent_event_id")
    return InvocationDTO(**kwargs)


def history_doc(app_id: str, invocation_id: str, history: InvocationHistory) -> dict[str, Any]:
    """Build a ``history`` document with a client-made ``_id``."""
    ts_us = to_us(history.timestamp)
    record = history.status_record
    return {
        "_id": ObjectId(),
        F_APP: app_id,
        F_INV: invocation_id,
        "ts": history.timestamp,
        F_TS_US: Int64(ts_us),
        "status": str(record.status.value),
        "status_runner_id": record.runner_id,
        "status_ts_us": Int64(to_us(record.timestamp)),
        "runner_context_id": history.runner_context_id,
        "registered_by_inv_id": history.registered_by_inv_id,
    }


def history_from(doc: dict[str, Any]) -> InvocationHistory:
    """Inverse of :func:`history_doc`; timestamps exact to the microsecond."""
    from pynenc.invocation.status import InvocationStatus, InvocationStatusRecord
    from pynenc.state_backend.base_state_backend import InvocationHistory

    history = InvocationHistory(
        invocation_id=doc[F_INV],
        status_record=InvocationStatusRecord(
            status=InvocationStatus(doc["status"]),
            runner_id=doc.get("status_runner_id"),
            timestamp=from_us(doc["status_ts_us"]),
        ),
        runner_context_id=doc["runner_context_id"],
        registered_by_inv_id=doc.get("registered_by_inv_id"),
    )
    history._timestamp = from_us(doc[F_TS_US])
    return history


def runner_context_doc(app_id: str, ctx: RunnerContext) -> dict[str, Any]:
    """Build a ``runner_contexts`` document (the parent is referenced by id)."""
    return {
        F_APP: app_id,
        "runner_id": ctx.runner_id,
        "runner_cls": ctx.runner_cls,
        "parent_runner_id": ctx.parent_ctx.runner_id if ctx.parent_ctx else None,
        "pid": ctx.pid,
        "hostname": ctx.hostname,
        "thread_id": ctx.thread_id,
    }


def workflow_run_doc(app_id: str, workflow: WorkflowIdentity) -> dict[str, Any]:
    """Build a ``workflow_runs`` document."""
    return {
        F_APP: app_id,
        "workflow_id": workflow.workflow_id,
        "workflow_type": task_id_doc(workflow.workflow_type),
        "parent_workflow_id": workflow.parent_workflow_id,
    }


def workflow_run_from(doc: dict[str, Any]) -> WorkflowIdentity:
    """Inverse of :func:`workflow_run_doc`."""
    workflow = workflow_from(doc)
    assert workflow is not None
    return workflow


# ---------------------------------------------------------------------------
# App info: config values hold sets, tuples, bytes (pynenc itself puts a set in
# ``trigger_task_modules``), so they are stored as tagged JSON-compatible BSON.
# ---------------------------------------------------------------------------
_TAG = "__pynenc_mongo_type__"


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def encode_config_value(value: Any) -> Any:
    """Encode a config value into BSON-safe data that :func:`decode_config_value` inverts.

    Sets (sorted by repr for a stable document), frozensets, tuples, bytes,
    integers beyond BSON's 64 bits, strings that are not valid UTF-8 (lone
    surrogates), datetimes, dates and timedeltas are tagged; dicts are kept as a
    list of pairs, so any key (``a.b``, ``$x``, ``1``) survives; enums keep their
    value; any other object is stored as ``{tag: "repr", value: repr(x)}`` and
    comes back as that string.

    :param value: a config value (anything).
    :return: BSON-encodable data.
    """
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return value
        return {_TAG: "int", "value": str(value)}
    if isinstance(value, str):
        if value.isascii():
            return value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return {_TAG: "str", "hex": value.encode("utf-8", "surrogatepass").hex()}
        return value
    if isinstance(value, list):
        return [encode_config_value(v) for v in value]
    if isinstance(value, set | frozenset):
        items = sorted((encode_config_value(v) for v in value), key=repr)
        return {_TAG: type(value).__name__, "items": items}
    if isinstance(value, tuple):
        return {_TAG: "tuple", "items": [encode_config_value(v) for v in value]}
    if isinstance(value, bytes | bytearray):
        return {_TAG: "bytes", "hex": bytes(value).hex()}
    if isinstance(value, dict):
        return {
            _TAG: "dict",
            "items": [[encode_config_value(k), encode_config_value(v)] for k, v in value.items()],
        }
    if isinstance(value, enum.Enum):
        return {
            _TAG: "enum",
            "name": type(value).__name__,
            "value": encode_config_value(value.value),
        }
    if isinstance(value, datetime):
        return {_TAG: "datetime", "iso": value.isoformat()}
    if isinstance(value, date):
        return {_TAG: "date", "iso": value.isoformat()}
    if isinstance(value, timedelta):
        return {
            _TAG: "timedelta",
            "days": value.days,
            "seconds": value.seconds,
            "microseconds": value.microseconds,
        }
    return {_TAG: "repr", "value": encode_config_value(repr(value))}


def decode_config_value(value: Any) -> Any:
    """Inverse of :func:`encode_config_value` (enums come back as their value).

    :param value: data made by :func:`encode_config_value`.
    :return: the config value.
    """
    if isinstance(value, list):
        return [decode_config_value(v) for v in value]
    if not isinstance(value, dict):
        return value
    tag = value.get(_TAG)
    if tag in ("set", "frozenset"):
        items = [decode_config_value(v) for v in value["items"]]
        return set(items) if tag == "set" else frozenset(items)
    if tag == "tuple":
        return tuple(decode_config_value(v) for v in value["items"])
    if tag == "bytes":
        return bytes.fromhex(value["hex"])
    if tag == "str":
        return bytes.fromhex(value["hex"]).decode("utf-8", "surrogatepass")
    if tag == "int":
        return int(value["value"])
    if tag == "dict":
        return {decode_config_value(k): decode_config_value(v) for k, v in value["items"]}
    if tag == "enum":
        return decode_config_value(value["value"])
    if tag == "datetime":
        return datetime.fromisoformat(value["iso"])
    if tag == "date":
        return date.fromisoformat(value["iso"])
    if tag == "timedelta":
        return timedelta(
            days=value["days"], seconds=value["seconds"], microseconds=value["microseconds"]
        )
    if tag == "repr":
        return decode_config_value(value["value"])
    return {k: decode_config_value(v) for k, v in value.items()}


def app_info_doc(app_info: AppInfo, safe_config_values: dict[str, Any] | None) -> dict[str, Any]:
    """Build an ``app_infos`` document.

    :param AppInfo app_info: pynenc's app info.
    :param dict | None safe_config_values: ``app_info.config_values`` with secrets
        already removed by the caller.
    """
    return {
        F_APP: app_info.app_id,
        "info": {
            "module": app_info.module,
            "config_values": encode_config_value(safe_config_values),
            "config_filepath": app_info.config_filepath,
            "module_filepath": app_info.module_filepath,
            "app_variable": app_info.app_variable,
        },
    }


def app_info_from(doc: dict[str, Any]) -> AppInfo:
    """Inverse of :func:`app_info_doc`."""
    from pynenc.app_info import AppInfo

    info = doc["info"]
    return AppInfo(
        app_id=doc[F_APP],
        module=info["module"],
        config_values=decode_config_value(info.get("config_values")),
        config_filepath=info.get("config_filepath"),
        module_filepath=info.get("module_filepath"),
        app_variable=info.get("app_variable"),
    )


#: Re-exported by the catalogue (:mod:`pynenc_mongo.schema`).
__all__ = [
    "app_info_doc",
    "app_info_from",
    "call_id_doc",
    "call_id_from",
    "decode_config_value",
    "encode_config_value",
    "history_doc",
    "history_from",
    "invocation_doc",
    "invocation_dto_from",
    "runner_context_doc",
    "task_id_doc",
    "task_id_from",
    "workflow_doc",
    "workflow_from",
    "workflow_run_doc",
    "workflow_run_from",
]
