"""The contributions sink: ``crossing-contributions`` -> ``crossing_contributions``, and the
windows they touch -> ``crossing_windows``, assembled inside ClickHouse.

With ``QUEUEWATCH_AGGREGATOR_OUTPUT=contributions`` the aggregator sends each accepted report
once instead of every window it changed. This sink writes the batch's contributions, then,
in the same batch and before its offsets are committed, rewrites every window of the lanes
the batch touched that overlaps what it brought, from all the contributions stored
(``clickhouse.assembly``): ``crossing_windows``, ``window_latest`` and every view on them
are then exactly what the window sink writes from the windows topic, while the broker and
this process carry one record per report. A replay after a crash writes the same
contributions (ReplacingMergeTree) and the same windows (same versions) again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from queuewatch.aggregator.state import AggregationConfig
from queuewatch.clickhouse.assembly import LaneSpan, materialize_sql
from queuewatch.clickhouse.client import ENGINE_LOCK, clickhouse_errors
from queuewatch.contract.schemas import CROSSING_CONTRIBUTION, default_registry
from queuewatch.sinks.windows import WindowTransform, window_columns
from queuewatch.sinks.writer import ClickHouseWriter

log = logging.getLogger(__name__)

TABLE = "crossing_contributions"
#: The table is ``PARTITION BY toYYYYMM(observed_at)`` (0006_contributions.sql).
PARTITION_COLUMN = "observed_at"
#: The rows this engine has inserted since it started (empty before its first insert).
_INSERTED_ROWS = "SELECT value FROM system.events WHERE event = 'InsertedRows'"
#: Queries carry the batch's lanes as a literal: room for 10,000 lanes and their names.
_MAX_QUERY_BYTES = 64 << 20


def transform() -> WindowTransform:
    """Kafka record -> crossing_contributions row (the Avro fields are the columns)."""
    return WindowTransform(default_registry().latest(CROSSING_CONTRIBUTION))


def lane_spans(rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> list[LaneSpan]:
    """Per lane of the batch, the first and last ``observed_at`` it brought (ms)."""
    i = [columns.index(c) for c in ("crossing_id", "from_country", "to_country", "traffic_class")]
    t = columns.index("observed_at")
    spans: dict[tuple[str, str, str, str], list[int]] = {}
    for row in rows:
        key = (row[i[0]], row[i[1]], row[i[2]], row[i[3]])
        ms = int(row[t])
        span = spans.get(key)
        if span is None:
            spans[key] = [ms, ms]
        elif ms < span[0]:
            span[0] = ms
        elif ms > span[1]:
            span[1] = ms
    return [(*key, lo, hi) for key, (lo, hi) in spans.items()]


class AssemblingWriter:
    """Writes a batch of contributions, then the windows it touched (a ``BatchWriter``)."""

    def __init__(
        self, client: Any, inner: ClickHouseWriter, config: AggregationConfig, database: str
    ) -> None:
        self.client = client
        self.inner = inner
        self.config = config
        self.database = database
        self.window_columns = window_columns()
        #: rows the assembly has written so far, to crossing_windows and, through its
        #: materialized view, to window_latest (the benchmarks' "rows written downstream")
        self.windows_written = 0
        # A server reports the rows an insert wrote; chdb does not, so there they are counted
        # with the engine's own counter, which only this process moves (and every insert of
        # it holds ENGINE_LOCK, so the difference around one statement is that statement's).
        self._count_by_events = type(client).__name__ == "ChdbClient"

    def write(self, rows: list[Any], dedup_token: str) -> None:
        """Insert the contributions (deduplicated by ``dedup_token``), then their windows."""
        self.inner.write(rows, dedup_token)
        if not rows:
            return
        spans = lane_spans(rows, self.inner.columns)
        sql = materialize_sql(
            self.config.families,
            self.config.consensus,
            self.config.consensus_max_size,
            self.database,
            self.window_columns,
            spans,
        )
        with ENGINE_LOCK, clickhouse_errors(f"assembling the windows of {len(spans)} lanes"):
            before = self._inserted_rows() if self._count_by_events else 0
            summary = self.client.command(sql, settings={"max_query_size": _MAX_QUERY_BYTES})
            if self._count_by_events:
                written = self._inserted_rows() - before
            else:
                written = int(getattr(summary, "summary", {}).get("written_rows", 0))
        self.windows_written += written

    def _inserted_rows(self) -> int:
        """The engine's ``InsertedRows`` counter (``window_latest_mv``'s rows included)."""
        value = self.client.command(_INSERTED_ROWS)
        return int(value) if str(value).strip() else 0
