"""How Kafka records become ClickHouse rows, how migration files are read and how ClickHouse
errors are classified: the pure parts of the sinks and of the ClickHouse package."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from queuewatch.clickhouse.client import wrap_error
from queuewatch.clickhouse.embedded import chdb_folder
from queuewatch.clickhouse.exceptions import ClickHouseError, EngineBusyError, MigrationError
from queuewatch.clickhouse.migrations import load_migrations, render, split_statements
from queuewatch.contract.codec import encode
from queuewatch.contract.schemas import CROSSING_WINDOW, QUEUE_REPORT, default_registry
from queuewatch.kafka.topics import config_drift
from queuewatch.sinks import raw, windows
from queuewatch.sinks.exceptions import RecordRejected
from queuewatch.sinks.raw import ReportTransform
from queuewatch.sinks.source import Message
from queuewatch.sinks.windows import WindowTransform, window_columns
from queuewatch.sinks.writer import monthly, months_between, split_by_partition, yyyymm

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
    record: dict[str, Any] = {f["name"]: f.get("default") for f in schema.raw["fields"]}
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
    assert row == tuple(record[name] for name in window_columns())


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


def test_too_many_partitions_for_one_insert_is_not_retryable_but_merges_behind_are() -> None:
    text = (
        "Code: 252. DB::Exception: Too many partitions for single INSERT block (more than "
        "100). The limit is controlled by 'max_partitions_per_insert_block'. (TOO_MANY_PARTS)"
    )
    shape = wrap_error(RuntimeError(text), "inserting")
    assert (shape.code, shape.retryable, shape.refused_rows) == (252, False, False)
    merges = wrap_error(
        RuntimeError(
            "Code: 252. DB::Exception: Too many parts (300) in partition. (TOO_MANY_PARTS)"
        ),
        "inserting",
    )
    assert merges.retryable


def test_codes_of_bad_values_mark_the_rows_refused_not_the_table() -> None:
    err = wrap_error(RuntimeError("Code: 53. DB::Exception: type. (TYPE_MISMATCH)"), "inserting")
    assert (err.retryable, err.refused_rows) == (False, True)
    table = wrap_error(RuntimeError("Code: 60. DB::Exception: no. (UNKNOWN_TABLE)"), "inserting")
    assert not table.refused_rows


def test_a_value_the_driver_cannot_serialize_marks_the_rows_refused() -> None:
    err = wrap_error(TypeError("unsupported operand type(s)"), "inserting 3 rows")
    assert err.code is None and not err.retryable and err.refused_rows


def test_window_record_of_an_unknown_schema_is_rejected_for_the_dead_letter_topic() -> None:
    unknown = b"\xc3\x01" + bytes.fromhex("0123456789abcdef") + b"\x02body"
    with pytest.raises(RecordRejected) as raised:
        WindowTransform()(message(unknown))
    assert raised.value.code == "unknown_fingerprint"
    assert WindowTransform()(message(None)) is None


def test_yyyymm_is_clickhouses_month_of_a_utc_millisecond_time() -> None:
    assert yyyymm(0) == 197001
    assert yyyymm(1_664_582_399_999) == 202209  # 2022-09-30T23:59:59.999Z
    assert yyyymm(1_664_582_400_000) == 202210


def test_rows_within_the_partition_limit_stay_one_insert_in_their_order() -> None:
    rows = [[m] for m in (3, 1, 2, 1)]
    assert split_by_partition(rows, lambda r: int(r[0]), 3) == [rows]


def test_rows_over_the_partition_limit_split_into_parts_under_it_in_partition_order() -> None:
    rows = [[month, i] for i, month in enumerate([5, 1, 4, 2, 5, 3, 1])]
    parts = split_by_partition(rows, lambda r: int(r[0]), 2)
    assert [sorted({int(r[0]) for r in part}) for part in parts] == [[1, 2], [3, 4], [5]]
    assert sorted(map(tuple, (r for part in parts for r in part))) == sorted(map(tuple, rows))
    assert parts[0] == [[1, 1], [1, 6], [2, 3]]  # row order kept within a partition
    assert split_by_partition(rows, lambda r: int(r[0]), 2) == parts  # deterministic


def test_the_monthly_key_counts_months_from_min_and_max_and_splits_only_over_the_limit() -> None:
    def ms(year: int, month: int) -> int:
        return int(datetime(year, month, 15, tzinfo=UTC).timestamp() * 1000)

    key = monthly(("t", "i"), "t")
    assert months_between(ms(2022, 11), ms(2023, 2)) == 4
    rows = [(ms(2022, m), i) for i, m in enumerate([12, 9, 10, 12, 11])]
    assert key.fits(rows, 4) and not key.fits(rows, 3)
    assert split_by_partition(rows, key, 4) == [rows]
    parts = split_by_partition(rows, key, 3)
    assert [[key(r) for r in part] for part in parts] == [[202209, 202210, 202211], [202212] * 2]


def test_the_sinks_split_by_the_column_their_migrations_partition_by() -> None:
    sql = {m.name: " ".join(m.statements) for m in load_migrations()}
    assert f"PARTITION BY toYYYYMM({raw.PARTITION_COLUMN})" in sql["queue_reports"]
    assert f"PARTITION BY toYYYYMM({windows.PARTITION_COLUMN})" in sql["crossing_windows"]
    assert raw.PARTITION_COLUMN in raw.COLUMNS
    assert windows.PARTITION_COLUMN in window_columns()


def test_existing_topic_retention_is_raised_when_shorter_never_lowered() -> None:
    wanted = {"retention.ms": "2592000000", "cleanup.policy": "delete"}
    shorter = config_drift("w", {"retention.ms": "604800000", "cleanup.policy": "delete"}, wanted)
    assert [(d.key, d.altered) for d in shorter] == [("retention.ms", True)]
    longer = config_drift("w", {"retention.ms": "-1", "cleanup.policy": "compact"}, wanted)
    assert [(d.key, d.altered) for d in longer] == [
        ("cleanup.policy", False),
        ("retention.ms", False),
    ]
    assert config_drift("w", dict(wanted), wanted) == []
    forever = config_drift("log", {"retention.ms": "604800000"}, {"retention.ms": "-1"})
    assert forever[0].altered
