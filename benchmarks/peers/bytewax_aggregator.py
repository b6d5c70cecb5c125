"""The same job as ``queuewatch aggregator``, written idiomatically with Bytewax 0.21.

It is the second peer the benchmark compares against (issue 12): same input topic, same
windows (1 h every 5 min, 3 h every 15 min, 24 h every 1 h, epoch-aligned), same 2 h grace,
same de-duplication (first arrival of a (crossing_id, event_id) wins) and the same output
values, written as ``CrossingWindow`` Avro records (single-object encoding) to its own topic.

The dataflow: Kafka input (``bytewax.connectors.kafka``) -> decode -> key by crossing ->
``stateful_flat_map`` drops re-sent event ids -> per window family, ``collect_window`` with an
``EventClock`` and an epoch-aligned ``SlidingWindower`` -> one record per (direction, class)
of each closed window -> Kafka output.

Why the semantics match:

* Bytewax keeps a clock per key, and the key is ``crossing_id``: the watermark is per
  crossing, as ours. The window's list holds every direction and class of the crossing;
  the records are split by (from_country, to_country, traffic_class) when it closes.
* The clock is event time only. ``EventClock`` moves its watermark with the system clock
  too (the largest timestamp, minus ``wait_for_system_duration``, plus the system time
  elapsed since that item). Here the "system" clock is frozen (``now_getter``) and never
  wakes the dataflow (``to_system_utc`` returns None), so the watermark is exactly the
  crossing's largest accepted ``observed_at`` minus the wait, and a replay that takes
  seconds of wall time sees the same windows as one that takes hours.
* ``wait_for_system_duration`` is the 2 h grace, with no system-time part on top
  (``wait + 0``): a window closes when ``end <= watermark - grace``, i.e. when
  ``end + grace <= watermark``, the moment ours deems it closed.
* Duplicates are dropped before the windows, so they move neither the watermark nor any
  figure. p50/p90 follow DDSketch's mapping and rule, as the Quix peer (``window_values``).
* ``ordered=False``: a window sees its reports in log order, so "last" breaks ties of equal
  ``observed_at`` by log position, as ours does.

Difference, stated: Bytewax decides lateness per report, not per window. A report is late
when ``observed_at < watermark - grace`` and is then dropped from all its windows; queuewatch
(and the Quix peer) still count it in those of its windows that take it (``window_end +
grace > watermark``, e.g. a 24 h window that is still open). Only reports later than the
grace differ, and only in windows ending after ``watermark - grace``; the benchmark computes
exactly which windows those are from the log (``benchmarks.compare.beyond_grace``) and
checks them apart. Windows still open at the end of the input are not emitted (as Quix).
Kafka offsets: Bytewax tracks its own positions (its recovery store, not configured here)
and assigns partitions without a group; the consumer commits the positions it has read to
``--group`` every second only so the harness can see its progress.

Runs in its own venv (benchmarks/peers/bytewax-requirements.txt); it imports nothing from
queuewatch. Start it as ``python -m benchmarks.peers.bytewax_aggregator`` from the
repository root.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow
from bytewax.run import cli_main

from benchmarks.peers.window_values import (
    GRACE_MS,
    OBSERVED_AT,
    WINDOWS,
    ReportDecoder,
    WindowEncoder,
    compact,
    window_records,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def event_time(report: list[Any]) -> datetime:
    """A compact report's observed_at as an aware UTC datetime (integer ms, no float)."""
    return EPOCH + timedelta(milliseconds=report[OBSERVED_AT])


def frozen_now() -> datetime:
    """The "system time" of the clock: constant, so only event time moves the watermark."""
    return EPOCH


def never(_close_time: datetime) -> None:
    """No system time to wake at: windows close on the next report of their crossing."""
    return None


def first_arrival(
    seen: set[str] | None, report: dict[str, Any]
) -> tuple[set[str], Iterable[dict[str, Any]]]:
    """Keep a report whose event_id the crossing has not seen; the state is its seen ids."""
    seen = seen if seen is not None else set()
    event_id = report["event_id"]
    if event_id in seen:
        return seen, ()
    seen.add(event_id)
    return seen, (report,)


def build(args: argparse.Namespace) -> Dataflow:
    """The Bytewax dataflow: dedup, three hopping windows, Avro out."""
    schemas = Path(args.schemas)
    decode = ReportDecoder(schemas)
    encode = WindowEncoder(schemas)
    brokers = [args.bootstrap]
    flow = Dataflow("queuewatch-bytewax-peer")
    consumed = kop.input(
        "reports",
        flow,
        brokers=brokers,
        topics=[args.input],
        # Progress for the harness only (see the module docstring): read positions, every 1 s.
        add_config={
            "group.id": args.group,
            "enable.auto.commit": "true",
            "auto.commit.interval.ms": "1000",
        },
        batch_size=args.batch_size,
    )
    op.inspect("consumer_errors", consumed.errs).then(op.raises, "stop_on_consumer_error")

    def decoded(msg: KafkaSourceMessage[bytes | None, bytes | None]) -> dict[str, Any]:
        if msg.value is None:
            raise ValueError(f"a null report at offset {msg.offset}; the topic holds only Avro")
        return decode(msg.value)

    reports = op.map("decode", consumed.oks, decoded)
    keyed = op.key_on("by_crossing", reports, lambda r: str(r["crossing_id"]))
    fresh = op.stateful_flat_map("first_arrival", keyed, first_arrival)
    compacted = op.map_value("compact", fresh, compact)
    clock = win.EventClock(
        event_time,
        wait_for_system_duration=timedelta(milliseconds=GRACE_MS),
        now_getter=frozen_now,
        to_system_utc=never,
    )
    outputs = []
    for name, (size, step) in WINDOWS.items():
        windower = win.SlidingWindower(
            length=timedelta(milliseconds=size), offset=timedelta(milliseconds=step), align_to=EPOCH
        )
        # bytewax 0.21's typing overloads omit ``ordered``; the operator itself takes it.
        closed = win.collect_window(  # type: ignore[call-overload]
            f"w{name}", compacted, clock, windower, ordered=False
        )

        def records(
            item: tuple[str, tuple[int, list[list[Any]]]], n: str = name, size: int = size,
            step: int = step,
        ) -> list[KafkaSinkMessage[bytes, bytes]]:  # fmt: skip
            crossing, (window_id, members) = item
            start = window_id * step  # SlidingWindower: open_time = align_to + offset * id
            return [
                KafkaSinkMessage(crossing.encode(), encode(rec))
                for rec in window_records(n, crossing, start, start + size, members)
            ]

        outputs.append(op.flat_map(f"records_{name}", closed.down, records))
    kop.output("windows", op.merge("all_windows", *outputs), brokers=brokers, topic=args.output)
    return flow


def main() -> None:
    """Run one worker until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--schemas", required=True)
    parser.add_argument("--batch-size", type=int, default=1000, help="messages per poll")
    args = parser.parse_args()
    cli_main(build(args), workers_per_process=1)


if __name__ == "__main__":
    main()
