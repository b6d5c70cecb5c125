"""A direct Avro encoder for window rows: the same bytes as ``codec.encode``, twice as fast.

Every emitted window is one Avro message; ``fastavro.schemaless_writer`` spends most of its
~10 µs per row in per-call set-up (schema lookup, writer objects), not in writing. The window
schema is flat (strings, ints/longs, and ``["null", int|long|double]`` unions), so a plan of
field writers built once from the parsed schema writes a row in ~5 µs. The plan is built
from the schema itself, so a new schema version is followed automatically; a schema with
any other kind of field is refused by :func:`compile_encoder`, and the caller falls back to
``codec.encode``. The unit tests check the bytes against fastavro on random rows.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from queuewatch.contract.codec import MAGIC, encode
from queuewatch.contract.schemas import SchemaVersion

_pack_double = struct.Struct("<d").pack

# Field kinds of the plan.
_STRING, _LONG, _OPT_LONG, _OPT_DOUBLE = range(4)


def _write_long(n: int, out: bytearray) -> None:
    """Avro int/long: zig-zag, then base-128 varint, low group first."""
    n = (n << 1) ^ (n >> 63)
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _kind(avro_type: Any) -> int | None:
    if avro_type == "string":
        return _STRING
    if avro_type in ("int", "long"):
        return _LONG
    if isinstance(avro_type, list) and len(avro_type) == 2 and avro_type[0] == "null":
        if avro_type[1] in ("int", "long"):
            return _OPT_LONG
        if avro_type[1] == "double":
            return _OPT_DOUBLE
    return None


def compile_encoder(schema: SchemaVersion) -> Callable[[dict[str, Any]], bytes] | None:
    """An encoder for records of ``schema``, or None if it has a field kind not handled here."""
    plan: list[tuple[str, int]] = []
    for field in schema.parsed["fields"]:
        kind = _kind(field["type"])
        if kind is None:
            return None
        plan.append((field["name"], kind))
    header = MAGIC + schema.fingerprint

    def encode_row(row: dict[str, Any]) -> bytes:
        out = bytearray(header)
        for name, kind in plan:
            value = row[name]
            if kind == _STRING:
                data = value.encode()
                _write_long(len(data), out)
                out += data
            elif kind == _LONG:
                _write_long(value, out)
            elif value is None:
                out.append(0)  # union branch 0: null
            else:
                out.append(2)  # union branch 1 (zig-zag 1)
                if kind == _OPT_LONG:
                    _write_long(value, out)
                else:
                    out += _pack_double(value)
        return bytes(out)

    return encode_row


def window_encoder(schema: SchemaVersion) -> Callable[[dict[str, Any]], bytes]:
    """The fastest correct encoder for ``schema``: compiled if possible, else fastavro."""
    compiled = compile_encoder(schema)
    if compiled is not None:
        return compiled
    return lambda row: encode(row, schema)
