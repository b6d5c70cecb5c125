"""The contributions sink: ``crossing-contributions`` -> ``crossing_contributions``.

With ``QUEUEWATCH_AGGREGATOR_OUTPUT=contributions`` the aggregator sends each accepted report
once instead of every window it changed, and this sink writes them, one row each. The windows
are not written anywhere: ``crossing_windows`` and ``window_latest`` are views that assemble
them from these rows when they are read (``clickhouse.serving``, made when this sink starts).
A replay after a crash writes the same contributions again, which the ReplacingMergeTree
keeps once.
"""

from __future__ import annotations

from queuewatch.contract.schemas import CROSSING_CONTRIBUTION, default_registry
from queuewatch.sinks.windows import WindowTransform

TABLE = "crossing_contributions"
#: The table is ``PARTITION BY toYYYYMM(observed_at)`` (0006_contributions.sql).
PARTITION_COLUMN = "observed_at"


def transform() -> WindowTransform:
    """Kafka record -> crossing_contributions row (the Avro fields are the columns)."""
    return WindowTransform(default_registry().latest(CROSSING_CONTRIBUTION))
