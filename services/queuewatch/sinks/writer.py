"""The ClickHouse side of a sink: one insert per batch, with a deduplication token."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from queuewatch.clickhouse.client import ENGINE_LOCK, clickhouse_errors

log = logging.getLogger(__name__)


class ClickHouseWriter:
    """Inserts batches into one table with a client that only this writer uses."""

    def __init__(self, client: Any, table: str, columns: Sequence[str]) -> None:
        self.client = client
        self.table = table
        self.columns = list(columns)

    def write(self, rows: Sequence[Sequence[Any]], dedup_token: str) -> None:
        """One insert; ClickHouse drops a repeat of ``dedup_token`` within its window.

        The token needs ``non_replicated_deduplication_window`` on a plain MergeTree (set
        by the migrations) and is honoured by chdb and servers alike.
        """
        with ENGINE_LOCK, clickhouse_errors(f"inserting {len(rows)} rows into {self.table}"):
            self.client.insert(
                self.table,
                rows,
                column_names=self.columns,
                settings={"insert_deduplication_token": dedup_token},
            )
