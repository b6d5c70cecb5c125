"""The local broker is real Kafka: topics are created with their configs and keep data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from queuewatch.kafka.topics import ensure_topics, topic_specs
from queuewatch.platform.broker import LocalBroker, PortTakenError, free_port
from queuewatch.settings import CommonSettings


def test_ensure_topics_creates_the_event_log_with_unlimited_retention(
    bootstrap: str, unique: str
) -> None:
    settings = CommonSettings(
        reports_topic=f"reports-{unique}",
        dlq_topic=f"dlq-{unique}",
        windows_topic=f"win-{unique}",
        contributions_topic=f"contrib-{unique}",
    )
    created = ensure_topics(bootstrap, topic_specs(settings))
    assert sorted(created) == sorted(
        [f"reports-{unique}", f"dlq-{unique}", f"win-{unique}", f"contrib-{unique}"]
    )
    assert ensure_topics(bootstrap, topic_specs(settings)) == []  # idempotent

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        described = admin.describe_topics([f"reports-{unique}"])
        assert len(described[0]["partitions"]) == 12
        configs = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, f"reports-{unique}")]
        )
        (by_name,) = configs.values()
        retention = by_name[f"reports-{unique}"]["retention.ms"]
        assert "-1" in str(retention)
    finally:
        admin.close()


def test_a_message_published_is_read_back_from_the_broker(bootstrap: str, unique: str) -> None:
    settings = CommonSettings(
        reports_topic=f"r-{unique}", dlq_topic=f"d-{unique}", windows_topic=f"w-{unique}"
    )
    ensure_topics(bootstrap, topic_specs(settings))
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    producer.send(f"r-{unique}", key=b"k", value=b"hello", partition=3).get(timeout=30)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=10000)
    tp = TopicPartition(f"r-{unique}", 3)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    values = [m.value for m in consumer]
    consumer.close()
    assert values == [b"hello"]


def test_starting_a_broker_where_kafka_already_answers_says_so(
    kafka_broker: LocalBroker, tmp_path: Path
) -> None:
    other = LocalBroker(tmp_path / "kafka", kafka_broker.libs_dir, port=kafka_broker.port)
    with pytest.raises(PortTakenError, match="a Kafka broker already answers"):
        other.start(timeout_s=5)
    assert other.process is None
    assert not (tmp_path / "kafka" / "data").exists()


def test_a_taken_controller_port_is_named_with_the_setting_to_change(
    kafka_broker: LocalBroker, tmp_path: Path
) -> None:
    other = LocalBroker(
        tmp_path / "kafka",
        kafka_broker.libs_dir,
        port=free_port(),
        controller_port=kafka_broker.port,  # something listens there
    )
    with pytest.raises(PortTakenError, match="QUEUEWATCH_KAFKA_CONTROLLER_PORT"):
        other.check_ports()


def test_stop_stale_never_signals_a_process_that_is_not_this_folders_broker(
    kafka_libs: Path, tmp_path: Path
) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        broker = LocalBroker(tmp_path / "kafka", kafka_libs)
        broker.data_root.mkdir(parents=True)
        broker.pid_file.write_text(str(stranger.pid))  # a recycled pid, say
        assert broker.stop_stale() is None
        assert stranger.poll() is None
        assert not broker.pid_file.exists()
    finally:
        stranger.kill()
        stranger.wait()
