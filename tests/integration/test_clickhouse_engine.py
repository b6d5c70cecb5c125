"""Migrations, idempotent writes and the read-only query path on the real embedded engine."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from queuewatch.clickhouse.client import connect
from queuewatch.clickhouse.exceptions import MigrationError, QueryRefusedError
from queuewatch.clickhouse.guard import QueryLimits
from queuewatch.clickhouse.migrations import load_migrations, migrate
from queuewatch.clickhouse.query import GuardedReader, readonly_client
from queuewatch.resources import migrations_dir
from queuewatch.sinks import raw
from queuewatch.sinks.windows import window_columns
from queuewatch.sinks.writer import ClickHouseWriter

pytestmark = pytest.mark.integration

DB = "qw_test"
LIMITS = QueryLimits(30.0, 1 << 30, 10_000, 1 << 24)


@pytest.fixture
def client(chdb_url: str) -> Iterator[Any]:
    """A client on a fresh folder; closed after the test, since a process hosts one engine."""
    c = connect(chdb_url)
    try:
        yield c
    finally:
        c.close()


def report_row(event_id: str, offset: int, wait: int) -> list[Any]:
    values: dict[str, Any] = dict.fromkeys(raw.COLUMNS)
    values.update(
        event_id=event_id,
        crossing_id="ge-ru-verkhny-lars",
        from_country="RU",
        to_country="GE",
        traffic_class="car",
        observed_at=1_727_000_000_000,
        source_type="crowd",
        source_name="chat",
        wait_minutes=wait,
        status="delay",
        kafka_partition=0,
        kafka_offset=offset,
        schema_fingerprint="00",
    )
    return [values[c] for c in raw.COLUMNS]


def test_migrate_applies_every_file_once_and_records_it(client: Any) -> None:
    applied = migrate(client, DB)
    assert [m.version for m in applied] == [m.version for m in load_migrations()]
    assert migrate(client, DB) == []
    recorded = client.query(f"SELECT version FROM {DB}.schema_migrations ORDER BY version")
    assert [r[0] for r in recorded.result_rows] == [m.version for m in applied]


def test_crossing_windows_columns_are_the_contract_fields_in_order(client: Any) -> None:
    migrate(client, DB)
    cols = client.query(
        "SELECT name FROM system.columns WHERE database = {db:String} "
        "AND table = 'crossing_windows' ORDER BY position",
        parameters={"db": DB},
    )
    assert tuple(r[0] for r in cols.result_rows) == window_columns()


def test_every_consumer_view_answers_on_empty_tables(client: Any) -> None:
    migrate(client, DB)
    for view in (
        "crossing_status",
        "current_windows",
        "crossing_report_summary",
        "hourly_profile",
        "source_latest",
    ):
        assert client.query(f"SELECT count() FROM {DB}.{view}").result_rows == [(0,)]


def test_changed_applied_migration_is_refused_and_a_new_file_is_applied(
    client: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), folder)
    migrate(client, DB, folder)
    (folder / "0099_extra.sql").write_text(
        "CREATE TABLE IF NOT EXISTS {{database}}.extra (x UInt8) ENGINE = MergeTree ORDER BY x;\n"
    )
    assert [m.version for m in migrate(client, DB, folder)] == [99]
    first = sorted(folder.glob("0001_*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(client, DB, folder)


def test_first_arrival_wins_in_final_whatever_the_insert_order(client: Any) -> None:
    migrate(client, DB)
    writer = ClickHouseWriter(client, f"{DB}.queue_reports", raw.COLUMNS)
    writer.write([report_row("e1", offset=9, wait=99)], "later-copy")
    writer.write([report_row("e1", offset=5, wait=55)], "first-copy")
    writer.write([report_row("e1", offset=5, wait=55)], "first-copy-replayed-other-bounds")
    rows = client.query(f"SELECT wait_minutes, kafka_offset FROM {DB}.queue_reports FINAL")
    assert rows.result_rows == [(55, 5)]


def test_replayed_insert_with_the_same_token_is_dropped_by_clickhouse(client: Any) -> None:
    migrate(client, DB)
    writer = ClickHouseWriter(client, f"{DB}.queue_reports", raw.COLUMNS)
    batch = [report_row(f"e{i}", offset=i, wait=i) for i in range(50)]
    writer.write(batch, "reports:0:0-49")
    writer.write(batch, "reports:0:0-49")
    assert client.query(f"SELECT count() FROM {DB}.queue_reports").result_rows == [(50,)]
    writer.write(batch, "reports:0:0-49-other-bounds")
    assert client.query(f"SELECT count() FROM {DB}.queue_reports").result_rows == [(100,)]
    assert client.query(f"SELECT count() FROM {DB}.queue_reports FINAL").result_rows == [(50,)]


def test_readonly_client_reads_and_refuses_writes_at_the_guard_and_in_clickhouse(
    client: Any, chdb_url: str
) -> None:
    migrate(client, DB)
    reader = GuardedReader(readonly_client(chdb_url, DB, LIMITS), DB, LIMITS)
    try:
        answer = reader.run("SELECT count() AS n FROM queue_reports;", "jsonl")
        assert answer == b'{"n":0}\n'
        for sql in (
            "INSERT INTO queue_reports (event_id) VALUES ('x')",
            "DROP TABLE queue_reports",
            "TRUNCATE TABLE queue_reports",
            "CREATE TABLE t (x UInt8) ENGINE = Memory",
            "ALTER TABLE queue_reports DELETE WHERE 1",
            "OPTIMIZE TABLE queue_reports FINAL",
        ):
            with pytest.raises(QueryRefusedError, match="statements are not allowed"):
                reader.run(sql, "jsonl")
            # Beneath the guard, the session itself is read-only too.
            with pytest.raises(Exception, match=r"READONLY|readonly"):
                reader.client.command(sql)
    finally:
        reader.close()


def queuewatch(
    home: Path, *args: str, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {"QUEUEWATCH_HOME": str(home), "PATH": "/usr/bin:/bin", **(extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "queuewatch", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_query_without_an_owner_opens_the_folder_itself(tmp_path: Path) -> None:
    assert queuewatch(tmp_path, "migrate").returncode == 0
    done = queuewatch(tmp_path, "query", "SELECT count() AS n FROM crossing_status", "-f", "csv")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ['"n"', "0"]


def test_query_before_migrate_says_to_migrate_first(tmp_path: Path) -> None:
    (tmp_path / "clickhouse").mkdir()
    done = queuewatch(tmp_path, "query", "SELECT 1")
    assert done.returncode == 1
    assert "run `queuewatch migrate`" in done.stderr


def test_query_on_a_missing_folder_says_to_migrate_first(tmp_path: Path) -> None:
    done = queuewatch(tmp_path / "nothing-here", "query", "SELECT 1")
    assert done.returncode == 1
    assert "run `queuewatch migrate`" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_folder_held_by_another_process_gives_a_one_line_error(tmp_path: Path) -> None:
    folder = tmp_path / "clickhouse"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, clickhouse_connect\n"
            f"c = clickhouse_connect.get_client(dsn='chdb://{folder}')\n"
            "c.query('SELECT 1'); print('open', flush=True); time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        done = queuewatch(tmp_path, "query", "SELECT 1")
        assert done.returncode == 1
        assert done.stderr.count("\n") == 1, done.stderr  # one line, no engine noise
        assert done.stderr.startswith("queuewatch: error:")
        assert "open in another process" in done.stderr
    finally:
        holder.kill()
        holder.wait(30)


def test_migrate_with_output_contributions_makes_the_window_views_once(tmp_path: Path) -> None:
    """`queuewatch migrate` is where a deployment's DDL runs (compose's one-shot): with output
    contributions it also turns crossing_windows and window_latest into views, and a second
    run finds them as they should be and changes nothing."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return queuewatch(tmp_path, *args, extra={"QUEUEWATCH_AGGREGATOR_OUTPUT": "contributions"})

    first = run("migrate")
    assert first.returncode == 0, first.stderr
    assert "dropped the empty table crossing_windows" in first.stdout
    assert "made the view crossing_windows" in first.stdout
    assert "made the view window_latest" in first.stdout
    again = run("migrate")
    assert again.returncode == 0, again.stderr
    assert "made the view" not in again.stdout
    done = run("query", "SELECT count() AS n FROM crossing_status", "-f", "csv")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ['"n"', "0"]
