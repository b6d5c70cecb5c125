"""The wire codec: any valid report survives encode/decode; broken bytes raise typed errors."""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
