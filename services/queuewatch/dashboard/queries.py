"""What the dashboard asks ClickHouse: a few fixed SELECTs over the consumers' views.

The page never sends SQL. Each figure it shows comes from one of the statements below, run
through :func:`queuewatch.clickhouse.query.query_projections` (the guarded, read-only path of
``queuewatch query``), so the dashboard can read no more than a person at the terminal can.
The one input a visitor controls, the lane of the detail view, is checked against the
contract's own patterns before it is quoted into a statement, so it cannot carry SQL.

The sparkline takes one 1 h window per hour (those starting on the hour), 24 points a lane,
so a thousand lanes stay a small answer. "The last 24 hours" is the data's, not the wall
clock's: it ends at the newest 1 h window. A replay of September 2022 then draws its own day,
and a live feed draws today.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from queuewatch.contract.validation import CROSSING_ID_RE
from queuewatch.errors import QueuewatchError

#: Runs one guarded query and returns its JSONEachRow bytes.
Runner = Callable[[str], bytes]

COUNTRY_RE: Final = re.compile(r"[A-Z]{2}")
TRAFFIC_CLASSES: Final = frozenset(
    {"car", "truck", "bus", "motorcycle", "pedestrian", "bicycle", "mixed"}
)
#: Latest raw reports in the detail view: enough to see who said what, small enough to read.
RAW_REPORTS_SHOWN: Final = 50
#: Hours of 1 h windows in the detail view's chart.
DETAIL_HOURS: Final = 48

LANE_COLUMNS = "crossing_id, from_country, to_country, traffic_class"

CROSSINGS_SQL: Final = f"""
SELECT
    {LANE_COLUMNS},
    status,
    toNullable(toInt32(round(ifNull(consensus_wait_minutes, wait_minutes)))) AS wait_now,
    toNullable(toInt32(round(ifNull(consensus_queue_vehicles, queue_vehicles))))
        AS queue_now,
    round(ifNull(consensus_queue_length_km, queue_length_km), 1) AS queue_km_now,
    wait_trend,
    reports_1h,
    sources_1h,
    reports_3h,
    sources_3h,
    reports_24h,
    sources_24h,
    toString(last_report_at) AS last_report_at,
    freshness_s,
    stale,
    confidence,
    confidence_reasons
FROM crossing_status
ORDER BY {LANE_COLUMNS}
"""

SPARKLINES_SQL: Final = f"""
SELECT
    {LANE_COLUMNS},
    groupArray((toUnixTimestamp64Milli(window_end), round(wait_minutes_p50, 1))) AS points
FROM (
    SELECT {LANE_COLUMNS}, window_end, wait_minutes_p50
    FROM crossing_windows FINAL
    WHERE window_size = '1h' AND toMinute(window_start) = 0
      AND window_end > (
          SELECT max(window_end) FROM crossing_windows WHERE window_size = '1h'
      ) - INTERVAL 24 HOUR
    ORDER BY {LANE_COLUMNS}, window_end
)
GROUP BY {LANE_COLUMNS}
ORDER BY {LANE_COLUMNS}
"""


@dataclass(frozen=True)
class Lane:
    """One crossing, direction and traffic class: the row of the dashboard's table."""

    crossing_id: str
    from_country: str
    to_country: str
    traffic_class: str

    @classmethod
    def parse(cls, crossing: str, origin: str, destination: str, traffic_class: str) -> Lane:
        """A lane from a visitor's input, refused unless every part has the contract's form."""
        if CROSSING_ID_RE.fullmatch(crossing) is None:
            raise LaneError(f"crossing {crossing[:80]!r} is not a crossing id (a-z, 0-9, -)")
        for name, value in (("from", origin), ("to", destination)):
            if COUNTRY_RE.fullmatch(value) is None:
                raise LaneError(f"{name} {value[:80]!r} is not an ISO country code (two letters)")
        if traffic_class not in TRAFFIC_CLASSES:
            raise LaneError(
                f"class {traffic_class[:80]!r} is not one of {', '.join(sorted(TRAFFIC_CLASSES))}"
            )
        return cls(crossing, origin, destination, traffic_class)

    def where(self) -> str:
        """The SQL condition for this lane; safe, as :meth:`parse` admits only [a-zA-Z0-9-]."""
        return (
            f"crossing_id = '{self.crossing_id}' AND from_country = '{self.from_country}' "
            f"AND to_country = '{self.to_country}' AND traffic_class = '{self.traffic_class}'"
        )


class LaneError(QueuewatchError):
    """The page asked for a lane that cannot exist (answered 400)."""


def detail_windows_sql(lane: Lane) -> str:
    """The lane's 1 h windows over its last :data:`DETAIL_HOURS` hours of data, one per hour."""
    return f"""
SELECT
    toString(window_start) AS start_at,
    toString(window_end) AS end_at,
    reports, sources,
    round(wait_minutes_p50) AS wait_p50, round(wait_minutes_p90) AS wait_p90,
    wait_minutes_max AS wait_max, queue_vehicles_max AS queue_max,
    round(queue_length_km_max, 1) AS queue_km_max,
    round(consensus_wait_minutes) AS consensus_wait, toString(confidence) AS confidence_grade
FROM crossing_windows FINAL
WHERE {lane.where()} AND window_size = '1h' AND toMinute(window_start) = 0
  AND window_end > (
      SELECT max(window_end) FROM crossing_windows WHERE {lane.where()} AND window_size = '1h'
  ) - INTERVAL {DETAIL_HOURS} HOUR
ORDER BY window_start
"""


def raw_reports_sql(lane: Lane) -> str:
    """The lane's newest raw reports, as the sources sent them."""
    return f"""
SELECT
    toString(observed_at) AS observed_at,
    toString(source_type) AS source_type, source_name,
    wait_minutes, queue_vehicles, queue_length_km, toString(status) AS status, note
FROM queue_reports FINAL
WHERE {lane.where()}
ORDER BY observed_at DESC, event_id
LIMIT {RAW_REPORTS_SHOWN}
"""


def rows(body: bytes) -> list[dict[str, Any]]:
    """The rows of a JSONEachRow answer."""
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def crossings(run: Runner) -> list[dict[str, Any]]:
    """Every lane's current figures, each with its 24 h sparkline points attached."""
    lanes = rows(run(CROSSINGS_SQL))
    lines = {_key(r): r["points"] for r in rows(run(SPARKLINES_SQL))}
    for lane in lanes:
        lane["sparkline"] = lines.get(_key(lane), [])
    return lanes


def detail(run: Runner, lane: Lane) -> dict[str, Any]:
    """One lane's windows over time and its latest raw reports."""
    return {
        "lane": lane.__dict__,
        "windows": rows(run(detail_windows_sql(lane))),
        "reports": rows(run(raw_reports_sql(lane))),
    }


def _key(row: dict[str, Any]) -> tuple[str, str, str, str]:
    return (row["crossing_id"], row["from_country"], row["to_country"], row["traffic_class"])
