"""A fresh real broker for one benchmark run, and a fast way to fill a topic.

Each run gets its own broker (KRaft, free ports, a temporary folder), so no earlier run's
topics or consumer groups can skew a figure. Filling a topic is the harness's own cost, not a
measured one, so it uses the fastest producer at hand (confluent-kafka when installed,
kafka-python otherwise), with the topic configs of production (queuewatch.kafka.topics).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError

from queuewatch.kafka.topics import topic_specs
from queuewatch.platform.broker import LocalBroker, fetch_jars, free_port
from queuewatch.resources import REPO_ROOT
from queuewatch.settings import CommonSettings

log = logging.getLogger(__name__)


@contextlib.contextmanager
def running_broker(folder: Path, heap: str = "1g") -> Iterator[LocalBroker]:
    """A real Kafka broker in ``folder`` on free ports, stopped on exit."""
    libs = fetch_jars(REPO_ROOT / "infra" / "kafka" / "target" / "libs")
    broker = LocalBroker(
        data_root=folder, libs_dir=libs, port=free_port(), controller_port=free_port(), heap=heap
    )
    broker.start(timeout_s=120)
    try:
        yield broker
    finally:
        broker.stop()


def create_topics(bootstrap: str, names: dict[str, str], partitions: int = 12) -> None:
    """Create fresh topics named per role (``reports``, ``dlq``, ``windows``) like production.

    ``names`` maps a role to the topic name this run uses; configs come from topic_specs, so a
    benchmark topic retains, compresses and partitions like the real one.
    """
    settings = CommonSettings(
        reports_topic=names["reports"],
        dlq_topic=names["dlq"],
        windows_topic=names["windows"],
        # A replay whose aggregator emits contributions writes them to its output topic
        # ("windows"); this one only keeps the deployment's default name off the broker.
        contributions_topic=names.get("contributions", names["windows"] + "-contributions"),
        reports_partitions=partitions,
    )
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="queuewatch-bench")
    try:
        admin.create_topics(
            [
                NewTopic(s.name, s.partitions, 1, topic_configs=dict(s.configs))
                for s in topic_specs(settings)
            ]
        )
    finally:
        admin.close()


def produce(bootstrap: str, topic: str, messages: Iterable[tuple[bytes, bytes]]) -> int:
    """Publish (key, value) pairs as fast as the machine allows; return how many were sent.

    Keyed by crossing_id, so one crossing's reports keep their order on one partition, as the
    SDK producer does. No compression: aiokafka (under faust) reads lz4 only with cramjam, which
    is not installed, and the limit should measure consume + decode, not decompression.
    """
    try:
        from confluent_kafka import Producer
    except ImportError:
        return _produce_kafka_python(bootstrap, topic, messages)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 500_000,
            "acks": "all",
            "enable.idempotence": True,
        }
    )
    errors: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    sent = 0
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        if sent % 10_000 == 0:
            producer.poll(0)
    remaining = producer.flush(120)
    if remaining or errors:
        raise RuntimeError(
            f"preloading {topic}: {remaining} messages undelivered, errors: {errors[:3]}; "
            "read the broker log in the run's work folder"
        )
    return sent


def _produce_kafka_python(
    bootstrap: str, topic: str, messages: Iterable[tuple[bytes, bytes]]
) -> int:
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, batch_size=1_000_000, acks="all"
    )
    sent = 0
    futures = []
    for key, value in messages:
        futures.append(producer.send(topic, value=value, key=key))
        sent += 1
    producer.flush(120)
    for fut in futures[-100:]:
        fut.get(timeout=60)  # raises the delivery error, if any
    producer.close()
    return sent


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> end offset (the next offset to be written)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="queuewatch-bench-probe")
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


class GroupWatcher:
    """Watches one consumer group on one topic: its state and its lag.

    One admin client and one consumer are kept open for the whole run, so polling several
    times a second adds little load to the machine being measured.
    """

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self.group = group
        self.topic = topic
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-watch")
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="bench-watch")
        parts = self.consumer.partitions_for_topic(topic) or set()
        self.partitions = [TopicPartition(topic, p) for p in sorted(parts)]

    def state(self) -> str:
        """The group's state as the coordinator reports it ("Stable", "Empty", "Dead", ...)."""
        try:
            info = self.admin.describe_groups([self.group]).get(self.group) or {}
        except KafkaError:  # coordinator not loaded yet, right after the broker starts
            return ""
        return str(info.get("group_state", info.get("state", "")))

    def members(self) -> int:
        """Members of the group now (0 while the coordinator does not answer)."""
        try:
            info = self.admin.describe_groups([self.group]).get(self.group) or {}
        except KafkaError:
            return 0
        return len(info.get("members") or [])

    def lag(self) -> int | None:
        """Messages not committed yet by the group; None before its first commit."""
        try:
            offsets = self.admin.list_group_offsets(self.group).get(self.group) or {}
        except KafkaError:
            return None
        mine = {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == self.topic}
        if not mine:
            return None
        ends = self.consumer.end_offsets(self.partitions)
        return sum(end - max(mine.get(tp.partition, 0), 0) for tp, end in ends.items())

    def close(self) -> None:
        """Close the clients."""
        self.admin.close()
        self.consumer.close()


def wait_for(
    predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.5
) -> None:
    """Poll ``predicate()`` until true; raise with ``what`` when ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s")
