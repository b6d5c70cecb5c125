"""The direct window encoder writes exactly the bytes fastavro writes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queuewatch.aggregator.window_codec import compile_encoder, window_encoder
from queuewatch.contract.codec import decode, encode
from queuewatch.contract.schemas import CROSSING_WINDOW, QUEUE_REPORT, default_registry

SCHEMA = default_registry().latest(CROSSING_WINDOW)
LONG = st.integers(-(2**63), 2**63 - 1)
INT = st.integers(-(2**31), 2**31 - 1)
DOUBLE = st.floats(allow_nan=False)
TEXT = st.text(max_size=40)


def _strategy(avro_type: Any) -> st.SearchStrategy[Any]:
    if avro_type == "string":
        return TEXT
    if avro_type == "int":
        return INT
    if avro_type == "long":
        return LONG
    if isinstance(avro_type, dict) and avro_type["type"] == "array":
        return st.lists(TEXT, max_size=5)
    if isinstance(avro_type, dict) and avro_type["type"] == "map":
        return st.dictionaries(TEXT, st.one_of(INT, st.integers(0, 10)), max_size=6)
    inner = {"int": INT, "long": LONG, "double": DOUBLE}[avro_type[1]]
    return st.one_of(st.none(), inner)


rows = st.fixed_dictionaries({f["name"]: _strategy(f["type"]) for f in SCHEMA.parsed["fields"]})


@settings(max_examples=300, deadline=None)
@given(rows)
def test_direct_encoder_writes_the_same_bytes_as_fastavro(row: dict[str, Any]) -> None:
    encoder = compile_encoder(SCHEMA)
    assert encoder is not None

    data = encoder(row)

    assert data == encode(row, SCHEMA)
    assert decode(data, SCHEMA) == row


BOUNDARY = st.sampled_from([-1, 0, 1, 8191, 8192, 2**31 - 1, -(2**31), 1_700_000_000_000])


@settings(max_examples=30, deadline=None)
@given(st.lists(rows, min_size=2, max_size=30), st.lists(BOUNDARY, min_size=1))
def test_one_encoder_reused_over_many_rows_keeps_writing_fastavros_bytes(
    batch: list[dict[str, Any]], longs: list[int]
) -> None:
    encoder = compile_encoder(SCHEMA)
    assert encoder is not None
    int_fields = [f["name"] for f in SCHEMA.parsed["fields"] if f["type"] in ("int", "long")]
    for i, row in enumerate(batch):  # values at the edges of the encoder's small-value table
        row[int_fields[i % len(int_fields)]] = longs[i % len(longs)]

    # twice over: the second pass is served from the encoder's caches
    for row in batch + batch:
        assert encoder(row) == encode(row, SCHEMA)


def test_every_window_schema_version_is_compiled_and_written_as_fastavro_writes_it() -> None:
    row_v2 = {"confidence_reasons": ["a", "b" * 300], "sources_by_type": {"crowd": 9000, "x": 1}}
    for version in default_registry().versions(CROSSING_WINDOW):
        encoder = compile_encoder(version)
        assert encoder is not None, version.path
        row = {
            f["name"]: row_v2.get(f["name"], f.get("default", 0) if f["type"] != "string" else "s")
            for f in version.parsed["fields"]
        }
        assert encoder(row) == encode(row, version)


def test_schema_with_other_field_kinds_falls_back_to_fastavro() -> None:
    report = default_registry().latest(QUEUE_REPORT)  # has records, enums and nested unions

    assert compile_encoder(report) is None
    encoder = window_encoder(report)
    with pytest.raises(Exception, match="does not fit"):
        encoder({"event_id": 1})
