"""The same job as ``queuewatch aggregator``, written idiomatically with Quix Streams.

It is the peer the benchmark compares against: same input topic, same windows (1 h every
5 min, 3 h every 15 min, 24 h every 1 h, epoch-aligned), same 2 h grace, same de-duplication
(first arrival of a (crossing_id, event_id) wins) and the same output values, written as
``CrossingWindow`` Avro records (single-object encoding) to its own output topic.

Why the semantics match:

* Quix groups windows by the message key, which is ``crossing_id``; its "key" closing strategy
  keeps the largest timestamp per key, i.e. our per-crossing watermark. The window value is a
  dict keyed by (from_country, to_country, traffic_class), so the watermark stays per crossing
  while the output is per direction and class, as in queuewatch.
* Quix drops a message for a window when ``end + grace <= max(watermark, ts)``; since the
  window contains ``ts``, that is exactly our rule "a window takes a report while
  ``window_end + grace > watermark`` (before that report)".
* Duplicates are filtered (stateful, per crossing) before the windows, so they move neither
  the watermark nor any figure.
* p50/p90 use the DDSketch mapping of the ``ddsketch`` package (1 % relative accuracy) and its
  quantile rule (rank = q·(n-1)), so both sides answer within the same error bound.

Differences, stated: windows are emitted once when they close (``.final()``); Quix has no
"emit the newest state at most once per second" mode, and ``.current()`` would emit 48
updates per report. Windows still open at the end of the input are not emitted. The
de-duplication state is never evicted (the benchmark's input spans two days).

Runs in its own venv (benchmarks/peers/requirements.txt), because quixstreams pins
versions queuewatch cannot share; it therefore imports nothing from queuewatch. The window
values and the Avro framing are shared with the Bytewax peer (``window_values``). Start it as
``python -m benchmarks.peers.quix_aggregator`` from the repository root.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from quixstreams import Application
from quixstreams.models.serializers import Deserializer, Serializer

from benchmarks.peers.window_values import (
    GRACE_MS,
    WINDOWS,
    ReportDecoder,
    WindowEncoder,
    compact,
    window_records,
)


class AvroReportDeserializer(Deserializer):
    """Single-object Avro bytes -> QueueReport dict (only the schema version we know)."""

    def __init__(self, schemas_dir: Path) -> None:
        super().__init__()
        self.decode = ReportDecoder(schemas_dir)

    def __call__(self, value: bytes, ctx: Any) -> Any:
        return self.decode(value)


class AvroWindowSerializer(Serializer):
    """CrossingWindow dict -> single-object Avro bytes."""

    def __init__(self, schemas_dir: Path) -> None:
        self.encode = WindowEncoder(schemas_dir)

    def __call__(self, value: Any, ctx: Any) -> bytes:
        return self.encode(value)


def first_arrival(report: dict[str, Any], state: Any) -> bool:
    """True for the first (crossing_id, event_id); state is per crossing (the message key)."""
    event_id = report["event_id"]
    if state.get(event_id) is not None:
        return False
    state.set(event_id, 1)
    return True


def to_records(size_name: str, crossing: str, window: dict[str, Any]) -> list[dict[str, Any]]:
    """One CrossingWindow record per (direction, class) of a closed window."""
    return window_records(size_name, crossing, window["start"], window["end"], window["value"])


def build(args: argparse.Namespace) -> Application:
    """The Quix application: dedup, three hopping windows, Avro out."""
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        loglevel="WARNING",
    )
    schemas = Path(args.schemas)
    reports = app.topic(
        args.input,
        key_deserializer="str",
        value_deserializer=AvroReportDeserializer(schemas),
        timestamp_extractor=lambda value, _headers, _ts, _type: int(value["observed_at"]),
    )
    output = app.topic(
        args.output, key_serializer="str", value_serializer=AvroWindowSerializer(schemas)
    )
    sdf = app.dataframe(reports)
    sdf = sdf.filter(first_arrival, stateful=True).apply(compact)
    for name, (size, step) in WINDOWS.items():
        branch = (
            sdf.hopping_window(
                duration_ms=size,
                step_ms=step,
                grace_ms=GRACE_MS,
                name=f"w{name}",
                on_late=lambda *_args: False,  # counted, not logged: a log line per report
            )
            # collect() stores each report once per window family and reads it back when a
            # window closes; reduce() would rewrite a growing accumulator in all 48 windows a
            # report falls into (measured about 5x slower on this job).
            .collect()
            .final()
        )
        branch = branch.apply(
            lambda w, key, _ts, _h, n=name: to_records(n, key, w), expand=True, metadata=True
        )
        branch.to_topic(output)
    return app


def main() -> None:
    """Run until SIGTERM/SIGINT (Quix stops cleanly on both)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--schemas", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    build(args).run()


if __name__ == "__main__":
    main()
