"""Topic configs against the real broker: what `up` and `queuewatch topics` do with a topic
that exists with another retention than its spec."""

from __future__ import annotations

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from queuewatch.kafka.topics import TopicSpec, ensure_topics, topic_specs
from queuewatch.settings import CommonSettings
from tests.integration.test_sinks_harness import wait_until

pytestmark = pytest.mark.integration

DAY_MS = 24 * 3600 * 1000


def retention_ms(bootstrap: str, topic: str) -> int:
    """The topic's retention.ms as the broker describes it.

    Right after a config change the broker may answer a describe with no configs at all
    (the change is still being applied from the metadata log), so ask until it names one.
    """
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-topics")
    resource = ConfigResource(ConfigResourceType.TOPIC, topic, ["retention.ms"])
    found: list[int] = []

    def described() -> bool:
        configs = admin.describe_configs([resource], config_filter="all")["topic"][topic]
        if "retention.ms" in configs:
            found.append(int(configs["retention.ms"]["value"]))
        return bool(found)

    try:
        wait_until(described, 30, f"the broker to describe {topic}")
        return found[0]
    finally:
        admin.close()


def test_window_topic_gets_the_configured_retention_in_days(bootstrap: str, unique: str) -> None:
    settings = CommonSettings(windows_topic=f"windows-{unique}", windows_retention_days=30)
    spec = next(s for s in topic_specs(settings) if s.name == settings.windows_topic)
    assert ensure_topics(bootstrap, [spec]) == [spec.name]
    assert retention_ms(bootstrap, spec.name) == 30 * DAY_MS


def test_existing_topic_with_a_shorter_retention_is_raised_and_a_longer_one_kept(
    bootstrap: str, unique: str
) -> None:
    name = f"windows-{unique}"
    week = {"retention.ms": str(7 * DAY_MS), "cleanup.policy": "delete"}
    ensure_topics(bootstrap, [TopicSpec(name, 1, week)])  # created by an older queuewatch
    month = {"retention.ms": str(30 * DAY_MS), "cleanup.policy": "delete"}
    assert ensure_topics(bootstrap, [TopicSpec(name, 1, month)]) == []
    assert retention_ms(bootstrap, name) == 30 * DAY_MS
    # A spec shorter than what the topic keeps deletes nothing: the topic stays as it is.
    ensure_topics(bootstrap, [TopicSpec(name, 1, week)])
    assert retention_ms(bootstrap, name) == 30 * DAY_MS
