"""Results and exceptions: one value per invocation in ``results`` / ``exceptions``.

The value is the serialized text pynenc gives; the store keeps it inline or, when
large, as pieces in ``value_pieces`` (:meth:`pynenc_mongo.store.MongoStore.write_value`:
new pieces first, then the pointer, old pieces last, so a reader sees the old or
the new value, never a mix). Deserializing is the backend's business (pynenc's
client data store and ``deserialize_exception``).
"""

from __future__ import annotations

from pynenc_mongo.schema import F_APP, F_INV
from pynenc_mongo.state_backend.common import StorePart, check_str


class InvocationValues(StorePart):
    """Set and read the serialized result or exception of an invocation.

    :param MongoStore store: the app's store.
    """

    def set(self, logical: str, invocation_id: str, text: str) -> None:
        """Store (or replace) the value of ``invocation_id``.

        :param str logical: :data:`schema.RESULTS` or :data:`schema.EXCEPTIONS`.
        :param str invocation_id: the invocation (also the owner of its pieces).
        :param str text: the serialized value.
        :raises TypeError: if ``invocation_id`` is not a str.
        :raises pynenc_mongo.errors.MongoLimitError: if even a reference does not fit.
        :raises pynenc_mongo.errors.MongoIndexMissingError: its unique index is missing.
        """
        check_str("invocation_id", invocation_id)
        filter_ = {F_APP: self.app_id, F_INV: invocation_id}
        self.require_unique(logical)  # two first writers would both insert without it
        self.store.write_value(logical, filter_, "value", invocation_id, text)

    def get(self, logical: str, invocation_id: str, what: str) -> str:
        """The value of ``invocation_id``.

        :param str what: ``"Result"`` or ``"Exception"``, for the message.
        :raises KeyError: ``"<what> for invocation <id> not found"`` (pynenc's contract).
        :raises TypeError: if ``invocation_id`` is not a str.
        """
        check_str("invocation_id", invocation_id)
        filter_ = {F_APP: self.app_id, F_INV: invocation_id}
        found, text = self.store.read_value(logical, filter_, "value")
        if not found:
            raise KeyError(f"{what} for invocation {invocation_id} not found")
        return text


__all__ = ["InvocationValues"]
