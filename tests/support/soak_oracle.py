"""What the soak's pipeline must have produced, computed from the log alone (no processes).

The log is read back from Kafka (never from the producer's memory: what counts is what the
broker kept, including re-sends and reports whose acknowledgement a broker kill lost) and
replayed offline through the aggregator's pure core, the same functions the worker calls
(``intake`` then ``CrossingState.apply`` in each partition's offset order), with none of the
Kafka, faust or ClickHouse machinery in between. Then:

* every window's newest version must equal the replay's (``crossing_windows FINAL``);
* the raw table must hold each valid report once, as its first copy in the log (the table
  keeps the lowest offset of an ``event_id``);
* every message that fails intake must have a dead letter naming its source offset.

The comparisons are pure functions over dicts, unit tested on their own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from queuewatch.aggregator.intake import H_OFFSET, H_PARTITION, RawMessage, intake, reader_schema
from queuewatch.aggregator.state import AggregationConfig, CrossingState

#: (crossing_id, from_country, to_country, traffic_class, window_size, window_start)
WindowKey = tuple[str, str, str, str, str, int]
#: (crossing_id, event_id)
ReportKey = tuple[str, str]
#: (partition, offset)
Position = tuple[int, int]

#: Columns every window row is compared on (``updated_at`` is wall clock: never compared).
WINDOW_FIELDS = (
    "window_end",
    "reports",
    "sources",
    "wait_minutes_min",
    "wait_minutes_max",
    "wait_minutes_avg",
    "wait_minutes_p50",
    "wait_minutes_p90",
    "wait_minutes_last",
    "queue_vehicles_max",
    "queue_vehicles_avg",
    "queue_vehicles_last",
    "queue_length_km_max",
    "queue_length_km_avg",
    "queue_length_km_last",
    "status_last",
    "last_observed_at",
    "version",
)
#: How many differences of each kind are kept as examples for the report.
EXAMPLES = 10


def window_key(row: Mapping[str, Any]) -> WindowKey:
    """The key a window is replaced under in ClickHouse (the table's ORDER BY)."""
    return (
        row["crossing_id"],
        row["from_country"],
        row["to_country"],
        row["traffic_class"],
        row["window_size"],
        int(row["window_start"]),
    )


# --- reading the log back ---------------------------------------------------------------------


def read_topic(bootstrap: str, topic: str, timeout_s: float = 120.0) -> list[RawMessage]:
    """Every message of ``topic`` up to its end offsets now, in (partition, offset) order."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        client_id="queuewatch-soak-oracle",
        max_poll_records=5000,
    )
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: dict[int, list[RawMessage]] = {p: [] for p in partitions}
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                missing = {tp.partition: ends[tp] - consumer.position(tp) for tp in tps}
                raise TimeoutError(f"could not read {topic} to its end in {timeout_s} s: {missing}")
            for tp, records in consumer.poll(timeout_ms=1000).items():
                for m in records:
                    if m.offset < ends[tp]:
                        out[tp.partition].append(
                            RawMessage(
                                topic=m.topic,
                                partition=m.partition,
                                offset=m.offset,
                                timestamp_ms=m.timestamp,
                                key=m.key,
                                value=m.value,
                                headers=list(m.headers or ()),
                            )
                        )
        return [m for p in partitions for m in out[p]]
    finally:
        consumer.close()


# --- the expected outputs ---------------------------------------------------------------------


@dataclass
class Expected:
    """What the log says every projection must hold."""

    messages: int = 0
    windows: dict[WindowKey, dict[str, Any]] = field(default_factory=dict)
    #: each valid report's first copy in the log
    reports: dict[ReportKey, Position] = field(default_factory=dict)
    #: valid messages whose event_id was already in the log (re-sends)
    resent: int = 0
    #: positions of the messages that fail intake (each must be dead-lettered)
    invalid: set[Position] = field(default_factory=set)
    #: accepted reports that were too late for some window (the replay's own count)
    late: int = 0


def replay(messages: Iterable[RawMessage], config: AggregationConfig) -> Expected:
    """Replay the log (in partition, offset order) through the pure core."""
    by_partition: dict[int, list[RawMessage]] = {}
    for m in messages:
        by_partition.setdefault(m.partition, []).append(m)
    reader = reader_schema()
    states: dict[str, CrossingState] = {}
    out = Expected()
    for partition in sorted(by_partition):
        batch = sorted(by_partition[partition], key=lambda m: m.offset)
        out.messages += len(batch)
        accepted, dead = intake(batch, reader)
        for letter in dead:
            headers = dict(letter.headers)
            out.invalid.add((int(headers[H_PARTITION]), int(headers[H_OFFSET])))
        for item in accepted:
            record = item.record
            cid = record["crossing_id"]
            state = states.get(cid)
            if state is None:
                state = states[cid] = CrossingState(cid, config)
            state.apply(record, item.partition, item.offset)
            key = (cid, record["event_id"])
            if key in out.reports:
                out.resent += 1
            else:
                out.reports[key] = (item.partition, item.offset)
    for state in states.values():
        out.late += state.counters.late
        for row in state.take_changed():
            wkey = window_key(row)
            old = out.windows.get(wkey)
            if old is None or row["version"] >= old["version"]:
                out.windows[wkey] = row
    return out


def dead_letter_sources(messages: Iterable[RawMessage]) -> set[Position]:
    """The source positions the dead letters of a DLQ name (a letter may repeat)."""
    out: set[Position] = set()
    for m in messages:
        headers = dict(m.headers)
        if H_PARTITION in headers and H_OFFSET in headers:
            out.add((int(headers[H_PARTITION]), int(headers[H_OFFSET])))
    return out


# --- comparisons ------------------------------------------------------------------------------


@dataclass
class WindowDiff:
    """How ClickHouse's windows differ from the replay's."""

    expected: int = 0
    got: int = 0
    missing: int = 0
    unexpected: int = 0
    different: int = 0
    #: windows whose report count is above the replay's: reports counted twice
    over_counted: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def wrong(self) -> int:
        """Windows that are missing, unexpected or different."""
        return self.missing + self.unexpected + self.different

    def _example(self, text: str) -> None:
        if len(self.examples) < 3 * EXAMPLES:
            self.examples.append(text)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-12)
    return bool(a == b)


def compare_windows(
    expected: Mapping[WindowKey, Mapping[str, Any]], rows: Iterable[Mapping[str, Any]]
) -> WindowDiff:
    """Compare the replay's windows with ClickHouse rows (``crossing_windows FINAL``)."""
    got: dict[WindowKey, Mapping[str, Any]] = {}
    diff = WindowDiff(expected=len(expected))
    for row in rows:
        key = window_key(row)
        if key in got:  # FINAL keeps one row per key: two are a defect in themselves
            diff.unexpected += 1
            diff._example(f"window {key} twice in FINAL")
        got[key] = row
    diff.got = len(got)
    for key in sorted(set(expected) - set(got)):
        diff.missing += 1
        diff._example(f"missing window {key} (version {expected[key]['version']})")
    for key in sorted(set(got) - set(expected)):
        diff.unexpected += 1
        diff._example(f"unexpected window {key}")
    for key in sorted(set(expected) & set(got)):
        exp, row = expected[key], got[key]
        fields = [name for name in WINDOW_FIELDS if not _same(exp[name], row[name])]
        if fields:
            diff.different += 1
            if int(row["reports"]) > int(exp["reports"]):
                diff.over_counted += 1
            shown = ", ".join(f"{n} {exp[n]!r} != {row[n]!r}" for n in fields[:4])
            diff._example(f"window {key}: expected != got: {shown}")
    return diff


@dataclass
class RawDiff:
    """How ``queue_reports FINAL`` differs from the log's valid reports."""

    expected: int = 0
    got: int = 0
    lost: int = 0
    doubled: int = 0
    unexpected: int = 0
    wrong_copy: int = 0  # a later re-send kept instead of the first copy
    examples: list[str] = field(default_factory=list)

    @property
    def wrong(self) -> int:
        """Reports lost, doubled, unexpected or kept in the wrong copy."""
        return self.lost + self.doubled + self.unexpected + self.wrong_copy


def compare_raw(
    expected: Mapping[ReportKey, Position], rows: Iterable[Mapping[str, Any]]
) -> RawDiff:
    """Compare ``(crossing_id, event_id, kafka_partition, kafka_offset)`` rows with the log."""
    diff = RawDiff(expected=len(expected))
    got: dict[ReportKey, Position] = {}
    for row in rows:
        key = (row["crossing_id"], row["event_id"])
        if key in got:
            diff.doubled += 1
            if len(diff.examples) < EXAMPLES:
                diff.examples.append(f"report {key} twice in FINAL")
        got[key] = (int(row["kafka_partition"]), int(row["kafka_offset"]))
    diff.got = len(got)
    for key in sorted(set(expected) - set(got)):
        diff.lost += 1
        if len(diff.examples) < 2 * EXAMPLES:
            diff.examples.append(f"lost report {key} at {expected[key]}")
    for key in sorted(set(got) - set(expected)):
        diff.unexpected += 1
        if len(diff.examples) < 2 * EXAMPLES:
            diff.examples.append(f"unexpected report {key} at {got[key]}")
    for key in sorted(set(got) & set(expected)):
        if got[key] != expected[key]:
            diff.wrong_copy += 1
            if len(diff.examples) < 3 * EXAMPLES:
                diff.examples.append(f"report {key}: kept {got[key]}, first copy {expected[key]}")
    return diff
