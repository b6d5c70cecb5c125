"""What a database fed by output contributions stores, and what reading its windows costs.

Run in a child process on a chdb folder a sink has just left (one process per folder):
``python -m benchmarks.view_reads FOLDER`` prints one JSON object:

* ``stored_rows``: rows in every table of the database (the contributions, the raw reports
  when the raw sink ran, any materialized view's target), i.e. what ClickHouse wrote;
* ``reads``: for each consumer query, the median and the slowest of ``REPEATS`` runs (s) and
  the rows it returned. The windows are views assembled when read
  (``queuewatch.clickhouse.serving``), so their cost moved here from the sink.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

REPEATS = 5


def _queries() -> dict[str, str]:
    from queuewatch.dashboard.queries import SPARKLINES_SQL

    return {
        "crossing_status": "SELECT * FROM crossing_status",
        "current_windows": "SELECT * FROM current_windows",
        "one_crossing_1h_windows": (
            "SELECT * FROM crossing_windows FINAL "
            "WHERE crossing_id = {c:String} AND window_size = '1h' ORDER BY window_start"
        ),
        "dashboard_sparklines": SPARKLINES_SQL,
        "every_window_count": "SELECT count() FROM crossing_windows FINAL",
    }


def measure(folder: str) -> dict[str, Any]:
    """Stored rows and read timings of the database in ``folder``."""
    from queuewatch.clickhouse.client import connect
    from queuewatch.settings import CommonSettings

    database = CommonSettings().clickhouse_database
    client = connect(f"chdb://{folder}", database=database)
    tables = client.query(
        "SELECT name, total_rows FROM system.tables WHERE database = {d:String} "
        "AND engine LIKE '%MergeTree' AND name != 'schema_migrations'",
        parameters={"d": database},
    ).result_rows
    crossing = client.command(
        "SELECT crossing_id FROM crossing_contributions GROUP BY crossing_id "
        "ORDER BY count() DESC, crossing_id LIMIT 1"
    )
    reads: dict[str, Any] = {}
    for name, sql in _queries().items():
        times, rows = [], 0
        for _ in range(REPEATS):
            t = time.perf_counter()
            bound = {"c": str(crossing)} if "{c:String}" in sql else None
            rows = len(client.query(sql, parameters=bound).result_rows)
            times.append(time.perf_counter() - t)
        reads[name] = {
            "median_s": round(statistics.median(times), 4),
            "max_s": round(max(times), 4),
            "rows": rows,
        }
    client.close()
    return {
        "stored_rows": {str(name): int(rows or 0) for name, rows in tables},
        "reads": reads,
        "repeats": REPEATS,
    }


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1])))
