"""Query latency: the consumer views on a big event store, on the embedded engine (chdb).

A fresh chdb folder gets the project's migrations, then synthetic rows inserted in bulk
inside the engine (``INSERT ... SELECT ... FROM numbers(N)``: millions of rows in seconds,
where going through Kafka and the sinks would take many minutes): N raw reports over 30 days
and ``query_crossings`` crossings (two direction/class keys each), plus the 1h/3h/24h
windows of the last two days for every key. Then each query of docs/consumers.md that a
consumer runs first is timed ``query_repeats`` times after one warm-up, result rows fetched
into Python (clickhouse-connect, as a consumer would):

* ``crossing_status``: the whole view (one row per crossing, direction and class);
* ``crossing_report_summary`` (when the migrations have it): the raw-report totals per key,
  which read every report;
* ``one_crossing_24h_windows``: one crossing's last 24 hours from the 1 h windows;
* ``one_crossing_24h_reports``: every report of one crossing in the last 24 hours.

The dashboard's load time is measured on the same store (``benchmarks/dashboard_load.py``).

The rows arrive in one insert per table, so each month partition holds few parts; a live
store has more parts until merges catch up, which makes FINAL somewhat slower.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.context import Context
from benchmarks.dashboard_load import dashboard_load
from benchmarks.stats import percentile
from queuewatch.contract.schemas import CROSSING_WINDOW, default_registry
from queuewatch.sinks.windows import window_columns

#: The columns this generator fills (crossing_window v1's); later ones keep their defaults.
V1_COLUMNS = ", ".join(window_columns(default_registry().versions(CROSSING_WINDOW)[0]))

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
#: (name, size, step) of the aggregator's default window families.
FAMILIES = [("1h", HOUR_MS, 300_000), ("3h", 3 * HOUR_MS, 900_000), ("24h", DAY_MS, HOUR_MS)]


def _insert_reports(client: Any, db: str, n: int, crossings: int, now_ms: int) -> None:
    span = 30 * DAY_MS
    client.command(
        f"""
        INSERT INTO {db}.queue_reports (event_id, crossing_id, from_country, to_country,
            traffic_class, observed_at, source_type, source_name, source_url, wait_minutes,
            queue_vehicles, queue_persons, queue_length_km, throughput_per_hour, lanes_open,
            status, location_lat, location_lon, note, kafka_partition, kafka_offset,
            schema_fingerprint)
        SELECT
            lower(hex(sipHash128(number))),
            concat('q-x', leftPad(toString(number % {crossings}), 4, '0')),
            'RU', 'KZ',
            if(intDiv(number, {crossings}) % 2 = 0, 'car', 'truck'),
            fromUnixTimestamp64Milli(toInt64({now_ms} - intDiv(number * {span}, {n})), 'UTC'),
            ['official_feed', 'crowd', 'journalist', 'sensor'][number % 4 + 1],
            concat('source-', toString(number % 17)),
            NULL,
            if(number % 10 = 0, NULL, toInt32(number % 2400)),
            if(number % 3 = 0, NULL, toInt32(number % 4000)),
            NULL,
            if(number % 2 = 0, NULL, (number % 250) / 10.0),
            if(number % 4 = 0, (number % 400) + 20.0, NULL),
            NULL,
            ['open', 'delay', 'restricted', 'closed', 'unknown'][number % 5 + 1],
            NULL, NULL, NULL,
            toUInt32(number % 12), number, '0000000000000000'
        FROM numbers({n})
        """
    )


def _insert_windows(client: Any, db: str, crossings: int, now_ms: int) -> int:
    keys = 2 * crossings
    total = 0
    for name, size, step in FAMILIES:
        count = 2 * DAY_MS // step  # windows of the last two days, per key
        rows = keys * count
        aligned = now_ms // step * step
        client.command(
            f"""
            INSERT INTO {db}.crossing_windows ({V1_COLUMNS})
            SELECT
                concat('q-x', leftPad(toString(intDiv(number % {keys}, 2)), 4, '0')),
                'RU', 'KZ',
                if(number % 2 = 0, 'car', 'truck'),
                '{name}',
                fromUnixTimestamp64Milli(
                    toInt64({aligned} - intDiv(number, {keys}) * {step}), 'UTC'),
                fromUnixTimestamp64Milli(
                    toInt64({aligned} - intDiv(number, {keys}) * {step} + {size}), 'UTC'),
                toUInt32(number % 50 + 1), toUInt32(number % 5 + 1),
                toInt32(number % 100), toInt32(number % 2400 + 100), (number % 2400) / 2.0,
                (number % 2400) / 2.0, (number % 2400) * 0.9, toInt32(number % 1200),
                toInt32(number % 4000), (number % 4000) / 2.0, toInt32(number % 3000),
                (number % 250) / 10.0, (number % 250) / 20.0, (number % 200) / 10.0,
                'delay',
                fromUnixTimestamp64Milli(toInt64(least({now_ms},
                    {aligned} - intDiv(number, {keys}) * {step} + {size} - 1000)), 'UTC'),
                toUInt64(1),
                fromUnixTimestamp64Milli(toInt64({now_ms}), 'UTC')
            FROM numbers({rows})
            """
        )
        total += rows
    return total


QUERIES = {
    "crossing_status": "SELECT * FROM {db}.crossing_status",
    "one_crossing_24h_windows": (
        "SELECT window_end, reports, sources, wait_minutes_p50, wait_minutes_p90, "
        "wait_minutes_max, queue_vehicles_max, status_last FROM {db}.crossing_windows FINAL "
        "WHERE crossing_id = 'q-x0042' AND window_size = '1h' AND toMinute(window_end) = 0 "
        "AND window_end > now64(3) - INTERVAL 24 HOUR ORDER BY window_end"
    ),
    "one_crossing_24h_reports": (
        "SELECT observed_at, traffic_class, source_name, wait_minutes, queue_vehicles, "
        "queue_length_km, status FROM {db}.queue_reports FINAL WHERE crossing_id = 'q-x0042' "
        "AND observed_at > now64(3) - INTERVAL 24 HOUR ORDER BY observed_at"
    ),
}


def query(ctx: Context) -> dict[str, Any]:
    """Fill a fresh chdb folder and time the consumer queries."""
    from queuewatch.clickhouse.client import connect
    from queuewatch.clickhouse.migrations import migrate

    plan = ctx.plan
    db = "queuewatch"
    url = f"chdb://{ctx.work / 'chdb-query'}"
    client = connect(url)
    try:
        migrate(client, db)
        now_ms = int(time.time() * 1000)
        t0 = time.perf_counter()
        _insert_reports(client, db, plan.query_reports, plan.query_crossings, now_ms)
        insert_reports_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        window_rows = _insert_windows(client, db, plan.query_crossings, now_ms)
        insert_windows_s = time.perf_counter() - t0
        reports = int(client.command(f"SELECT count() FROM {db}.queue_reports"))
        timings: dict[str, Any] = {}
        queries = dict(QUERIES)
        # Since migration 0004 crossing_status reads a small MV-fed table; the raw-report
        # totals (a scan of every report) moved to this view, so it is timed too.
        if int(client.command(f"EXISTS TABLE {db}.crossing_report_summary")):
            queries["crossing_report_summary"] = "SELECT * FROM {db}.crossing_report_summary"
        for name, template in queries.items():
            sql = template.format(db=db)
            rows = len(client.query(sql).result_rows)  # warm-up: caches, marks
            seconds = []
            for _ in range(plan.query_repeats):
                t0 = time.perf_counter()
                rows = len(client.query(sql).result_rows)
                seconds.append(time.perf_counter() - t0)
            timings[name] = {
                "rows_returned": rows,
                "p50_s": round(percentile(seconds, 0.5) or 0.0, 4),
                "min_s": round(min(seconds), 4),
                "max_s": round(max(seconds), 4),
                "repeats": len(seconds),
            }
        dashboard = dashboard_load(url, db, plan.query_repeats)
    finally:
        client.close()
    return {
        "what": "consumer queries on the embedded engine (chdb, in-process client) over "
        "synthetic rows inserted in bulk",
        "queue_reports_rows": reports,
        "crossing_windows_rows": window_rows,
        "crossings": plan.query_crossings,
        "insert_rows_per_s": round(reports / insert_reports_s, 1),
        "insert_windows_rows_per_s": round(window_rows / insert_windows_s, 1),
        "queries": timings,
        "dashboard": dashboard,
        "sql": {k: v.format(db=db) for k, v in queries.items()},
    }
