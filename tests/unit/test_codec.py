"""The wire codec: any valid report survives encode/decode; broken bytes raise typed errors."""

from __future__ import annotations

import contextlib
import re
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queuewatch.contract import codec
from queuewatch.contract.codec import (
    HEADER_SIZE,
    MAGIC,
    DecodeError,
    MalformedPayloadError,
    NotSingleObjectError,
    UnknownFingerprintError,
    decode,
    encode,
    writer_schema,
)
from queuewatch.contract.schemas import QUEUE_REPORT, default_registry
from queuewatch.contract.validation import (
    COUNTRY_CODES,
    SOURCE_TYPES,
    STATUSES,
    TRAFFIC_CLASSES,
    validate_record,
)

SCHEMA = default_registry().latest(QUEUE_REPORT)
NOW = 1_664_105_400_000


def _optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def _finite(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


countries = st.sampled_from(sorted(COUNTRY_CODES))
valid_records = st.fixed_dictionaries(
    {
        "event_id": st.text(min_size=1, max_size=64).filter(lambda s: not s.isspace()),
        "crossing_id": st.from_regex(r"[a-z0-9][a-z0-9-]{0,63}", fullmatch=True),
        "from_country": countries,
        "to_country": countries,
        "traffic_class": st.sampled_from(sorted(TRAFFIC_CLASSES)),
        "observed_at": st.integers(0, NOW + 600_000),
        "source": st.fixed_dictionaries(
            {
                "type": st.sampled_from(sorted(SOURCE_TYPES)),
                "name": st.text(min_size=1, max_size=128).filter(lambda s: not s.isspace()),
                "url": _optional(
                    st.from_regex(r"https?://[a-z0-9.]{1,30}(/[a-z0-9/]{0,40})?", fullmatch=True)
                ),
            }
        ),
        "wait_minutes": st.integers(0, 20160),
        "queue_vehicles": _optional(st.integers(0, 100000)),
        "queue_persons": _optional(st.integers(0, 1000000)),
        "queue_length_km": _optional(_finite(0, 500)),
        "throughput_per_hour": _optional(_finite(0, 10000)),
        "lanes_open": _optional(st.integers(0, 200)),
        "status": st.sampled_from(sorted(STATUSES)),
        "location": _optional(
            st.fixed_dictionaries({"lat": _finite(-90, 90), "lon": _finite(-180, 180)})
        ),
        "note": _optional(st.text(max_size=2000)),
    }
)


def sample_record() -> dict[str, Any]:
    return {
        "event_id": "e-1",
        "crossing_id": "kz-ru-syrym",
        "from_country": "RU",
        "to_country": "KZ",
        "traffic_class": "car",
        "observed_at": NOW,
        "source": {"type": "crowd", "name": "Uralsk hot-line", "url": None},
        "wait_minutes": 720,
        "queue_vehicles": None,
        "queue_persons": None,
        "queue_length_km": 12.5,
        "throughput_per_hour": None,
        "lanes_open": None,
        "status": "delay",
        "location": None,
        "note": "Очередь 20 км",
    }


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(valid_records)
def test_any_valid_report_round_trips_unchanged(record: dict[str, Any]) -> None:
    assert validate_record(record, NOW) == []
    payload = encode(record, SCHEMA)
    assert decode(payload, SCHEMA) == record


def test_payload_starts_with_marker_and_writer_fingerprint() -> None:
    payload = encode(sample_record(), SCHEMA)
    assert payload[:2] == MAGIC == b"\xc3\x01"
    assert payload[2:HEADER_SIZE] == SCHEMA.fingerprint
    assert len(SCHEMA.fingerprint) == 8
    assert writer_schema(payload) is SCHEMA


def test_fingerprint_is_crc64_avro_little_endian_of_canonical_form() -> None:
    from fastavro.schema import to_parsing_canonical_form

    # The Avro specification's CRC-64-AVRO, computed here independently of fastavro.
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in to_parsing_canonical_form(SCHEMA.raw).encode():
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    assert SCHEMA.fingerprint == struct.pack("<Q", fp)


def test_unknown_fingerprint_raises_typed_error() -> None:
    payload = bytearray(encode(sample_record(), SCHEMA))
    payload[2:HEADER_SIZE] = b"\x00" * 8
    with pytest.raises(UnknownFingerprintError) as info:
        decode(bytes(payload), SCHEMA)
    assert info.value.code == "unknown_fingerprint"
    assert "0000000000000000" in str(info.value)


@pytest.mark.parametrize("cut", [HEADER_SIZE, HEADER_SIZE + 1, HEADER_SIZE + 5, -1, -3])
def test_truncated_payload_raises_malformed(cut: int) -> None:
    payload = encode(sample_record(), SCHEMA)
    with pytest.raises(MalformedPayloadError) as info:
        decode(payload[:cut], SCHEMA)
    assert info.value.code == "malformed_payload"


@pytest.mark.parametrize("payload", [b"", b"\xc3", b"\xc3\x01abc", b"hello world, not avro"])
def test_short_or_unmarked_payload_raises_not_single_object(payload: bytes) -> None:
    with pytest.raises(NotSingleObjectError):
        decode(payload, SCHEMA)


def test_json_text_payload_is_not_single_object() -> None:
    with pytest.raises(NotSingleObjectError) as info:
        decode(b'{"event_id": "e-1"}', SCHEMA)
    assert info.value.code == "not_single_object"


def test_trailing_bytes_raise_malformed() -> None:
    with pytest.raises(MalformedPayloadError):
        decode(encode(sample_record(), SCHEMA) + b"\x00", SCHEMA)


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_garbage_after_a_valid_header_raises_only_decode_errors(body: bytes) -> None:
    payload = MAGIC + SCHEMA.fingerprint + body
    try:
        record = decode(payload, SCHEMA)
    except DecodeError:
        return
    # Rarely random bytes do form a record; then it must at least be a dict of the schema.
    assert set(record) == {f["name"] for f in SCHEMA.raw["fields"]}


@settings(max_examples=200)
@given(st.binary(max_size=100))
def test_any_bytes_decode_or_raise_a_decode_error(payload: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(payload, SCHEMA)


# --- the direct reader against fastavro ------------------------------------------------------
# decode() reads the common case itself and leaves everything else to fastavro; whatever the
# bytes, the outcome (record, or error type and message) must be fastavro's.

LONG = st.integers(-(2**63), 2**63 - 1)
any_shaped_records = valid_records.flatmap(
    lambda rec: st.fixed_dictionaries(
        {
            **{k: st.just(v) for k, v in rec.items()},
            "observed_at": st.one_of(st.just(rec["observed_at"]), LONG),
            "wait_minutes": st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)),
            "queue_length_km": _optional(st.floats()),
            "event_id": st.text(max_size=300),
        }
    )
)


