"""`queuewatch rebuild` against the real broker and chdb: the projections made again from the log.

- Windows: a pipeline runs with the default 2 h grace and stops; `rebuild --windows` with a
  30 min grace re-aggregates the log into shadow tables while `queuewatch query` still answers
  from the old ones, swaps on confirmation, and the windows then equal those of a fresh
  pipeline run with the 30 min grace on the same reports (and differ from the old ones:
  some reports are 90 min to 2 h late).
- Raw: rows deleted from queue_reports come back, none twice, each with its first arrival.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from queuewatch.settings import CommonSettings
from tests.integration.test_aggregator_harness import AggregatorProcess, make_scenario
from tests.integration.test_sinks_harness import (
    SinkEnv,
    SinkProcess,
    lag,
    make_reports,
    new_env,
    publish,
    query_rows,
    wait_until,
)

pytestmark = pytest.mark.integration

WINDOW_COLUMNS = (
    "crossing_id, from_country, to_country, traffic_class, window_size, "
    "toUnixTimestamp64Milli(window_start) AS start, reports, sources, wait_minutes_min, "
    "wait_minutes_max, wait_minutes_p50, wait_minutes_p90, wait_minutes_last, "
    "queue_vehicles_max, queue_length_km_last, status_last, "
    "toUnixTimestamp64Milli(last_observed_at) AS last_at"
)
ORDER = "crossing_id, from_country, to_country, traffic_class, window_size, window_start"


def settled(env: SinkEnv, group: str) -> bool:
    return (
        lag(env.bootstrap, group, env.reports_topic) == 0
        and lag(env.bootstrap, env.raw_group, env.reports_topic) == 0
        and lag(env.bootstrap, env.window_group, env.windows_topic) == 0
    )


def run_pipeline(env: SinkEnv, home: Path, group: str, grace: str | None) -> None:
    """Aggregator and `sink all` until every report is in ClickHouse, then both stopped."""
    settings = CommonSettings(
        kafka_bootstrap=env.bootstrap,
        reports_topic=env.reports_topic,
        dlq_topic=env.dlq_topic,
        windows_topic=env.windows_topic,
    )
    extra = {"QUEUEWATCH_AGGREGATOR_GRACE": grace} if grace else {}
    aggregator = AggregatorProcess(settings, home, group, **extra)
    aggregator.start()
    sinks = SinkProcess(env, home / "sink.log")
    try:
        sinks.wait_serving()
        wait_until(lambda: settled(env, group), 180, "the pipeline to settle", sinks)
        time.sleep(3)  # windows are flushed at most once a second: let the last ones land
        wait_until(lambda: settled(env, group), 60, "the last windows", sinks)
    finally:
        aggregator.stop()
        if sinks.alive():
            sinks.stop()


def windows(env: SinkEnv, table: str = "crossing_windows") -> list[dict[str, Any]]:
    return query_rows(env, f"SELECT {WINDOW_COLUMNS} FROM {table} FINAL ORDER BY {ORDER}")


def read_until(proc: subprocess.Popen[str], marker: str, timeout_s: float) -> str:
    """What ``proc`` printed on stdout up to ``marker`` (the confirmation question)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = ""
    deadline = time.monotonic() + timeout_s
    while marker not in seen:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"rebuild exited {proc.returncode}: {seen}\n{err[-3000:]}")
        assert time.monotonic() < deadline, f"no {marker!r} within {timeout_s} s: {seen}"
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            seen += os.read(fd, 4096).decode(errors="replace")
    return seen


