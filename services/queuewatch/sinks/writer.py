"""The ClickHouse side of a sink: inserts with deduplication tokens, split by partition.

ClickHouse refuses an insert whose rows fall into more than ``max_partitions_per_insert_block``
partitions of the table (error 252, 100 by default). Every table here is partitioned by
month, and a backfill of history easily spans more than 100 months: one such batch would be
refused on every retry. So the writer groups a batch's rows by the table's partition key and
sends at most ``max_partitions`` partitions per insert. Splitting is deterministic (the same
rows give the same parts and tokens), which keeps a replay after a crash idempotent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from queuewatch.clickhouse.client import ENGINE_LOCK, clickhouse_errors

log = logging.getLogger(__name__)

#: The partition a row falls in, as the table's PARTITION BY computes it.
PartitionKey = Callable[[Sequence[Any]], int]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def yyyymm(ms: int) -> int:
    """ClickHouse's ``toYYYYMM`` of a UTC millisecond time, e.g. 202209."""
    when = _EPOCH + timedelta(milliseconds=ms)
    return when.year * 100 + when.month


def months_between(first_ms: int, last_ms: int) -> int:
    """How many calendar months (UTC) ``[first_ms, last_ms]`` touches, both ends included."""
    first, last = yyyymm(first_ms), yyyymm(last_ms)
    return (last // 100 - first // 100) * 12 + (last % 100 - first % 100) + 1


class MonthlyKey:
    """The key of a table ``PARTITION BY toYYYYMM(column)``, for rows in ``columns`` order.

    Calling it gives a row's partition; :meth:`fits` answers "do these rows touch at most
    n partitions?" from the column's minimum and maximum alone (C-level passes), so a
    batch of live traffic (one month, sometimes two) is never grouped row by row.
    """

    def __init__(self, columns: Sequence[str], column: str) -> None:
        self.index = list(columns).index(column)

    def __call__(self, row: Sequence[Any]) -> int:
        return yyyymm(int(row[self.index]))

    def fits(self, rows: Sequence[Sequence[Any]], max_partitions: int) -> bool:
        """True when every row falls into the months of at most ``max_partitions`` partitions."""
        if not rows:
            return True
        index = self.index
        values = [row[index] for row in rows]
        return months_between(int(min(values)), int(max(values))) <= max_partitions


def monthly(columns: Sequence[str], column: str) -> MonthlyKey:
    """The key of a table ``PARTITION BY toYYYYMM(column)``, for rows in ``columns`` order."""
    return MonthlyKey(columns, column)


def split_by_partition(
    rows: Sequence[Sequence[Any]], key: PartitionKey, max_partitions: int
) -> list[list[Sequence[Any]]]:
    """Rows grouped into parts of at most ``max_partitions`` partitions each.

    One part (the rows as they are) when they fit; otherwise partitions in ascending order,
    so the same rows always give the same parts. Rows keep their order within a partition.
    """
    if isinstance(key, MonthlyKey) and key.fits(rows, max_partitions):
        return [list(rows)]
    by_partition: dict[int, list[Sequence[Any]]] = {}
    for row in rows:
        by_partition.setdefault(key(row), []).append(row)
    if len(by_partition) <= max_partitions:
        return [list(rows)]
    ordered = sorted(by_partition)
    return [
        [row for p in ordered[i : i + max_partitions] for row in by_partition[p]]
        for i in range(0, len(ordered), max_partitions)
    ]


class ClickHouseWriter:
    """Inserts batches into one table with a client that only this writer uses."""

    def __init__(
        self,
        client: Any,
        table: str,
        columns: Sequence[str],
        partition_key: PartitionKey | None = None,
        max_partitions: int = 100,
    ) -> None:
        self.client = client
        self.table = table
        self.columns = list(columns)
        self.partition_key = partition_key
        self.max_partitions = max(1, max_partitions)

    def write(self, rows: Sequence[Sequence[Any]], dedup_token: str) -> None:
        """Insert ``rows``, in parts of at most ``max_partitions`` table partitions.

        A batch that fits keeps ``dedup_token`` as it is; parts get ``token/part-i-of-n``.
        ClickHouse drops a repeat of a token within its window, so parts written before a
        failure are not written twice when the whole batch is retried. The token needs
        ``non_replicated_deduplication_window`` on a plain MergeTree (set by the migrations)
        and is honoured by chdb and servers alike.
        """
        if self.partition_key is None:
            parts = [list(rows)]
        else:
            parts = split_by_partition(rows, self.partition_key, self.max_partitions)
        if len(parts) > 1:
            log.info(
                "%s: %d rows span more than %d partitions; writing them in %d inserts",
                self.table,
                len(rows),
                self.max_partitions,
                len(parts),
            )
        for i, part in enumerate(parts, 1):
            token = dedup_token if len(parts) == 1 else f"{dedup_token}/part-{i}-of-{len(parts)}"
            # Columns, not rows: clickhouse-connect serializes column by column, so handing
            # it columns (one C-level transpose here) spares it a transpose of its own.
            columns = list(zip(*part, strict=True)) if part else [() for _ in self.columns]
            with ENGINE_LOCK, clickhouse_errors(f"inserting {len(part)} rows into {self.table}"):
                self.client.insert(
                    self.table,
                    columns,
                    column_names=self.columns,
                    column_oriented=True,
                    settings={"insert_deduplication_token": token},
                )
