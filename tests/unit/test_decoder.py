"""The compiled decoder reads exactly what fastavro reads, and refuses what it cannot read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queuewatch.contract.codec import (
    HEADER_SIZE,
    MAGIC,
    DecodeError,
    Decoder,
    MalformedPayloadError,
    UnknownFingerprintError,
    decode,
    encode,
)
from queuewatch.contract.decoder import compile_decoder
from queuewatch.contract.schemas import (
    CROSSING_WINDOW,
    QUEUE_REPORT,
    SchemaRegistry,
    default_registry,
    load_schema_file,
)
from tests.unit.test_codec import sample_record, valid_records
from tests.unit.test_windows_codec import rows as window_rows

REPORT = default_registry().latest(QUEUE_REPORT)
WINDOW = default_registry().latest(CROSSING_WINDOW)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(valid_records)
def test_any_report_decodes_to_the_record_fastavro_gives(record: dict[str, Any]) -> None:
    payload = encode(record, REPORT)
    assert Decoder(REPORT)(payload) == decode(payload, REPORT) == record


@settings(max_examples=300, deadline=None)
@given(window_rows)
def test_any_window_decodes_to_its_values_in_field_order(row: dict[str, Any]) -> None:
    payload = encode(row, WINDOW)
    expected = decode(payload, WINDOW)
    assert Decoder(WINDOW, as_row=True)(payload) == tuple(expected[f] for f in expected)
    assert Decoder(WINDOW)(payload) == expected


@settings(max_examples=400)
@given(st.binary(max_size=200))
def test_a_body_it_accepts_is_the_record_fastavro_reads_and_what_fastavro_refuses_it_refuses(
    body: bytes,
) -> None:
    payload = MAGIC + REPORT.fingerprint + body
    try:
        ours = Decoder(REPORT)(payload)
    except DecodeError:
        ours = None
    try:
        theirs = decode(payload, REPORT)
    except DecodeError:
        theirs = None
    if ours is not None:
        assert ours == theirs
    if theirs is None:
        assert ours is None


@pytest.mark.parametrize("cut", [HEADER_SIZE, HEADER_SIZE + 1, HEADER_SIZE + 5, -1, -3])
def test_a_truncated_body_is_malformed(cut: int) -> None:
    payload = encode(sample_record(), REPORT)
    with pytest.raises(MalformedPayloadError):
        Decoder(REPORT)(payload[:cut])


def test_trailing_bytes_are_malformed() -> None:
    with pytest.raises(MalformedPayloadError, match="trailing"):
        Decoder(REPORT)(encode(sample_record(), REPORT) + b"\x00")


def test_a_negative_union_branch_is_malformed() -> None:
    # The window's first optional field, wait_minutes_min, follows 5 strings and 4 numbers;
    # branch -1 (zig-zag 0x01) is written where null (0x00) was.
    row = {f["name"]: f.get("default") for f in WINDOW.parsed["fields"]}
    row.update(
        crossing_id="a", from_country="GE", to_country="RU", traffic_class="car",
        window_size="1h", window_start=0, window_end=1, reports=1, sources=1,
        status_last="open", last_observed_at=0, version=1, updated_at=0,
    )  # fmt: skip
    payload = bytearray(encode(row, WINDOW))
    at = HEADER_SIZE + sum(1 + len(v) for v in ("a", "GE", "RU", "car", "1h")) + 4
    assert payload[at] == 0x00
    payload[at] = 0x01
    with pytest.raises(MalformedPayloadError, match="union branch"):
        Decoder(WINDOW)(bytes(payload))


def test_an_enum_index_out_of_range_is_malformed() -> None:
    record = sample_record()
    payload = bytearray(encode(record, REPORT))
    # traffic_class follows event_id, crossing_id, from_country and to_country.
    at = HEADER_SIZE + sum(
        1 + len(record[k]) for k in ("event_id", "crossing_id", "from_country", "to_country")
    )
    payload[at] = 2 * 7  # index 7 of 7 symbols
    with pytest.raises(MalformedPayloadError, match="enum index"):
        Decoder(REPORT)(bytes(payload))


def test_a_payload_of_an_unknown_schema_is_refused_by_fingerprint() -> None:
    payload = MAGIC + b"\x00" * 8 + encode(sample_record(), REPORT)[HEADER_SIZE:]
    with pytest.raises(UnknownFingerprintError):
        Decoder(REPORT)(payload)


def test_bytes_of_an_older_writer_are_resolved_to_the_reader(tmp_path: Path) -> None:
    raw = json.loads(REPORT.path.read_text())
    raw["queuewatch.version"] = 0
    raw["fields"] = [f for f in raw["fields"] if f["name"] != "note"]
    old_path = tmp_path / "queue_report.v0.avsc"
    old_path.write_text(json.dumps(raw))
    old = load_schema_file(old_path)
    registry = SchemaRegistry()
    registry.add(old)
    registry.add(REPORT)
    record = {k: v for k, v in sample_record().items() if k != "note"}
    got, writer = Decoder(REPORT, registry).read(encode(record, old))
    assert writer is old
    assert got == {**record, "note": None}


def test_a_schema_with_a_kind_it_does_not_read_compiles_to_nothing() -> None:
    schema = {
        "type": "record",
        "name": "R",
        "fields": [{"name": "xs", "type": {"type": "fixed", "name": "F", "size": 4}}],
    }
    assert compile_decoder(schema) is None


def test_arrays_and_maps_in_blocks_of_either_sign_read_as_fastavro_reads_them() -> None:
    schema = {
        "type": "record",
        "name": "R",
        "fields": [
            {"name": "xs", "type": {"type": "array", "items": "string"}},
            {"name": "m", "type": {"type": "map", "values": "int"}},
        ],
    }
    decoder = compile_decoder(schema)
    assert decoder is not None
    # xs: a block of -2 items with its byte size (4), then the end; m: one block of 1, the end
    body = bytes(
        [0x03, 0x08, 0x02, ord("a"), 0x02, ord("b"), 0x00, 0x02, 0x02, ord("k"), 0x54, 0x00]
    )
    assert decoder(body, 0) == {"xs": ["a", "b"], "m": {"k": 42}}
    with pytest.raises(ValueError, match="block count"):
        decoder(bytes([0x7E, 0x00]), 0)  # 63 items announced, none there
