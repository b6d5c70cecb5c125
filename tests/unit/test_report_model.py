"""The typed report model lists the schema's fields and converts records both ways unchanged."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from queuewatch.contract.report import (
    FLAT_FIELDS,
    REPORT_FIELDS,
    QueueReport,
    check_model,
    flat_values,
)
from queuewatch.contract.schemas import QUEUE_REPORT, SchemaError, default_registry
from queuewatch.sinks.raw import COLUMNS
from tests.unit.test_codec import sample_record, valid_records


def test_the_field_list_is_the_schema_file_s_in_order() -> None:
    raw = json.loads(default_registry().latest(QUEUE_REPORT).path.read_text())
    assert tuple(f["name"] for f in raw["fields"]) == REPORT_FIELDS


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(valid_records)
def test_a_record_becomes_a_model_and_back_unchanged(record: dict[str, Any]) -> None:
    report = QueueReport.from_record(record)
    assert report.source.name == record["source"]["name"]
    assert report.to_record() == record


def test_a_model_that_lacks_a_schema_field_is_refused_by_name() -> None:
    @dataclass
    class Stale:
        event_id: str

    with pytest.raises(SchemaError, match="Stale"):
        check_model(Stale, REPORT_FIELDS)


def test_the_raw_sink_s_columns_are_the_flattened_schema_then_the_kafka_position() -> None:
    assert (*FLAT_FIELDS, "kafka_partition", "kafka_offset", "schema_fingerprint") == COLUMNS
    assert "source_type" in FLAT_FIELDS and "location_lon" in FLAT_FIELDS


def test_flat_values_fill_an_absent_location_with_nulls() -> None:
    record = sample_record()
    values = dict(zip(FLAT_FIELDS, flat_values(record), strict=True))
    assert values["location_lat"] is None and values["location_lon"] is None
    assert values["source_type"] == "crowd" and values["note"] == record["note"]
