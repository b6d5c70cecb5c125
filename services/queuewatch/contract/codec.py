"""Avro single-object encoding of queuewatch records.

Wire layout (Avro specification, "Single object encoding"):

1. two marker bytes ``0xC3 0x01``;
2. the 8-byte little-endian CRC-64-AVRO fingerprint of the writer's schema;
3. the Avro binary encoding of the record.

fastavro does not add or read the header itself, so this module does. A reader resolves the
writer's version (found by fingerprint) to its own, so old and new producers can share a topic.
A payload of the reader's own version is read by a small direct reader when it is plain
(see below), else by fastavro, which also words every error.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from queuewatch.contract.schemas import SchemaRegistry, SchemaVersion, default_registry
from queuewatch.errors import QueuewatchError

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8


class DecodeError(QueuewatchError):
    """Bytes that cannot be turned into a record; ``code`` names the kind for the DLQ."""

    code = "decode_error"


class NotSingleObjectError(DecodeError):
    """The payload does not start with the single-object marker 0xC3 0x01."""

    code = "not_single_object"


class UnknownFingerprintError(DecodeError):
    """The payload was written with a schema this reader does not know."""

    code = "unknown_fingerprint"


class MalformedPayloadError(DecodeError):
    """The header is fine but the Avro body is truncated or garbage."""

    code = "malformed_payload"


class EncodeError(QueuewatchError):
    """A record does not fit the schema (a wrong type or a missing field)."""


def encode(record: dict[str, Any], schema: SchemaVersion) -> bytes:
    """Encode one record with the single-object header of ``schema``."""
    buf = io.BytesIO()
    buf.write(MAGIC)
    buf.write(schema.fingerprint)
    try:
        schemaless_writer(buf, schema.parsed, record)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise EncodeError(f"record does not fit {schema.name} v{schema.version}: {exc}") from exc
    return buf.getvalue()


def writer_schema(payload: bytes, registry: SchemaRegistry | None = None) -> SchemaVersion:
    """The schema version a payload was written with, read from its header."""
    registry = registry or default_registry()
    if len(payload) < HEADER_SIZE or payload[:2] != MAGIC:
        raise NotSingleObjectError(
            f"payload of {len(payload)} bytes does not start with the Avro single-object "
            "marker C3 01; publish with the queuewatch SDK or `queuewatch publish`"
        )
    fp = bytes(payload[2:HEADER_SIZE])
    try:
        return registry.by_fingerprint[fp]
    except KeyError:
        raise UnknownFingerprintError(
            f"schema fingerprint {fp.hex()} is not in schemas/; add the writer's .avsc file "
            "to schemas/ (older versions stay as <name>.v<N>.avsc)"
        ) from None


# --- a direct reader for the common case ---------------------------------------------------
#
# fastavro's ``schemaless_reader`` spends ~6 µs on a QueueReport, most of it walking the
# schema for every field. When writer and reader are the same version (nearly always), a
# reader built once from the schema does the same in ~4 µs. It takes only the plain path:
# anything unusual (a long varint, a multi-byte union or enum index, a length past the end,
# bad UTF-8, a trailing byte, any exception at all) makes it give up, and fastavro decodes the
# payload as before, so every error and every edge case stays fastavro's. The unit tests
# compare both on valid records and on random and mutated bytes.

#: (payload, position) -> (value, next position)
_Read = Callable[[bytes, int], tuple[Any, int]]
_unpack_double = struct.Struct("<d").unpack_from


class _GiveUp(Exception):
    """The direct reader leaves this payload to fastavro."""


def _read_long(data: bytes, i: int) -> tuple[int, int]:
    b = data[i]
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), i + 1
    n = b & 0x7F
    shift = 7
    while True:
        i += 1
        b = data[i]
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return (n >> 1) ^ -(n & 1), i + 1
        shift += 7
        if shift > 56:  # 9 bytes at most: beyond, fastavro's 64-bit arithmetic decides
            raise _GiveUp


def _read_string(data: bytes, i: int) -> tuple[str, int]:
    size = data[i]
    if size < 0x80:  # a one-byte length
        size = (size >> 1) ^ -(size & 1)
        i += 1
    else:
        size, i = _read_long(data, i)
    end = i + size
    if size < 0 or end > len(data):
        raise _GiveUp
    return data[i:end].decode(), end


def _read_double(data: bytes, i: int) -> tuple[float, int]:
    return _unpack_double(data, i)[0], i + 8


def _read_null(data: bytes, i: int) -> tuple[None, int]:
    return None, i


_PRIMITIVES: dict[str, _Read] = {
    "string": _read_string,
    "int": _read_long,
    "long": _read_long,
    "double": _read_double,
    "null": _read_null,
}


def _compile(avro_type: Any) -> _Read:
    """A reader for a parsed schema made of records, enums, unions and the primitives above."""
    if isinstance(avro_type, str):
        if avro_type not in _PRIMITIVES:
            raise _GiveUp  # a named type referenced by name, or a type not handled here
        return _PRIMITIVES[avro_type]
    if isinstance(avro_type, list):
        branches = [_compile(t) for t in avro_type]
        limit = 2 * len(branches)

        def read_union(data: bytes, i: int) -> tuple[Any, int]:
            b = data[i]  # the branch index: one byte, zig-zag (so even), below 2 * len
            if b & 1 or b >= limit:
                raise _GiveUp
            return branches[b >> 1](data, i + 1)

        return read_union
    kind = avro_type.get("type") if isinstance(avro_type, dict) else None
    if kind == "enum":
        symbols = list(avro_type["symbols"])
        count = 2 * len(symbols)

        def read_enum(data: bytes, i: int) -> tuple[str, int]:
            b = data[i]  # the symbol index, as for a union
            if b & 1 or b >= count:
                raise _GiveUp
            return symbols[b >> 1], i + 1

        return read_enum
    if kind == "record":
        fields = [(f["name"], _compile(f["type"])) for f in avro_type["fields"]]

        def read_record(data: bytes, i: int) -> tuple[dict[str, Any], int]:
            record = {}
            for name, reader in fields:
                record[name], i = reader(data, i)
            return record, i

        return read_record
    raise _GiveUp


_direct_readers: dict[bytes, _Read | None] = {}


def _direct_reader(schema: SchemaVersion) -> _Read | None:
    """The direct reader of a schema version (built once), or None if it cannot have one."""
    try:
        return _direct_readers[schema.fingerprint]
    except KeyError:
        pass
    try:
        reader: _Read | None = _compile(schema.parsed)
    except _GiveUp:
        reader = None
    _direct_readers[schema.fingerprint] = reader
    return reader


def _read_directly(payload: bytes, schema: SchemaVersion) -> dict[str, Any] | None:
    """The record, or None when fastavro must decide."""
    reader = _direct_reader(schema)
    if reader is None:
        return None
    try:
        record, end = reader(payload, HEADER_SIZE)
    except Exception:  # _GiveUp, IndexError past the end, UnicodeDecodeError, struct.error
        return None
    if end != len(payload) or not isinstance(record, dict):
        return None
    return record


def decode(
    payload: bytes, reader: SchemaVersion, registry: SchemaRegistry | None = None
) -> dict[str, Any]:
    """Decode a single-object payload into a record shaped by the ``reader`` schema."""
    writer = writer_schema(payload, registry)
    if writer.fingerprint == reader.fingerprint and type(payload) is bytes:
        direct = _read_directly(payload, writer)
        if direct is not None:
            return direct
    return _decode_with_fastavro(payload, writer, reader)


def _decode_with_fastavro(
    payload: bytes, writer: SchemaVersion, reader: SchemaVersion
) -> dict[str, Any]:
    """The reference decoder: every payload the direct reader leaves, and every error."""
    buf = io.BytesIO(payload)
    buf.seek(HEADER_SIZE)
    try:
        if writer.fingerprint == reader.fingerprint:
            record = schemaless_reader(buf, writer.parsed, None)
        else:
            record = schemaless_reader(buf, writer.parsed, reader.parsed)
    except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError, ... on garbage
        raise MalformedPayloadError(
            f"Avro body does not decode as {writer.name} v{writer.version}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if buf.tell() != len(payload):
        raise MalformedPayloadError(
            f"{len(payload) - buf.tell()} trailing bytes after the Avro body of "
            f"{writer.name} v{writer.version}; the payload is corrupt"
        )
    if not isinstance(record, dict):
        raise MalformedPayloadError(f"decoded value is not a record: {type(record).__name__}")
    return record
