"""The contributions the aggregator sends for a log of reports, computed in-process.

Why: the contributions sink's benchmark needs the records `queuewatch aggregator` with
``QUEUEWATCH_AGGREGATOR_OUTPUT=contributions`` would publish for a dataset, without running
an aggregator in the timed part. This drives the aggregator's own steps (``intake``,
``contributions.apply_report``) over the log in order, one partition, as a
single worker that never restarts would, with the partitions the SDK's partitioner gives
(murmur2 of the key, as Kafka's Java client); the sink then sees exactly those records.
"""

from __future__ import annotations

from collections.abc import Sequence

from kafka.partitioner.default import murmur2

from queuewatch.aggregator.contributions import apply_report
from queuewatch.aggregator.intake import RawMessage, intake, reader_schema
from queuewatch.aggregator.state import NO_WATERMARK, AggregationConfig, CrossingState
from queuewatch.contract.codec import encode
from queuewatch.contract.schemas import CROSSING_CONTRIBUTION, default_registry
from queuewatch.settings import AggregatorSettings


def contribution_messages(
    reports: Sequence[tuple[bytes, bytes]], now_ms: int, partitions: int = 12
) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` of every contribution ``reports`` (in log order) give, encoded.

    ``now_ms`` is the wall clock the validation compares ``observed_at`` with (the log's
    reports must not lie in its future) and the records' ``updated_at``.
    """
    config = AggregationConfig.from_settings(AggregatorSettings(), panes=False)
    offsets = [0] * partitions
    raw = []
    for key, value in reports:
        partition = (murmur2(key) & 0x7FFFFFFF) % partitions
        raw.append(RawMessage("reports", partition, offsets[partition], now_ms, key, value, []))
        offsets[partition] += 1
    accepted, _dead = intake(raw, reader_schema())
    schema = default_registry().latest(CROSSING_CONTRIBUTION)
    states: dict[str, CrossingState] = {}
    clocks = [NO_WATERMARK] * partitions  # newest observed_at applied per partition
    out: list[tuple[bytes, bytes]] = []
    for item in accepted:
        cid = item.record["crossing_id"]
        state = states.get(cid)
        if state is None:
            state = states[cid] = CrossingState(cid, config)
        p = item.partition
        _, row = apply_report(state, item.record, p, item.offset, clocks[p], contribute=True)
        if row is not None:
            row["updated_at"] = now_ms
            out.append((cid.encode(), encode(row, schema)))
        clocks[p] = max(clocks[p], item.record["observed_at"])
    return out