def test_rebuild_with_a_new_grace_equals_a_fresh_run_and_queries_read_the_old_tables_meanwhile(
    bootstrap: str, tmp_path: Path
) -> None:
    scenario = make_scenario(seed=21, crossings=3, per_crossing=90)
    (tmp_path / "live").mkdir()
    (tmp_path / "fresh").mkdir()
    live = new_env(bootstrap, tmp_path / "live")
    group = f"agg-{live.suffix}"
    publish(bootstrap, live.reports_topic, scenario.messages)
    run_pipeline(live, tmp_path / "live", group, grace=None)  # the default, 2 h
    old = windows(live)
    assert old

    env = {**live.environ(), "QUEUEWATCH_AGGREGATOR_GROUP": group}
    env["QUEUEWATCH_AGGREGATOR_GRACE"] = "30m"
    proc = subprocess.Popen(
        [sys.executable, "-m", "queuewatch", "rebuild", "--windows"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        asked = read_until(proc, "swap them in?", 300)
        # Mid-rebuild: the rebuild owns the folder and answers queries from the live tables.
        assert windows(live) == old
        shadow = windows(live, "crossing_windows_rebuild")
        assert "crossing_windows_rebuild" in asked and shadow
        assert proc.stdin is not None
        proc.stdin.write("y\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "rebuilt crossing_windows" in out and "old tables kept" in out
    rebuilt = windows(live)
    assert rebuilt == shadow  # what was shown before the swap is what went live
    assert rebuilt != old  # reports 90 min to 2 h late: the grace matters

    fresh = new_env(bootstrap, tmp_path / "fresh")
    publish(bootstrap, fresh.reports_topic, scenario.messages)
    run_pipeline(fresh, tmp_path / "fresh", f"agg-{fresh.suffix}", grace="30m")
    assert rebuilt == windows(fresh)
    # window_latest, fed by its view, was rebuilt with them: the status reads the new windows.
    status_sql = "SELECT crossing_id, reports_24h, wait_minutes_max_3h FROM crossing_status"
    assert sorted(map(str, query_rows(live, status_sql))) == sorted(
        map(str, query_rows(fresh, status_sql))
    )
    # The old windows are kept, as said.
    kept = [t for t in out.split("old tables kept: ")[1].split(" (")[0].split(", ")]
    assert windows(live, kept[0]) == old


def test_raw_rebuild_brings_back_deleted_rows_once_each_with_its_first_arrival(
    bootstrap: str, tmp_path: Path
) -> None:
    reports = make_reports(300, seed=5)
    env = new_env(bootstrap, tmp_path)
    publish(bootstrap, env.reports_topic, reports.messages)
    sinks = SinkProcess(env, tmp_path / "sink.log")
    try:
        sinks.wait_serving()
        wait_until(
            lambda: lag(bootstrap, env.raw_group, env.reports_topic) == 0, 120, "raw sink", sinks
        )
    finally:
        sinks.stop()
    # Damage the table the way an operator's mistake would: a third of the rows gone.
    damage = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from queuewatch.clickhouse.client import connect; "
            "c = connect(sys.argv[1]); "
            "c.command('DELETE FROM queuewatch.queue_reports WHERE cityHash64(event_id) % 3 = 0')",
            f"chdb://{tmp_path / 'clickhouse'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert damage.returncode == 0, damage.stderr
    count_sql = "SELECT count() AS n FROM queue_reports FINAL"
    assert query_rows(env, count_sql)[0]["n"] < len(reports.expected)

    done = subprocess.run(
        [sys.executable, "-m", "queuewatch", "rebuild", "--raw", "--yes", "--drop-old"],
        env=env.environ(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = query_rows(env, "SELECT crossing_id, event_id, wait_minutes FROM queue_reports FINAL")
    got = {(r["crossing_id"], r["event_id"]): r["wait_minutes"] for r in rows}
    assert len(rows) == len(got)  # none twice
    assert got == reports.expected  # every valid report, each with its first arrival
    tables = query_rows(env, "SELECT name FROM system.tables WHERE database = 'queuewatch'")
    assert not [t for t in tables if "queue_reports_" in t["name"]]  # --drop-old


#: What EXCHANGE TABLES does to views and materialized views on chdb: the rebuild (and a
#: windows rebuild after it) relies on all of them following the *names* they were made with.
EXCHANGE_FACTS = """
import json, sys
import chdb.session
s = chdb.session.Session(sys.argv[1])
def q(sql):
    return s.query(sql, "CSV").bytes().decode().split()
q("CREATE DATABASE d")
q("CREATE TABLE d.src (k String) ENGINE = MergeTree ORDER BY k")
q("CREATE TABLE d.src_shadow AS d.src")
q("CREATE TABLE d.dst (k String) ENGINE = MergeTree ORDER BY k")
q("CREATE TABLE d.dst_shadow AS d.dst")
q("CREATE MATERIALIZED VIEW d.mv TO d.dst AS SELECT k FROM d.src")
q("CREATE VIEW d.v AS SELECT k FROM d.src")
q("INSERT INTO d.src VALUES ('old')")
q("INSERT INTO d.src_shadow VALUES ('shadow')")
q("EXCHANGE TABLES d.src AND d.src_shadow")
q("EXCHANGE TABLES d.dst AND d.dst_shadow")
q("INSERT INTO d.src VALUES ('after')")
print(json.dumps({
    "view": q("SELECT * FROM d.v ORDER BY k"),
    "dst": q("SELECT * FROM d.dst ORDER BY k"),
    "dst_shadow": q("SELECT * FROM d.dst_shadow ORDER BY k"),
}))
"""


def test_on_chdb_views_and_materialized_views_follow_table_names_across_exchange(
    tmp_path: Path,
) -> None:
    import json

    done = subprocess.run(
        [sys.executable, "-c", EXCHANGE_FACTS, str(tmp_path / "chdb")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    # A plain view reads whatever table has the name now: the swapped-in rows.
    assert facts["view"] == ['"after"', '"shadow"']
    # The MV fires on inserts into the table that has its source's name now (not on the
    # shadow's own inserts before the swap) and writes into the table that has its target's
    # name now; the old target, renamed, gets nothing more.
    assert facts["dst"] == ['"after"']
    assert facts["dst_shadow"] == ['"old"']
