"""The topics queuewatch uses, created explicitly with their configs.

The broker never auto-creates topics (``auto.create.topics.enable=false``), so a typo in a
topic name fails loudly instead of quietly starting a new, empty log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from queuewatch.errors import ConfigurationError
from queuewatch.kafka.security import KafkaSecurity
from queuewatch.settings import CommonSettings

log = logging.getLogger(__name__)

WEEK_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """A topic's name, partition count, replication factor and configs."""

    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)
    replication: int = 1


def replication(settings: CommonSettings) -> tuple[int, dict[str, str]]:
    """The replication factor and the configs that go with it, for every topic we create.

    The aggregator's changelog takes the same (``aggregator/app.py``), so a crash of one
    broker of a real cluster loses neither a report nor a state record.
    """
    factor, min_isr = settings.kafka_replication_factor, settings.kafka_min_insync_replicas
    if min_isr > factor:
        raise ConfigurationError(
            f"QUEUEWATCH_KAFKA_MIN_INSYNC_REPLICAS ({min_isr}) is above "
            f"QUEUEWATCH_KAFKA_REPLICATION_FACTOR ({factor}): every acks=all write would "
            "fail; lower it (a 3-broker cluster wants 3 and 2)"
        )
    return factor, {"min.insync.replicas": str(min_isr)}


def topic_specs(settings: CommonSettings) -> list[TopicSpec]:
    """The topics of a deployment, named by ``settings``."""
    factor, replicated = replication(settings)
    specs = [
        # The event log: kept forever, since every projection is rebuilt by replaying it.
        TopicSpec(
            settings.reports_topic,
            settings.reports_partitions,
            {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"},
        ),
        # Dead letters keep the original bytes for a person to inspect and replay: forever too.
        TopicSpec(settings.dlq_topic, 3, {"retention.ms": "-1", "cleanup.policy": "delete"}),
        # Derived data (the aggregator rebuilds it from the log); keyed by crossing, so not
        # compacted: compaction would keep one window per crossing. A week covers any outage.
        TopicSpec(
            settings.windows_topic,
            settings.reports_partitions,
            {"retention.ms": str(WEEK_MS), "cleanup.policy": "delete"},
        ),
    ]
    return [TopicSpec(s.name, s.partitions, {**s.configs, **replicated}, factor) for s in specs]


def ensure_topics(
    bootstrap: str, specs: list[TopicSpec], security: KafkaSecurity | None = None
) -> list[str]:
    """Create the missing topics; return the names created. Existing topics are left as they are."""
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="queuewatch-admin",
        **(security or KafkaSecurity()).kafka_python(),
    )
    try:
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created: list[str] = []
        for spec in missing:
            try:
                admin.create_topics(
                    [
                        NewTopic(
                            spec.name,
                            spec.partitions,
                            spec.replication,
                            topic_configs=dict(spec.configs),
                        )
                    ]
                )
                created.append(spec.name)
                log.info(
                    "created topic %s (%d partitions, %d replicas)",
                    spec.name,
                    spec.partitions,
                    spec.replication,
                )
            except TopicAlreadyExistsError:
                pass  # another process created it between list and create
        return created
    finally:
        admin.close()
