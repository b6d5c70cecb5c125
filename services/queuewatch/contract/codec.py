"""Avro single-object encoding of queuewatch records.

Wire layout (Avro specification, "Single object encoding"):

1. two marker bytes ``0xC3 0x01``;
2. the 8-byte little-endian CRC-64-AVRO fingerprint of the writer's schema;
3. the Avro binary encoding of the record.

fastavro does not add or read the header itself, so this module does. A reader resolves the
writer's version (found by fingerprint) to its own, so old and new producers can share a topic.
"""

from __future__ import annotations

import io
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from queuewatch.contract.decoder import compile_decoder
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


def decode(
    payload: bytes, reader: SchemaVersion, registry: SchemaRegistry | None = None
) -> dict[str, Any]:
    """Decode a single-object payload into a record shaped by the ``reader`` schema."""
    writer = writer_schema(payload, registry)
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


class Decoder:
    """Decodes payloads into records of one reader schema: compiled when it can be.

    Bytes written with the reader's own version (nearly all of them) go through the decoder
    :mod:`queuewatch.contract.decoder` compiles from the schema, about 4x as fast as
    fastavro; bytes of another version go through :func:`decode`, which resolves them.
    Both give the same record (tests/unit/test_decoder.py checks it on random ones) and
    refuse malformed bytes with a ``DecodeError``.
    With ``as_row`` a record comes back as the tuple of its top-level values in field order.
    """

    def __init__(
        self, reader: SchemaVersion, registry: SchemaRegistry | None = None, as_row: bool = False
    ) -> None:
        self.reader = reader
        self.registry = registry or default_registry()
        self.as_row = as_row
        self.fields = tuple(str(f["name"]) for f in reader.parsed["fields"])
        self._header = MAGIC + reader.fingerprint
        self._compiled = compile_decoder(reader.parsed, as_row=as_row)

    def read(self, payload: bytes) -> tuple[Any, SchemaVersion]:
        """The record of ``payload`` and the schema version it was written with."""
        compiled = self._compiled
        if compiled is not None and payload[:HEADER_SIZE] == self._header:
            try:
                return compiled(payload, HEADER_SIZE), self.reader
            except Exception as exc:  # ValueError, IndexError, struct.error on garbage
                raise MalformedPayloadError(
                    f"Avro body does not decode as {self.reader.name} v{self.reader.version}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        writer = writer_schema(payload, self.registry)
        record = decode(payload, self.reader, self.registry)
        if self.as_row:
            return tuple(record[name] for name in self.fields), writer
        return record, writer

    def __call__(self, payload: bytes) -> Any:
        """The record of ``payload`` (a dict, or a tuple with ``as_row``)."""
        return self.read(payload)[0]
