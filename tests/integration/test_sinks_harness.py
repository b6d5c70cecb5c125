"""Helpers shared by the sink integration and chaos tests (this module holds no tests).

Everything is real: a Kafka broker (the session fixture), `python -m queuewatch sink all` as a
child process owning a fresh chdb folder, and `queuewatch query` as another child process, so
the pytest process itself never opens the embedded engine.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from queuewatch.contract.codec import encode
from queuewatch.contract.schemas import CROSSING_WINDOW, QUEUE_REPORT, default_registry
from queuewatch.kafka.topics import TopicSpec, ensure_topics

#: Generous: two cores are shared by several test suites at once.
CATCH_UP_TIMEOUT_S = 150.0
HOUR_MS = 3_600_000


@dataclass
class SinkEnv:
    """One isolated deployment: fresh topics, groups, chdb folder and query port."""

    bootstrap: str
    home: Path
    suffix: str
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def reports_topic(self) -> str:
        return f"reports-{self.suffix}"

    @property
    def windows_topic(self) -> str:
        return f"windows-{self.suffix}"

    @property
    def dlq_topic(self) -> str:
        return f"dlq-{self.suffix}"

    @property
    def contributions_topic(self) -> str:
        return f"contributions-{self.suffix}"

    @property
    def raw_group(self) -> str:
        return f"raw-sink-{self.suffix}"

    @property
    def window_group(self) -> str:
        return f"window-sink-{self.suffix}"

    def environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUEWATCH_")}
        env.update(
            QUEUEWATCH_HOME=str(self.home),
            QUEUEWATCH_KAFKA_BOOTSTRAP=self.bootstrap,
            QUEUEWATCH_CLICKHOUSE_URL=f"chdb://{self.home / 'clickhouse'}",
            QUEUEWATCH_REPORTS_TOPIC=self.reports_topic,
            QUEUEWATCH_WINDOWS_TOPIC=self.windows_topic,
            QUEUEWATCH_DLQ_TOPIC=self.dlq_topic,
            QUEUEWATCH_RAW_SINK_GROUP=self.raw_group,
            QUEUEWATCH_WINDOW_SINK_GROUP=self.window_group,
            QUEUEWATCH_CONTRIBUTIONS_TOPIC=self.contributions_topic,
            QUEUEWATCH_CONTRIBUTIONS_SINK_GROUP=f"contributions-sink-{self.suffix}",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra)
        return env

    def create_topics(self, partitions: int = 3) -> None:
        ensure_topics(
            self.bootstrap,
            [
                TopicSpec(self.reports_topic, partitions),
                TopicSpec(self.windows_topic, partitions),
                TopicSpec(self.contributions_topic, partitions),
                TopicSpec(self.dlq_topic, 1),
            ],
        )


def new_env(bootstrap: str, home: Path, **extra: str) -> SinkEnv:
    env = SinkEnv(bootstrap, home, uuid.uuid4().hex[:10], dict(extra))
    env.create_topics()
    return env


# ---------------------------------------------------------------- data


@dataclass
class ReportSet:
    """Payloads to publish (key, value) and what queue_reports FINAL must then hold."""

    messages: list[tuple[bytes, bytes]]
    #: (crossing_id, event_id) -> wait_minutes of the FIRST valid arrival
    expected: dict[tuple[str, str], int]


CROSSINGS = [
    ("ge-ru-verkhny-lars", "RU", "GE"),
    ("kz-ru-syrym", "RU", "KZ"),
    ("fi-ru-vaalimaa", "RU", "FI"),
    ("ee-ru-narva", "RU", "EE"),
    ("mn-ru-kyakhta", "RU", "MN"),
    ("pl-ua-medyka", "UA", "PL"),
]


def make_reports(count: int, seed: int, now_ms: int | None = None) -> ReportSet:
    """``count`` valid reports, plus re-sent duplicates, invalid reports and garbage bytes.

    A duplicate keeps its event_id but carries another wait, so the test sees which copy won.
    """
    rng = random.Random(seed)
    schema = default_registry().latest(QUEUE_REPORT)
    now_ms = now_ms or int(time.time() * 1000)
    messages: list[tuple[bytes, bytes]] = []
    expected: dict[tuple[str, str], int] = {}
    originals: list[dict[str, Any]] = []
    for i in range(count):
        crossing, frm, to = CROSSINGS[i % len(CROSSINGS)]
        wait = rng.randint(0, 3000)
        record: dict[str, Any] = {
            "event_id": f"{seed:04d}-{i:08d}-{uuid.UUID(int=rng.getrandbits(128))}",
            "crossing_id": crossing,
            "from_country": frm,
            "to_country": to,
            "traffic_class": rng.choice(["car", "truck", "pedestrian"]),
            "observed_at": now_ms - rng.randint(0, 30 * HOUR_MS),
            "source": {
                "type": rng.choice(["official_feed", "journalist", "crowd"]),
                "name": rng.choice(["border-guard", "echo", "chat-1", "chat-2"]),
                "url": None,
            },
            "wait_minutes": wait,
            "queue_vehicles": rng.choice([None, rng.randint(0, 4000)]),
            "queue_persons": None,
            "queue_length_km": rng.choice([None, round(rng.uniform(0, 25), 2)]),
            "throughput_per_hour": rng.choice([None, float(rng.randint(20, 80))]),
            "lanes_open": None,
            "status": rng.choice(["open", "delay", "unknown"]),
            "location": None,
            "note": None,
        }
        originals.append(record)
        messages.append((crossing.encode(), encode(record, schema)))
        expected[(crossing, record["event_id"])] = wait
        if i % 10 == 3:  # an invalid report: the aggregator dead-letters it, the sink skips it
            bad = dict(record, event_id=f"bad-{seed}-{i}", wait_minutes=-1)
            messages.append((crossing.encode(), encode(bad, schema)))
        if i % 50 == 7:  # garbage bytes
            messages.append((crossing.encode(), b"not a queue report"))
    for record in rng.sample(originals, k=max(1, count // 20)):  # re-sent later: must lose
        resent = dict(record, wait_minutes=int(record["wait_minutes"]) + 1)
        messages.append((str(record["crossing_id"]).encode(), encode(resent, schema)))
    return ReportSet(messages, expected)


@dataclass
class Backfill(ReportSet):
    """A ReportSet of one crossing only."""

    crossing: str = ""


def make_monthly_backfill(months: int, per_month: int, seed: int) -> Backfill:
    """``per_month`` valid reports of one crossing in each of the last ``months`` months.

    The history a feed's archive brings in one go: every report of a month lands in the same
    ClickHouse partition of queue_reports (``toYYYYMM(observed_at)``).
    """
    rng = random.Random(seed)
    crossing, frm, to = CROSSINGS[0]
    now = datetime.now(UTC)
    messages: list[tuple[bytes, bytes]] = []
    expected: dict[tuple[str, str], int] = {}
    for back in range(months):
        year, month = divmod(now.year * 12 + now.month - 1 - back, 12)
        first = datetime(year, month + 1, 1, tzinfo=UTC)
        for n in range(per_month):
            observed = first + timedelta(days=n * 6, hours=rng.randint(0, 23))
            observed = min(observed, now - timedelta(minutes=1))
            wait = rng.randint(0, 3000)
            event_id = f"backfill-{seed}-{year:04d}{month + 1:02d}-{n}"
            at = int(observed.timestamp() * 1000)
            messages.append(
                report_message(
                    crossing, frm, to, at, "official_feed", "archive",
                    event_id=event_id, wait_minutes=wait,
                )
            )  # fmt: skip
            expected[(crossing, event_id)] = wait
    return Backfill(messages, expected, crossing)


def report_message(
    crossing: str,
    frm: str,
    to: str,
    at: int,
    kind: str,
    name: str,
    traffic_class: str = "car",
    **values: Any,
) -> tuple[bytes, bytes]:
    """One valid report as the key and Avro value a producer sends; unset measurements null."""
    record: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "crossing_id": crossing,
        "from_country": frm,
        "to_country": to,
        "traffic_class": traffic_class,
        "observed_at": at,
        "source": {"type": kind, "name": name, "url": None},
        "wait_minutes": None,
        "queue_vehicles": None,
        "queue_persons": None,
        "queue_length_km": None,
        "throughput_per_hour": None,
        "lanes_open": None,
        "status": "delay",
        "location": None,
        "note": None,
    }
    record.update(values)
    return crossing.encode(), encode(record, default_registry().latest(QUEUE_REPORT))


def make_windows(
    keys: int, versions: int, seed: int
) -> tuple[list[tuple[bytes, bytes]], dict[tuple[Any, ...], dict[str, Any]]]:
    """Window records with several versions per key, published out of order; the reference
    is the largest version of each key."""
    rng = random.Random(seed)
    schema = default_registry().latest(CROSSING_WINDOW)
    base = (int(time.time() * 1000) // HOUR_MS) * HOUR_MS
    records: list[dict[str, Any]] = []
    for k in range(keys):
        crossing, frm, to = CROSSINGS[k % len(CROSSINGS)]
        size, span = [("1h", HOUR_MS), ("3h", 3 * HOUR_MS), ("24h", 24 * HOUR_MS)][k % 3]
        start = base - span + (k // 3) * 300_000
        for v in range(1, versions + 1):
            records.append(
                {
                    "crossing_id": crossing,
                    "from_country": frm,
                    "to_country": to,
                    "traffic_class": "car",
                    "window_size": size,
                    "window_start": start,
                    "window_end": start + span,
                    "reports": v * 2,
                    "sources": v,
                    "wait_minutes_min": 10,
                    "wait_minutes_max": 10 + v,
                    "wait_minutes_avg": 10.0 + v / 2,
                    "wait_minutes_p50": 10.0 + v / 3,
                    "wait_minutes_p90": None,
                    "wait_minutes_last": 10 + v,
                    "queue_vehicles_max": None,
                    "queue_vehicles_avg": None,
                    "queue_vehicles_last": None,
                    "queue_length_km_max": 1.5 * v,
                    "queue_length_km_avg": 1.0,
                    "queue_length_km_last": 1.25,
                    "status_last": "delay",
                    "last_observed_at": start + 60_000 * v,
                    "version": 1000 * k + v,
                    "updated_at": base + v,
                }
            )
    rng.shuffle(records)
    reference: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in records:
        key = (r["crossing_id"], r["traffic_class"], r["window_size"], r["window_start"])
        if key not in reference or reference[key]["version"] < r["version"]:
            reference[key] = r
    return [(r["crossing_id"].encode(), encode(r, schema)) for r in records], reference


def publish(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    try:
        for key, value in messages:
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=60)
    finally:
        producer.close()


# ---------------------------------------------------------------- processes


class SinkProcess:
    """`python -m queuewatch sink KIND` (or any module command) as a child process."""

    def __init__(self, env: SinkEnv, log: Path, args: list[str] | None = None) -> None:
        self.env = env
        self.log = log
        args = args or ["-m", "queuewatch", "sink", "all"]
        self._log_handle = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            env=env.environ(),
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
        )

    def wait_serving(self, timeout: float = 90.0) -> None:
        """Until the owner answers queries (migrations done, endpoint up)."""
        wait_until(
            lambda: self.alive() and query(self.env, "SELECT 1").returncode == 0,
            timeout,
            "the sink process to answer queries",
            self,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._log_handle.close()
        return code

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)
        self._log_handle.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def query(env: SinkEnv, sql: str, fmt: str = "jsonl") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "queuewatch", "query", sql, "--format", fmt],
        env=env.environ(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def query_rows(env: SinkEnv, sql: str) -> list[dict[str, Any]]:
    done = query(env, sql)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    process: SinkProcess | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and not process.alive():
            raise AssertionError(f"process died waiting for {what}:\n{process.output()[-4000:]}")
        time.sleep(0.5)
    tail = process.output()[-4000:] if process else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


# ---------------------------------------------------------------- consumer groups


def _partitions(consumer: KafkaConsumer, topic: str) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]


def lag(bootstrap: str, group: str, topic: str) -> int:
    """Records of ``topic`` not yet committed by ``group``."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        tps = _partitions(consumer, topic)
        ends = consumer.end_offsets(tps)
        return sum(ends[tp] - (consumer.committed(tp) or 0) for tp in tps)
    finally:
        consumer.close(autocommit=False)


def committed_total(bootstrap: str, group: str, topic: str) -> int:
    """Sum over partitions of the offsets ``group`` committed."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return sum(consumer.committed(tp) or 0 for tp in _partitions(consumer, topic))
    finally:
        consumer.close(autocommit=False)


def reset_to_beginning(bootstrap: str, group: str, topic: str) -> None:
    """Commit offset 0 on every partition for an idle group (like kafka-consumer-groups)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        tps = _partitions(consumer, topic)
        consumer.assign(tps)
        consumer.commit({tp: OffsetAndMetadata(0, "", -1) for tp in tps})
    finally:
        consumer.close(autocommit=False)
