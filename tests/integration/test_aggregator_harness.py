"""Shared pieces of the aggregator's integration and chaos tests (no tests in here).

* :func:`make_scenario` builds a stream of queue reports with duplicates, conflicting
  re-sends, out-of-order and very late reports and invalid messages;
* :func:`reference_windows` is a brute-force oracle written independently of the aggregator:
  for every window it lists the reports the contract says it must count, then computes each
  metric in the most direct way (sorting, Fraction sums), never with panes or sketches;
* :class:`AggregatorProcess` runs ``python -m queuewatch aggregator`` as a child process;
* :class:`WindowReader` collects the newest version of every emitted window;
* :class:`AssembledReader` does the same for output ``contributions``: it runs the
  contributions sink on a chdb folder and reads ``crossing_windows`` back through the query
  path, so the oracle checks the windows ClickHouse assembled;
* :func:`window_reader` is the one for an output.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from queuewatch.contract.codec import decode, encode
from queuewatch.contract.schemas import CROSSING_WINDOW, QUEUE_REPORT, default_registry
from queuewatch.kafka.topics import ensure_topics, topic_specs
from queuewatch.settings import CommonSettings
from tests.integration.test_sinks_harness import SinkEnv, SinkProcess, query_rows

HOUR = 3_600_000
MINUTE = 60_000
#: The contract's default families (size, step) and grace, restated here on purpose.
FAMILIES = {"1h": (HOUR, 5 * MINUTE), "3h": (3 * HOUR, 15 * MINUTE), "24h": (24 * HOUR, HOUR)}
GRACE = 2 * HOUR

LANES = [("RU", "GE", "car"), ("RU", "GE", "truck"), ("GE", "RU", "car")]
STATUSES = ["open", "delay", "restricted", "closed", "unknown", "unknown"]


@dataclass
class Scenario:
    """Messages in publish order; valid reports per crossing in log order; the invalid ones."""

    messages: list[tuple[bytes, bytes]] = field(default_factory=list)
    valid_in_order: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    invalid: list[tuple[bytes, bytes]] = field(default_factory=list)


def _report(rng: random.Random, crossing: str, t: int) -> dict[str, Any]:
    rec = _draw(rng, crossing, t)
    if rec["wait_minutes"] is None and rec["queue_vehicles"] is None:
        rec["queue_length_km"] = 1.5  # the contract wants at least one measurement
    return rec


def _draw(rng: random.Random, crossing: str, t: int) -> dict[str, Any]:
    lane = rng.choice(LANES)
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "crossing_id": crossing,
        "from_country": lane[0],
        "to_country": lane[1],
        "traffic_class": lane[2],
        "observed_at": t,
        "source": {"type": "crowd", "name": f"src-{rng.randint(0, 6)}", "url": None},
        "wait_minutes": rng.choice([None, 0, rng.randint(0, 3000), rng.randint(10, 90)]),
        "queue_vehicles": rng.choice([None, rng.randint(0, 4000)]),
        "queue_persons": None,
        "queue_length_km": rng.choice([None, round(rng.uniform(0, 40), 1), rng.random() * 7]),
        "throughput_per_hour": None,
        "lanes_open": None,
        "status": rng.choice(STATUSES),
        "location": None,
        "note": None,
    }


def make_scenario(seed: int, crossings: int = 5, per_crossing: int = 260) -> Scenario:
    """A few thousand messages over ~20 h of event time per crossing, ending ~2 days ago."""
    rng = random.Random(seed)
    schema = default_registry().latest(QUEUE_REPORT)
    now = int(time.time() * 1000)
    t0 = now - 3 * 24 * HOUR
    t0 -= t0 % HOUR
    sc = Scenario()
    per_key: dict[str, list[tuple[bytes, bytes, dict[str, Any] | None]]] = {}
    for c in range(crossings):
        cid = f"test-crossing-{c}"
        key = cid.encode()
        out: list[tuple[bytes, bytes, dict[str, Any] | None]] = []
        sent: list[dict[str, Any]] = []
        wm = t0
        for i in range(per_crossing):
            t = t0 + i * 4 * MINUTE + rng.randint(-25 * MINUTE, 5 * MINUTE)  # out of order
            if rng.random() < 0.04:  # very late: 1.5 to 30 hours behind
                t = wm - rng.randint(90 * MINUTE, 30 * HOUR)
            rec = _report(rng, cid, t)
            wm = max(wm, t)
            out.append((key, encode(rec, schema), rec))
            sent.append(rec)
            roll = rng.random()
            if roll < 0.06 and sent:  # an exact re-send of an earlier report
                old = rng.choice(sent)
                out.append((key, encode(old, schema), old))
            elif roll < 0.10 and sent:  # a conflicting re-send: same event_id, new content
                old = dict(rng.choice(sent))
                old["wait_minutes"] = rng.randint(0, 5000)
                old["observed_at"] = wm - rng.randint(0, 3 * HOUR)
                old["status"] = "closed"
                out.append((key, encode(old, schema), old))
            elif roll < 0.13:  # invalid: a rule broken, or bytes that are not a report
                bad = _invalid(rng, cid, t, now, schema)
                out.append((key, bad, None))
        per_key[cid] = out
        sc.valid_in_order[cid] = [rec for _, _, rec in out if rec is not None]
    # Interleave crossings (each keeps its own order): the log order per crossing is fixed.
    queues = {cid: list(v) for cid, v in per_key.items()}
    while queues:
        cid = rng.choice(sorted(queues))
        key, value, rec = queues[cid].pop(0)
        sc.messages.append((key, value))
        if rec is None:
            sc.invalid.append((key, value))
        if not queues[cid]:
            del queues[cid]
    return sc


def _invalid(rng: random.Random, cid: str, t: int, now: int, schema: Any) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return b"not a report " + os.urandom(8)
    if kind == 1:  # single-object marker, unknown fingerprint
        return b"\xc3\x01" + os.urandom(8) + b"\x00"
    rec = _report(rng, cid, t)
    if kind == 2:  # truncated body
        return encode(rec, schema)[:-3]
    if kind == 3:
        rec["wait_minutes"] = -rng.randint(1, 100)
    elif kind == 4:
        rec["observed_at"] = now + 2 * 24 * HOUR  # in the future against the message time
    else:
        rec["from_country"] = "XX"
    return encode(rec, schema)


# --- the oracle --------------------------------------------------------------------------------


def reference_windows(
    valid_in_order: dict[str, list[dict[str, Any]]],
    *,
    log: list[dict[str, Any]] | None = None,
    seal_after: int | None = None,
) -> dict[tuple, dict]:
    """Every window with at least one report -> its expected fields (brute force).

    With ``seal_after`` (the dedup horizon), ``log`` is every valid report of one partition
    in log order, and a crossing whose partition clock (the newest ``observed_at`` before a
    report) is ``seal_after`` past its watermark is sealed first: its windows starting at or
    before its watermark take nothing more, and its event ids are forgotten.
    """
    if log is None:
        log = [rec for records in valid_in_order.values() for rec in records]
    buckets: dict[tuple, list[tuple[int, dict[str, Any]]]] = {}
    seen: dict[str, set[str]] = {}
    watermarks: dict[str, int] = {}
    sealed: dict[str, int] = {}
    seqs: dict[str, int] = {}
    clock: int | None = None
    for rec in log:
        cid = rec["crossing_id"]
        t = rec["observed_at"]
        watermark = watermarks.get(cid)
        if (
            seal_after is not None
            and watermark is not None
            and clock is not None
            and clock - watermark >= seal_after
            and sealed.get(cid) != watermark
        ):
            sealed[cid] = watermark
            seen[cid] = set()
        clock = t if clock is None else max(clock, t)
        ids = seen.setdefault(cid, set())
        if rec["event_id"] in ids:
            continue
        floor = sealed.get(cid)
        if not any(
            _open((t // step) * step, size, watermark, floor) for size, step in FAMILIES.values()
        ):
            continue  # too late for every window: changes nothing (not even the seq)
        ids.add(rec["event_id"])
        seq = seqs[cid] = seqs.get(cid, 0) + 1
        for name, (size, step) in FAMILIES.items():
            start = (t // step) * step
            while start + size > t:  # every aligned window containing t
                if _open(start, size, watermark, floor):
                    key = (
                        cid,
                        rec["from_country"],
                        rec["to_country"],
                        rec["traffic_class"],
                        name,
                        start,
                    )
                    buckets.setdefault(key, []).append((seq, rec))
                start -= step
        watermarks[cid] = t if watermark is None else max(watermark, t)
    return {key: _expected(key, items) for key, items in buckets.items()}


def _open(start: int, size: int, watermark: int | None, floor: int | None) -> bool:
    """Does the window take a report: not closed by the watermark, not sealed?"""
    closed = watermark is not None and start + size + GRACE <= watermark
    return not closed and (floor is None or start > floor)


def _expected(key: tuple, items: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    def latest(field_: str) -> Any:
        have = [(r["observed_at"], seq, r[field_]) for seq, r in items if r[field_] is not None]
        return max(have)[2] if have else None

    def col(field_: str) -> list[Any]:
        return [r[field_] for _, r in items if r[field_] is not None]

    def mean(values: list[Any]) -> float | None:
        return float(sum(map(Fraction, values)) / len(values)) if values else None

    waits, vehicles, lengths = col("wait_minutes"), col("queue_vehicles"), col("queue_length_km")
    statuses = [
        (r["observed_at"], seq, r["status"]) for seq, r in items if r["status"] != "unknown"
    ]
    size = FAMILIES[key[4]][0]
    return {
        "crossing_id": key[0],
        "from_country": key[1],
        "to_country": key[2],
        "traffic_class": key[3],
        "window_size": key[4],
        "window_start": key[5],
        "window_end": key[5] + size,
        "reports": len(items),
        "sources": len({r["source"]["name"] for _, r in items}),
        "wait_minutes_min": min(waits) if waits else None,
        "wait_minutes_max": max(waits) if waits else None,
        "wait_minutes_avg": mean(waits),
        "wait_minutes_last": latest("wait_minutes"),
        "queue_vehicles_max": max(vehicles) if vehicles else None,
        "queue_vehicles_avg": mean(vehicles),
        "queue_vehicles_last": latest("queue_vehicles"),
        "queue_length_km_max": max(lengths) if lengths else None,
        "queue_length_km_avg": mean(lengths),
        "queue_length_km_last": latest("queue_length_km"),
        "status_last": max(statuses)[2] if statuses else "unknown",
        "last_observed_at": max(r["observed_at"] for _, r in items),
        "version": max(seq for seq, _ in items),
        "_waits": sorted(waits),
    }


def quantile_ok(value: float | None, sorted_values: list[int], q: float) -> bool:
    """Within 1% of the true rank quantile (the item of rank floor(q * (n - 1)))."""
    if not sorted_values:
        return value is None
    if value is None:
        return False
    exact = sorted_values[int(q * (len(sorted_values) - 1))]
    return abs(value - exact) <= 0.01 * exact + 1e-9


def compare(expected: dict[tuple, dict], got: dict[tuple, dict]) -> list[str]:
    """Differences between the oracle and the newest emitted windows, for a person to read."""
    problems: list[str] = []
    for key in sorted(set(expected) - set(got))[:10]:
        problems.append(f"missing window {key}")
    for key in sorted(set(got) - set(expected))[:10]:
        problems.append(f"unexpected window {key}: {got[key]}")
    for key in sorted(set(expected) & set(got)):
        exp, row = expected[key], got[key]
        for name, value in exp.items():
            if name.startswith("_"):
                continue
            if row[name] != value:
                problems.append(f"{key} {name}: expected {value!r}, got {row[name]!r}")
        for name, q in (("wait_minutes_p50", 0.5), ("wait_minutes_p90", 0.9)):
            if not quantile_ok(row[name], exp["_waits"], q):
                problems.append(f"{key} {name}: {row[name]!r} not within 1% of rank quantile")
        if len(problems) > 30:
            break
    return problems


# --- Kafka plumbing ----------------------------------------------------------------------------


def make_topics(bootstrap: str, unique: str, partitions: int) -> CommonSettings:
    """Fresh topics for one test."""
    settings = CommonSettings(
        kafka_bootstrap=bootstrap,
        reports_topic=f"reports-{unique}",
        dlq_topic=f"dlq-{unique}",
        windows_topic=f"windows-{unique}",
        contributions_topic=f"contributions-{unique}",
        reports_partitions=partitions,
    )
    ensure_topics(bootstrap, topic_specs(settings))
    return settings


def publish(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    """Publish keyed messages (the default partitioner keeps a crossing in one partition)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush(timeout=60)
    producer.close()


