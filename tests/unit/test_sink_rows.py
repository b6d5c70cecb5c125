"""How Kafka records become ClickHouse rows, how migration files are read and how ClickHouse
errors are classified: the pure parts of the sinks and of the ClickHouse package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from queuewatch.clickhouse.client import wrap_error
from queuewatch.clickhouse.embedded import chdb_folder
from queuewatch.clickhouse.exceptions import ClickHouseError, EngineBusyError, MigrationError
from queuewatch.clickhouse.migrations import load_migrations, render, split_statements
from queuewatch.contract.codec import encode
from queuewatch.contract.schemas import CROSSING_WINDOW, QUEUE_REPORT, default_registry
from queuewatch.sinks import raw
from queuewatch.sinks.raw import ReportTransform
from queuewatch.sinks.source import Message
from queuewatch.sinks.windows import WindowTransform, window_columns

NOW_MS = 1_727_000_000_000


def report(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event_id": "4f0c2a9e-0000-4000-8000-000000000001",
        "crossing_id": "ge-ru-verkhny-lars",
        "from_country": "RU",
        "to_country": "GE",
        "traffic_class": "car",
        "observed_at": NOW_MS - 60_000,
        "source": {"type": "journalist", "name": "Echo of the Caucasus", "url": "https://e.x/1"},
        "wait_minutes": 2400,
        "queue_vehicles": 3500,
        "queue_persons": None,
        "queue_length_km": 22.5,
        "throughput_per_hour": 55.0,
        "lanes_open": 4,
        "status": "delay",
        "location": {"lat": 42.74, "lon": 44.63},
        "note": None,
    }
    record.update(overrides)
    return record


def message(value: bytes | None, offset: int = 7, partition: int = 3) -> Message:
    return Message("queue-reports", partition, offset, NOW_MS, value)


def test_valid_report_becomes_a_flat_row_with_its_origin() -> None:
    schema = default_registry().latest(QUEUE_REPORT)
    row = ReportTransform()(message(encode(report(), schema)))
    assert row is not None
    got = dict(zip(raw.COLUMNS, row, strict=True))
    assert got["source_type"] == "journalist"
    assert got["source_name"] == "Echo of the Caucasus"
    assert got["source_url"] == "https://e.x/1"
    assert (got["location_lat"], got["location_lon"]) == (42.74, 44.63)
    assert got["observed_at"] == NOW_MS - 60_000
    assert (got["kafka_partition"], got["kafka_offset"]) == (3, 7)
    assert got["schema_fingerprint"] == schema.fingerprint_hex


def test_report_without_location_or_url_gets_nulls() -> None:
    schema = default_registry().latest(QUEUE_REPORT)
    record = report(location=None, source={"type": "crowd", "name": "chat", "url": None})
    row = ReportTransform()(message(encode(record, schema)))
    assert row is not None
    got = dict(zip(raw.COLUMNS, row, strict=True))
    assert (got["location_lat"], got["location_lon"], got["source_url"]) == (None, None, None)


def test_invalid_report_is_passed_over() -> None:
    schema = default_registry().latest(QUEUE_REPORT)
    assert ReportTransform()(message(encode(report(wait_minutes=-5), schema))) is None


def test_report_from_the_future_of_its_log_timestamp_is_passed_over() -> None:
    schema = default_registry().latest(QUEUE_REPORT)
    future = report(observed_at=NOW_MS + 3_600_000)
    assert ReportTransform()(message(encode(future, schema))) is None


@pytest.mark.parametrize("payload", [b"", b"not avro", b"\xc3\x01" + b"\x00" * 8 + b"x", None])
def test_undecodable_report_is_passed_over(payload: bytes | None) -> None:
    assert ReportTransform()(message(payload)) is None


def test_window_columns_are_the_contract_fields_in_order() -> None:
    schema = default_registry().latest(CROSSING_WINDOW)
    assert window_columns() == tuple(f["name"] for f in schema.raw["fields"])


def test_window_record_becomes_its_values_in_field_order() -> None:
    schema = default_registry().latest(CROSSING_WINDOW)
    record: dict[str, Any] = {f["name"]: None for f in schema.raw["fields"]}
    record.update(
        crossing_id="ge-ru-verkhny-lars",
        from_country="RU",
        to_country="GE",
        traffic_class="car",
        window_size="1h",
        window_start=0,
        window_end=3_600_000,
        reports=3,
        sources=2,
        status_last="delay",
        last_observed_at=10,
        version=4,
        updated_at=11,
        wait_minutes_p50=30.0,
    )
    row = WindowTransform()(message(encode(record, schema)))
    assert row == [record[name] for name in window_columns()]


def test_statements_split_at_line_ending_semicolons_and_drop_comments() -> None:
    sql = "-- header\nCREATE TABLE a (x String DEFAULT ';');\n\n-- only a comment;\nSELECT 1;\n"
    assert split_statements(sql) == ["CREATE TABLE a (x String DEFAULT ';')", "SELECT 1"]


def test_shipped_migrations_are_numbered_in_order_with_statements() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == sorted(m.version for m in migrations)
    assert migrations[0].name == "queue_reports"
    assert all(m.statements for m in migrations)
    assert all("{{database}}" in s for m in migrations for s in m.statements)


def test_render_puts_the_quoted_database_in_place() -> None:
    assert render("CREATE TABLE {{database}}.t", "qw_1") == "CREATE TABLE `qw_1`.t"


def test_two_files_with_one_version_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 2;")
    with pytest.raises(MigrationError, match="share version 1"):
        load_migrations(tmp_path)


def test_misnamed_migration_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "1_a.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_lower_snake"):
        load_migrations(tmp_path)


def test_clickhouse_error_text_gives_code_name_and_retryability() -> None:
    fatal = wrap_error(RuntimeError("Code: 60. DB::Exception: nope. (UNKNOWN_TABLE)"), "x")
    assert (fatal.code, fatal.name, fatal.retryable) == (60, "UNKNOWN_TABLE", False)
    busy = wrap_error(RuntimeError("Code: 252. DB::Exception: parts (TOO_MANY_PARTS)"), "x")
    assert (busy.code, busy.name, busy.retryable) == (252, "TOO_MANY_PARTS", True)


def test_unreachable_server_is_retryable() -> None:
    from clickhouse_connect.driver.exceptions import OperationalError

    err = wrap_error(OperationalError("connection refused"), "inserting")
    assert isinstance(err, ClickHouseError)
    assert err.code is None and err.retryable


def test_folder_open_elsewhere_is_an_engine_busy_error() -> None:
    err = wrap_error(RuntimeError("Unable to open the chdb engine at '/x'"), "connecting")
    assert isinstance(err, EngineBusyError)
    assert not err.retryable


def test_chdb_url_names_an_absolute_folder(tmp_path: Path) -> None:
    assert chdb_folder(f"chdb://{tmp_path}/ch") == tmp_path / "ch"
