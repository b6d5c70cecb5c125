"""The local broker is real Kafka: topics are created with their configs and keep data."""

from __future__ import annotations

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from queuewatch.kafka.topics import ensure_topics, topic_specs
from queuewatch.settings import CommonSettings


def test_ensure_topics_creates_the_event_log_with_unlimited_retention(
    bootstrap: str, unique: str
) -> None:
    settings = CommonSettings(
        reports_topic=f"reports-{unique}", dlq_topic=f"dlq-{unique}", windows_topic=f"win-{unique}"
    )
    created = ensure_topics(bootstrap, topic_specs(settings))
    assert sorted(created) == sorted([f"reports-{unique}", f"dlq-{unique}", f"win-{unique}"])
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
