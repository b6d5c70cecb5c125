"""A partition with lag that never delivers is repaired, not waited on (aggregator app glue).

Seen in a loop of the burst-kill pattern (1 round in 40): after two kills, partition 8's 263
unapplied reports were fetched by faust and dropped (the partition was paused between the
fetch and the delivery), the fetch position stayed past them, and no later report came to show
the hole: the partition delivered nothing for good while the others caught up. Here the
aggregator's progress sample and repair run against a stand-in for faust's consumer and the
gap probe; the real thing runs in the chaos tests and the soak.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, ClassVar

from faust.types import TP

from queuewatch.aggregator import app as appmod
from queuewatch.aggregator import progress as progressmod
from queuewatch.settings import AggregatorSettings, CommonSettings

REPORTS = "queue-reports"


class Consumer:
    def __init__(self, end: int, fetched: int, paused: bool = False) -> None:
        self.tp = TP(REPORTS, 8)
        self.end, self.fetched = end, fetched
        self._paused_partitions = {self.tp} if paused else set()
        self.sought: list[dict[TP, int]] = []
        self.resumed: list[set[TP]] = []

    def assignment(self) -> set[TP]:
        return {self.tp}

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.end for tp in tps}

    async def position(self, tp: TP) -> int:
        return self.fetched

    async def seek_wait(self, seek: dict[TP, int]) -> None:
        self.sought.append(dict(seek))

    def resume_partitions(self, tps: set[TP]) -> None:
        self.resumed.append(set(tps))
        self._paused_partitions -= set(tps)


class Recovery:
    in_recovery = False
    active_offsets: ClassVar[dict[TP, int]] = {}


class App:
    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.rebalancing = False
        self.tables = type("Tables", (), {"recovery": Recovery()})()


class Probe:
    def __init__(self, first: int | None) -> None:
        self.first = first
        self.asked: list[tuple[int, int]] = []

    async def first_at_or_after(self, topic: str, partition: int, offset: int) -> int | None:
        self.asked.append((partition, offset))
        return self.first


def aggregator(tmp_path: Path, consumer: Consumer, probe: Probe) -> Any:
    common = CommonSettings(home=str(tmp_path), kafka_bootstrap="127.0.0.1:1")
    agg = appmod.Aggregator(common, AggregatorSettings(), 12)  # no broker: nothing is started
    agg.progress.app = App(consumer)
    agg.progress.gaps = probe
    agg.progress.order.own(8, 14)
    agg.progress.delivered_at[8] = time.monotonic() - 2 * progressmod._SILENT_AFTER_S
    return agg.progress


def sample_and_repair(agg: Any) -> tuple[int, int, list[Any]]:
    async def run() -> tuple[int, int, list[Any]]:
        silent: list[Any] = []
        position, lag, _ = await agg.sample_progress(silent)
        if silent:
            await agg.repair_silent(silent)
        return position, lag, silent

    return asyncio.run(run())


def test_a_silent_partition_whose_records_exist_is_sought_back_to_its_next_offset(
    tmp_path: Path,
) -> None:
    consumer = Consumer(end=277, fetched=277)
    agg = aggregator(tmp_path, consumer, Probe(first=14))
    position, lag, silent = sample_and_repair(agg)
    assert (position, lag) == (14, 263)
    assert [(tp.partition, nxt, end) for tp, nxt, end in silent] == [(8, 14, 277)]
    assert consumer.sought == [{TP(REPORTS, 8): 14}]
    assert agg.order.holes[8].offset == 14  # repaired like a hole: sought again until it comes
    assert agg.totals["silent"] == 1


def test_a_partition_that_delivered_recently_is_not_silent(tmp_path: Path) -> None:
    consumer = Consumer(end=277, fetched=277)
    probe = Probe(first=14)
    agg = aggregator(tmp_path, consumer, probe)
    agg.delivered_at[8] = time.monotonic()
    _, lag, silent = sample_and_repair(agg)
    assert lag == 263 and silent == [] and probe.asked == [] and consumer.sought == []


def test_lag_made_only_of_transaction_markers_is_caught_up_once_probed(tmp_path: Path) -> None:
    consumer = Consumer(end=16, fetched=16)  # offsets 14 and 15: commit markers
    agg = aggregator(tmp_path, consumer, Probe(first=None))
    _, lag, silent = sample_and_repair(agg)
    assert lag == 2 and len(silent) == 1  # this sample still counted it
    assert consumer.sought == [] and 8 not in agg.order.holes
    _, lag, silent = sample_and_repair(agg)
    assert lag == 0 and silent == []  # probed: nothing we can receive before the end


def test_a_gap_before_the_first_undelivered_record_is_skipped_then_sought(tmp_path: Path) -> None:
    consumer = Consumer(end=40, fetched=40)
    agg = aggregator(tmp_path, consumer, Probe(first=20))  # 14..19 aborted
    sample_and_repair(agg)
    assert agg.order.next[8] == 20
    assert consumer.sought == [{TP(REPORTS, 8): 20}]


def test_a_partition_left_paused_outside_a_rebalance_is_resumed(tmp_path: Path) -> None:
    consumer = Consumer(end=277, fetched=14, paused=True)
    agg = aggregator(tmp_path, consumer, Probe(first=14))
    _, lag, silent = sample_and_repair(agg)
    assert lag == 263 and silent == []
    assert consumer.resumed == [{TP(REPORTS, 8)}]
