"""Stored values: inline strings, or compressed pieces for large ones.

pynenc hands the backend serialized strings (results, exceptions, call
arguments, workflow-data values). A string whose UTF-8 encoding is at most
``inline_max_bytes`` is stored as-is. A larger one is compressed with zlib
(the standard library's binding of the zlib library), split into pieces of at
most :data:`PIECE_BYTES` bytes stored in the ``value_pieces`` collection, and
the owning document holds a reference ``{value_id, pieces, size, codec}``
instead. No document approaches MongoDB's 16 MiB BSON limit (MongoDB manual,
"BSON Document Size").

Writers insert a new value's pieces *before* pointing a document at them and
delete the old pieces *after*; ``value_id`` is new on every write, so a reader
sees either the complete old value or the complete new one (a reader that
finds pieces missing because they were just replaced raises
:class:`StaleValueError` and re-reads the pointer).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from bson import Binary, ObjectId

#: Largest piece in bytes (well under the 16 MiB document limit).
PIECE_BYTES = 8 * 1024 * 1024
CODEC = "zlib"


class StaleValueError(RuntimeError):
    """The pieces a reference points to were replaced while being read."""


@dataclass(frozen=True)
class PreparedValue:
    """A value ready to store.

    :ivar stored: what goes in the owning document (the string, or a reference dict).
    :ivar list[dict] pieces: ``value_pieces`` documents to insert first (empty if inline).
    """

    stored: str | dict[str, Any]
    pieces: list[dict[str, Any]]


def encode_text(text: str) -> bytes:
    """UTF-8 with surrogates passed through, so any Python ``str`` round-trips.

    :param str text: any string.
    :return: its bytes.
    """
    return text.encode("utf-8", "surrogatepass")


def is_bson_string(text: str) -> bool:
    """True if MongoDB can hold ``text`` as a BSON string (valid UTF-8: no lone surrogates)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def prepare(
    app_id: str, owner: str, text: str, inline_max_bytes: int, force_pieces: bool = False
) -> PreparedValue:
    """Decide how to store ``text``.

    Inline when its UTF-8 encoding is at most ``inline_max_bytes`` and it is a
    valid BSON string; otherwise compressed pieces (a Python ``str`` with lone
    surrogates cannot be a BSON string, but its bytes round-trip in pieces).

    :param str app_id: owning app (every piece carries it).
    :param str owner: the invocation id (or ``workflow:<id>``) owning the value,
        so retention and purge can find its pieces.
    :param str text: the serialized value.
    :param int inline_max_bytes: inline threshold in bytes of UTF-8.
    :param bool force_pieces: store as pieces whatever the size (used when the
        owning document has no room left for the value inline).
    :return: :class:`PreparedValue`.
    :raises TypeError: if ``text`` is not a ``str``.
    """
    if not isinstance(text, str):
        raise TypeError(f"stored value: expected a serialized str, got {type(text).__name__}")
    if not force_pieces and (
        len(text) * 4 <= inline_max_bytes or len(encode_text(text)) <= inline_max_bytes
    ):
        if is_bson_string(text):
            return PreparedValue(text, [])
    raw = encode_text(text)
    packed = zlib.compress(raw, 6)
    value_id = str(ObjectId())
    pieces = [
        {
            "app_id": app_id,
            "value_id": value_id,
            "owner": owner,
            "n": n,
            "data": Binary(packed[start : start + PIECE_BYTES]),
        }
        for n, start in enumerate(range(0, max(len(packed), 1), PIECE_BYTES))
    ]
    ref = {"value_id": value_id, "pieces": len(pieces), "size": len(raw), "codec": CODEC}
    return PreparedValue(ref, pieces)


def stored_size(stored: str | dict[str, Any]) -> int:
    """Approximate bytes ``stored`` takes in its owning document (UTF-8 length for
    strings, a fixed 120 bytes for a reference)."""
    if isinstance(stored, str):
        return len(stored) if stored.isascii() else len(encode_text(stored))
    return 120


def reference_id(stored: Any) -> str | None:
    """The ``value_id`` of a stored reference, or None for inline values.

    :param stored: what an owning document holds (a string, a reference dict or None).
    :return: the reference's ``value_id`` or None.
    """
    if isinstance(stored, dict):
        value_id = stored.get("value_id")
        return str(value_id) if value_id is not None else None
    return None


def assemble(stored: dict[str, Any], pieces: list[dict[str, Any]]) -> str:
    """Rebuild a large value from its reference and its pieces (sorted by ``n``).

    :param dict stored: the reference ``{value_id, pieces, size, codec}``.
    :param list[dict] pieces: the ``value_pieces`` documents, sorted by ``n``.
    :return: the original string, byte-identical.

    :raises StaleValueError: if pieces are missing (replaced concurrently).
    :raises ValueError: if the codec is unknown or the size does not match.
    """
    if len(pieces) != stored["pieces"]:
        raise StaleValueError(
            f"value {stored['value_id']}: expected {stored['pieces']} pieces, found {len(pieces)}"
        )
    if stored.get("codec") != CODEC:
        raise ValueError(f"value {stored['value_id']}: unknown codec {stored.get('codec')!r}")
    try:
        raw = zlib.decompress(b"".join(bytes(p["data"]) for p in pieces))
    except zlib.error as exc:
        raise ValueError(f"value {stored['value_id']}: pieces do not decompress: {exc}") from None
    if len(raw) != stored["size"]:
        raise ValueError(f"value {stored['value_id']}: size {len(raw)} != {stored['size']}")
    return raw.decode("utf-8", "surrogatepass")