def _partitions(consumer: KafkaConsumer, topic: str, timeout_s: float = 30) -> set[int]:
    """The topic's partitions; a topic created a moment ago can be missing from the first
    metadata (the reader then assigned nothing and failed with "No partitions are currently
    assigned", leaving the aggregator of the test running)."""
    deadline = time.monotonic() + timeout_s
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts or time.monotonic() > deadline:
            return set(parts or ())
        time.sleep(0.2)


class WindowReader:
    """Reads the windows topic from the start and keeps the newest version of every key."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.schema = default_registry().latest(CROSSING_WINDOW)
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
        )
        parts = _partitions(self.consumer, topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.newest: dict[tuple, dict[str, Any]] = {}
        self.count = 0
        self.version_went_down = 0

    def poll(self, timeout_ms: int = 1000) -> int:
        """Read what arrived; returns how many messages."""
        got = 0
        for records in self.consumer.poll(timeout_ms=timeout_ms, max_records=10000).values():
            for msg in records:
                row = decode(msg.value, self.schema)
                assert msg.key == row["crossing_id"].encode()
                key = (
                    row["crossing_id"],
                    row["from_country"],
                    row["to_country"],
                    row["traffic_class"],
                    row["window_size"],
                    row["window_start"],
                )
                old = self.newest.get(key)
                if old is not None and row["version"] < old["version"]:
                    self.version_went_down += 1
                if old is None or row["version"] >= old["version"]:
                    self.newest[key] = row
                got += 1
        self.count += got
        return got

    def wait_for(self, expected: dict[tuple, dict], timeout_s: float) -> list[str]:
        """Poll until the newest windows match ``expected`` (or time runs out); the diff."""
        deadline = time.monotonic() + timeout_s
        problems = ["nothing read yet"]
        while time.monotonic() < deadline:
            self.poll()
            problems = compare(expected, self.newest)
            if not problems:
                return []
        return problems

    def close(self) -> None:
        self.consumer.close()


#: The window fields the oracle checks, as the query path gives them back (times in ms).
_WINDOW_SQL = """
SELECT crossing_id, from_country, to_country, traffic_class, window_size,
       toUnixTimestamp64Milli(window_start) AS window_start,
       toUnixTimestamp64Milli(window_end) AS window_end,
       reports, sources, wait_minutes_min, wait_minutes_max, wait_minutes_avg, wait_minutes_p50,
       wait_minutes_p90, wait_minutes_last, queue_vehicles_max, queue_vehicles_avg,
       queue_vehicles_last, queue_length_km_max, queue_length_km_avg, queue_length_km_last,
       status_last, toUnixTimestamp64Milli(last_observed_at) AS last_observed_at, version
