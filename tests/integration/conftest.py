"""Fixtures of the integration tests that read through the query guard."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from queuewatch.clickhouse.client import connect
from queuewatch.clickhouse.guard import QueryLimits
from queuewatch.clickhouse.migrations import migrate
from queuewatch.clickhouse.query import GuardedReader, readonly_client

#: The database the guarded reader may read (the migrations create it).
DB = "queuewatch"
#: Small limits, so a test that hits one hits it at once.
LIMITS = QueryLimits(
    max_execution_time_s=2.0,
    max_memory_bytes=1 << 30,
    max_result_rows=1000,
    max_result_bytes=1 << 20,
)


@pytest.fixture
def reader(chdb_url: str) -> Iterator[GuardedReader]:
    """A guarded read-only reader of a fresh, migrated chdb folder."""
    admin = connect(chdb_url)
    migrate(admin, DB)
    guarded = GuardedReader(readonly_client(chdb_url, DB, LIMITS), DB, LIMITS)
    try:
        yield guarded
    finally:
        guarded.close()
        admin.close()
