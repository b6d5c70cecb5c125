"""Every SQL query of the Grafana dashboard runs on the migrated schema, through the guard.

Each query (panels and template variables) is expanded as Grafana's ClickHouse plugin expands
its macros, then run by the same guarded read path as `queuewatch query` (parsed and checked by
``clickhouse/guard.py``, read-only, limited) on a fresh chdb folder with every migration
applied. A column or view renamed by a later migration fails here, not on an operator's screen.
A few windows are written first, so the figures the panels show can be compared with them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from queuewatch.clickhouse.client import connect
from queuewatch.clickhouse.migrations import migrate
from queuewatch.clickhouse.query import GuardedReader, readonly_client
from tests.integration.conftest import DB, LIMITS
from tests.support import grafana

pytestmark = pytest.mark.integration

CROSSING = "ge-ru-verkhny-lars"
HOUR_S = 3600
#: The first hour boundary inside the test time range, and the hourly medians written from it.
FIRST_HOUR_S = (grafana.TIME_FROM_S // HOUR_S + 1) * HOUR_S
HOURLY_P50 = [2400.0, 2700.0, 3000.0]


def _window(size_s: int, end_s: int, p50: float, **extra: Any) -> dict[str, Any]:
    row = {
        "crossing_id": CROSSING,
        "from_country": "RU",
        "to_country": "GE",
        "traffic_class": "car",
        "window_size": {HOUR_S: "1h", 3 * HOUR_S: "3h", 24 * HOUR_S: "24h"}[size_s],
        "window_start": end_s - size_s,
        "window_end": end_s,
        "reports": 3,
        "sources": 2,
        "wait_minutes_p50": p50,
        "wait_minutes_last": int(p50),
        "queue_vehicles_last": 3500,
        "status_last": "delay",
        "last_observed_at": end_s - 60,
        "version": 1,
        "updated_at": end_s,
        "confidence": "high",
    }
    row.update(extra)
    return row


def _windows() -> list[dict[str, Any]]:
    hourly = [_window(HOUR_S, FIRST_HOUR_S + i * HOUR_S, p50) for i, p50 in enumerate(HOURLY_P50)]
    last = FIRST_HOUR_S + (len(HOURLY_P50) - 1) * HOUR_S
    return [
        *hourly,
        # A hopping 1 h window that ends off the hour: overlaps the hourly ones, not drawn.
        _window(HOUR_S, last - 5 * 60, 9999.0),
        # Hourly, but before the time range: not drawn either.
        _window(HOUR_S, grafana.TIME_FROM_S - 2 * HOUR_S, 1.0),
        _window(3 * HOUR_S, last, 2700.0),
        _window(24 * HOUR_S, last, 2000.0),
    ]


#: The DateTime64(3, 'UTC') columns written here, given in UTC seconds.
_DATES = {"window_start", "window_end", "last_observed_at", "updated_at"}


def _literal(column: str, value: Any) -> str:
    if column in _DATES:
        return f"fromUnixTimestamp64Milli({int(value) * 1000}, 'UTC')"
    return f"'{value}'" if isinstance(value, str) else repr(value)


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuardedReader]:
    """A guarded reader of a migrated chdb folder holding the windows of one lane.

    One folder for the module: every test only reads, and migrating costs most of the time.
    """
    chdb_url = f"chdb://{tmp_path_factory.mktemp('grafana') / 'clickhouse'}"
    admin = connect(chdb_url)
    migrate(admin, DB)
    rows = _windows()
    columns = list(rows[0])
    admin.command(
        f"INSERT INTO {DB}.crossing_windows ({', '.join(columns)}) VALUES "
        + ", ".join("(" + ", ".join(_literal(c, row[c]) for c in columns) + ")" for row in rows)
    )
    guarded = GuardedReader(readonly_client(chdb_url, DB, LIMITS), DB, LIMITS)
    try:
        yield guarded
    finally:
        guarded.close()
        admin.close()


def _sql_queries() -> list[grafana.Query]:
    found = [
        q
        for q in grafana.queries(grafana.dashboard())
        if q.datasource_type == grafana.CLICKHOUSE_PLUGIN
    ]
    assert found, "the dashboard has no ClickHouse query"
    return found


def _run(reader: GuardedReader, query: grafana.Query) -> dict[str, Any]:
    sql = grafana.expand_sql(query.text, {"crossing": [CROSSING]})
    body, _ = reader.run_http(sql, "JSONCompact")
    result: dict[str, Any] = json.loads(body)
    return result


@pytest.mark.parametrize("query", _sql_queries(), ids=lambda q: q.where)
def test_a_dashboard_query_runs_on_the_migrated_schema_through_the_guard(
    reader: GuardedReader, query: grafana.Query
) -> None:
    result = _run(reader, query)
    assert result["data"], f"{query.where} shows nothing for a lane with windows"
    if query.fmt == "timeseries":
        # The plugin turns long rows into series around a DateTime column named time.
        first = result["meta"][0]
        assert first["name"] == "time" and first["type"].startswith("DateTime"), first


def _by_where(title: str) -> grafana.Query:
    found = [q for q in _sql_queries() if q.where.startswith(f"panel {title!r}")]
    assert len(found) == 1, title
    return found[0]


def test_the_wait_over_time_panel_draws_the_hourly_windows_of_the_time_range(
    reader: GuardedReader,
) -> None:
    result = _run(reader, _by_where("Median wait over time (1 h windows)"))
    assert [row[2] for row in result["data"]] == HOURLY_P50
    assert {row[1] for row in result["data"]} == {f"{CROSSING} RU→GE car"}


def test_the_current_panel_shows_the_lanes_latest_wait_and_queue(
    reader: GuardedReader,
) -> None:
    result = _run(reader, _by_where("Current wait and queue"))
    names = [column["name"] for column in result["meta"]]
    rows = [dict(zip(names, row, strict=True)) for row in result["data"]]
    assert len(rows) == 1
    # From the current 24 h window, as crossing_status reads it (docs/consumers.md).
    assert rows[0]["crossing"] == CROSSING and rows[0]["direction"] == "RU→GE"
    assert rows[0]["wait_minutes"] == 2000
    assert rows[0]["queue_vehicles"] == 3500
    # Written in 2026's autumn and read now: stale, so its confidence is lowered.
    assert rows[0]["stale"] == 1 and rows[0]["confidence"] == "low"


def test_a_misspelt_column_fails_the_query_naming_it(reader: GuardedReader) -> None:
    # What the parametrised test catches when a migration renames a column.
    broken = grafana.Query(
        "a panel",
        grafana.CLICKHOUSE_PLUGIN,
        "SELECT wait_minute FROM queuewatch.crossing_status WHERE crossing_id IN "
        "(${crossing:singlequote})",
    )
    with pytest.raises(Exception, match="wait_minute"):
        _run(reader, broken)