FROM crossing_windows FINAL
"""
#: Fields of 64 bits, which ClickHouse's JSON quotes.
_LONGS = ("window_start", "window_end", "last_observed_at", "version")


class AssembledReader:
    """The windows ClickHouse assembled from contributions, read as :class:`WindowReader` reads.

    Runs ``queuewatch sink contributions`` (its own chdb folder and groups) for the settings'
    topics; ``newest`` is ``crossing_windows FINAL``. A version that went down between two
    reads of a key is counted, as the topic reader counts one in the log.
    """

    def __init__(self, bootstrap: str, settings: CommonSettings, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        suffix = settings.reports_topic.removeprefix("reports-")
        self.env = SinkEnv(
            bootstrap, home, suffix, {"QUEUEWATCH_AGGREGATOR_OUTPUT": "contributions"}
        )
        assert self.env.contributions_topic == settings.contributions_topic
        self.sink = SinkProcess(
            self.env, home / "sink.log", ["-m", "queuewatch", "sink", "contributions"]
        )
        self.sink.wait_serving()
        self.newest: dict[tuple, dict[str, Any]] = {}
        self.count = 0
        self.version_went_down = 0

    def poll(self, timeout_ms: int = 1000) -> int:
        """Read the table again; returns how many windows changed version since last time."""
        time.sleep(timeout_ms / 1000 / 2)
        assert self.sink.alive(), self.sink.output()[-4000:]
        changed = 0
        for row in query_rows(self.env, _WINDOW_SQL):
            for name in _LONGS:
                row[name] = int(row[name])
            key = tuple(row[k] for k in (*_KEY_FIELDS,))
            old = self.newest.get(key)
            if old is not None and row["version"] < old["version"]:
                self.version_went_down += 1
            if old is None or old["version"] != row["version"]:
                changed += 1
            self.newest[key] = row
        self.count += changed
        return changed

    def wait_for(self, expected: dict[tuple, dict], timeout_s: float) -> list[str]:
        """Poll until the windows match ``expected`` (or time runs out); the diff."""
        deadline = time.monotonic() + timeout_s
        problems = ["nothing read yet"]
        while time.monotonic() < deadline:
            self.poll()
            problems = compare(expected, self.newest)
            if not problems:
                return []
        return [*problems, self.sink.output()[-3000:]]

    def close(self) -> None:
        if self.sink.alive():
            self.sink.stop()


_KEY_FIELDS = (
    "crossing_id",
    "from_country",
    "to_country",
    "traffic_class",
    "window_size",
    "window_start",
)


def window_reader(
    output: str, bootstrap: str, settings: CommonSettings, home: Path
) -> WindowReader | AssembledReader:
    """The reader of the windows an aggregator with this output makes."""
    if output == "contributions":
        return AssembledReader(bootstrap, settings, home / "assembled")
    return WindowReader(bootstrap, settings.windows_topic)


def read_all(bootstrap: str, topic: str, expected_count: int, timeout_s: float) -> list[Any]:
    """Every message of a topic (waits until ``expected_count`` arrived or time runs out)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    parts = _partitions(consumer, topic)
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=1000).values():
            out.extend(records)
        if len(out) >= expected_count:
            # one more poll to catch re-sent duplicates already there
            for records in consumer.poll(timeout_ms=500).values():
                out.extend(records)
            break
    consumer.close()
    return out


class AggregatorProcess:
    """`python -m queuewatch aggregator` as a child, its log in a file."""

    def __init__(self, settings: CommonSettings, home: Path, group: str, **extra: str) -> None:
        self.env = dict(os.environ)
        self.env.update(
            QUEUEWATCH_HOME=str(home),
            QUEUEWATCH_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
            QUEUEWATCH_REPORTS_TOPIC=settings.reports_topic,
            QUEUEWATCH_DLQ_TOPIC=settings.dlq_topic,
            QUEUEWATCH_WINDOWS_TOPIC=settings.windows_topic,
            QUEUEWATCH_CONTRIBUTIONS_TOPIC=settings.contributions_topic,
            QUEUEWATCH_AGGREGATOR_GROUP=group,
            QUEUEWATCH_LOG_LEVEL="INFO",
        )
        self.env.update(extra)
        self.home = home
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        log = open(self.home / f"aggregator-{self.runs}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "queuewatch", "aggregator"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM and wait; the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
                return -9
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-4000:]
            for p in sorted(self.home.glob("aggregator-*.log"))
        )