def _outcome(read: Any) -> tuple[Any, ...]:
    try:
        record = read()
    except DecodeError as exc:  # fastavro names its buffer object: drop the address
        return ("error", type(exc), re.sub(r" at 0x[0-9a-f]+", "", str(exc)))
    return ("record", repr(record))  # repr: key order, int vs float, NaN all count


def _fastavro(payload: bytes) -> dict[str, Any]:
    return codec._decode_with_fastavro(payload, writer_schema(payload), SCHEMA)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(any_shaped_records)
def test_direct_reader_returns_fastavros_record_for_any_schema_shaped_record(
    record: dict[str, Any],
) -> None:
    payload = encode(record, SCHEMA)

    assert _outcome(lambda: decode(payload, SCHEMA)) == _outcome(lambda: _fastavro(payload))
    if -(2**62) <= record["observed_at"] < 2**62:  # longer varints are left to fastavro
        assert codec._read_directly(payload, SCHEMA) is not None


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(valid_records, st.data())
def test_mutated_payloads_decode_or_fail_exactly_as_with_fastavro(
    record: dict[str, Any], data: st.DataObject
) -> None:
    payload = bytearray(encode(record, SCHEMA))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(HEADER_SIZE, len(payload)))
        op = data.draw(st.sampled_from(["set", "insert", "delete", "cut"]))
        byte = data.draw(st.integers(0, 255))
        if op == "set" and at < len(payload):
            payload[at] = byte
        elif op == "insert":
            payload.insert(at, byte)
        elif op == "delete" and at < len(payload):
            del payload[at]
        elif op == "cut":
            del payload[at:]
    mutated = bytes(payload)

    assert _outcome(lambda: decode(mutated, SCHEMA)) == _outcome(lambda: _fastavro(mutated))


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_garbage_bodies_decode_or_fail_exactly_as_with_fastavro(body: bytes) -> None:
    payload = MAGIC + SCHEMA.fingerprint + body

    assert _outcome(lambda: decode(payload, SCHEMA)) == _outcome(lambda: _fastavro(payload))


@pytest.mark.parametrize(
    "varint",
    [
        b"\xff" * 9 + b"\x7f",  # 10 bytes, more than 64 bits: fastavro wraps around
        b"\xfe" * 9 + b"\x03",
        b"\x80" * 10 + b"\x01",  # 11 bytes
        b"\xfe" * 8 + b"\x7f",  # 9 bytes: the longest the direct reader takes
    ],
)
def test_overlong_long_varints_decode_exactly_as_with_fastavro(varint: bytes) -> None:
    a = encode({**sample_record(), "observed_at": 0}, SCHEMA)
    b = encode({**sample_record(), "observed_at": 1}, SCHEMA)
    at = next(i for i in range(len(a)) if a[i] != b[i])  # the one-byte varint of observed_at
    payload = a[:at] + varint + a[at + 1 :]

    assert _outcome(lambda: decode(payload, SCHEMA)) == _outcome(lambda: _fastavro(payload))
