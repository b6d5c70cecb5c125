"""End to end on the embedded layout: reports and windows in Kafka, `queuewatch sink all` as a
process owning a fresh chdb folder, `queuewatch query` as another process."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_sinks_harness import (
    CATCH_UP_TIMEOUT_S,
    ReportSet,
    SinkEnv,
    SinkProcess,
    lag,
    make_reports,
    make_windows,
    new_env,
    publish,
    query,
    query_rows,
    reset_to_beginning,
    wait_until,
)

pytestmark = pytest.mark.integration

REPORTS_SQL = (
    "SELECT crossing_id, event_id, wait_minutes, kafka_partition, kafka_offset, ingested_at "
    "FROM queue_reports FINAL ORDER BY crossing_id, event_id"
)
WINDOWS_SQL = "SELECT * FROM crossing_windows FINAL ORDER BY ALL"
CURRENT_SQL = "SELECT * FROM current_windows ORDER BY ALL"
STATUS_SQL = "SELECT * EXCEPT (last_report_age_s, freshness_s) FROM crossing_status ORDER BY ALL"
SUMMARY_SQL = (
    "SELECT * EXCEPT (last_report_age_s, wait_minutes_age_s, queue_vehicles_age_s, "
    "queue_length_km_age_s) FROM crossing_report_summary ORDER BY ALL"
)


@dataclass
class Loaded:
    env: SinkEnv
    owner: SinkProcess
    reports: ReportSet
    windows: dict[tuple[Any, ...], dict[str, Any]]


def caught_up(env: SinkEnv) -> bool:
    return (
        lag(env.bootstrap, env.raw_group, env.reports_topic) == 0
        and lag(env.bootstrap, env.window_group, env.windows_topic) == 0
    )


@pytest.fixture(scope="module")
def loaded(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    """A running owner that has written 1,500 reports (plus noise) and 60 window versions."""
    home = tmp_path_factory.mktemp("e2e-home")
    env = new_env(bootstrap, home)
    reports = make_reports(1500, seed=5)
    window_messages, reference = make_windows(keys=20, versions=3, seed=5)
    publish(bootstrap, env.reports_topic, reports.messages)
    publish(bootstrap, env.windows_topic, window_messages)
    owner = SinkProcess(env, home / "sink.log")
    try:
        owner.wait_serving()
        wait_until(lambda: caught_up(env), CATCH_UP_TIMEOUT_S, "the sinks to catch up", owner)
        yield Loaded(env, owner, reports, reference)
    finally:
        if owner.alive():
            owner.kill()


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def test_queue_reports_final_holds_each_accepted_report_once_first_arrival_winning(
    loaded: Loaded,
) -> None:
    rows = query_rows(loaded.env, REPORTS_SQL)
    got = {(r["crossing_id"], r["event_id"]): r["wait_minutes"] for r in rows}
    assert len(rows) == len(got)  # no key twice
    assert got == loaded.reports.expected  # invalid and garbage absent, originals beat re-sends


def test_crossing_windows_final_equals_the_newest_version_of_each_key(loaded: Loaded) -> None:
    rows = query_rows(loaded.env, WINDOWS_SQL)
    got = {
        (r["crossing_id"], r["traffic_class"], r["window_size"], ms(r["window_start"])): r
        for r in rows
    }
    assert len(got) == len(rows) == len(loaded.windows)
    for key, want in loaded.windows.items():
        row = got[key]
        assert int(row["version"]) == want["version"]
        assert row["reports"] == want["reports"]
        assert row["wait_minutes_p50"] == pytest.approx(want["wait_minutes_p50"])
        assert ms(row["last_observed_at"]) == want["last_observed_at"]
        assert ms(row["window_end"]) == want["window_end"]


def test_crossing_status_has_one_row_per_crossing_direction_and_class(loaded: Loaded) -> None:
    rows = query_rows(loaded.env, "SELECT * FROM crossing_status")
    keys = {
        (r["crossing_id"], r["from_country"], r["to_country"], r["traffic_class"]) for r in rows
    }
    assert len(keys) == len(rows)
    window_keys = {
        (w["crossing_id"], w["from_country"], w["to_country"], w["traffic_class"])
        for w in loaded.windows.values()
    }
    assert keys == window_keys  # crossing_status reads the current windows (0004)
    with_windows = [r for r in rows if r["reports_1h"] is not None]
    assert with_windows, "the 1h window figures should reach crossing_status"


def test_crossing_report_summary_counts_every_accepted_report_once(loaded: Loaded) -> None:
    rows = query_rows(loaded.env, "SELECT * FROM crossing_report_summary")
    keys = {
        (r["crossing_id"], r["from_country"], r["to_country"], r["traffic_class"]) for r in rows
    }
    assert len(keys) == len(rows)
    total = sum(int(r["reports_total"]) for r in rows)
    assert total == len(loaded.reports.expected)


def test_query_output_formats_are_keyed_jsonl_csv_with_header_and_a_table(loaded: Loaded) -> None:
    jsonl = query(loaded.env, "SELECT 1 AS one, 'x' AS two", "jsonl")
    assert jsonl.stdout.strip() == '{"one":1,"two":"x"}'
    csv = query(loaded.env, "SELECT 1 AS one, 'x' AS two", "csv")
    assert csv.stdout.splitlines() == ['"one","two"', '1,"x"']
    table = query(loaded.env, "SELECT 1 AS one", "table")
    assert "one" in table.stdout and "1" in table.stdout


def test_query_that_writes_is_refused_by_the_guard(loaded: Loaded) -> None:
    done = query(loaded.env, "INSERT INTO queue_reports (event_id) VALUES ('x')")
    assert done.returncode == 1
    assert "query refused: INSERT statements are not allowed" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    dropped = query(loaded.env, "DROP TABLE queue_reports")
    assert dropped.returncode == 1 and "DROP statements are not allowed" in dropped.stderr
    still = query_rows(loaded.env, "SELECT count() AS n FROM queue_reports FINAL")
    assert still[0]["n"] == len(loaded.reports.expected)


def test_second_process_opening_the_owned_folder_gets_a_one_line_error(
    loaded: Loaded, tmp_path: Path
) -> None:
    second = SinkProcess(loaded.env, tmp_path / "second.log", ["-m", "queuewatch", "sink", "raw"])
    code = second.proc.wait(120)
    lines = [line for line in second.output().splitlines() if line.startswith("queuewatch:")]
    assert code == 1
    assert len(lines) == 1 and "already open in process" in lines[0]
    assert loaded.owner.alive()


def test_replaying_all_offsets_from_the_beginning_changes_no_final_result(
    loaded: Loaded, tmp_path: Path
) -> None:
    env = loaded.env
    before_reports = query_rows(env, REPORTS_SQL)
    before_windows = query_rows(env, WINDOWS_SQL)
    before_status = query_rows(env, STATUS_SQL)
    before_summary = query_rows(env, SUMMARY_SQL)
    before_current = query_rows(env, CURRENT_SQL)
    assert loaded.owner.stop() == 0  # SIGTERM: clean exit
    reset_to_beginning(env.bootstrap, env.raw_group, env.reports_topic)
    reset_to_beginning(env.bootstrap, env.window_group, env.windows_topic)
    assert not caught_up(env)
    again = SinkProcess(env, tmp_path / "again.log")
    try:
        again.wait_serving()
        wait_until(lambda: caught_up(env), CATCH_UP_TIMEOUT_S, "the replay", again)
        assert query_rows(env, REPORTS_SQL) == before_reports
        assert query_rows(env, WINDOWS_SQL) == before_windows
        assert query_rows(env, STATUS_SQL) == before_status
        assert query_rows(env, SUMMARY_SQL) == before_summary
        assert query_rows(env, CURRENT_SQL) == before_current
    finally:
        assert again.stop() == 0
