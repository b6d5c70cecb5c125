"""The topics queuewatch uses, created explicitly with their configs.

The broker never auto-creates topics (``auto.create.topics.enable=false``), so a typo in a
topic name fails loudly instead of quietly starting a new, empty log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from queuewatch.errors import ConfigurationError
from queuewatch.settings import CommonSettings

log = logging.getLogger(__name__)

WEEK_MS = 7 * 24 * 3600 * 1000
#: Largest record the aggregator writes (a state record, a dead letter): 16 MiB. The reports
#: topic keeps the broker's 1 MB limit, but on *compressed* batches: a report's value can be
#: far larger once decompressed, and its dead letter (sent uncompressed, whole) must fit.
MAX_RECORD_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class TopicSpec:
    """A topic's name, partition count and configs."""

    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)


def topic_specs(settings: CommonSettings) -> list[TopicSpec]:
    """The topics of a deployment, named by ``settings``."""
    return [
        # The event log: kept forever, since every projection is rebuilt by replaying it.
        TopicSpec(
            settings.reports_topic,
            settings.reports_partitions,
            {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"},
        ),
        # Dead letters keep the original bytes for a person to inspect and replay: forever too.
        # Letters up to MAX_RECORD_BYTES go whole; larger ones are cut (aggregator/intake.py).
        TopicSpec(
            settings.dlq_topic,
            3,
            {
                "retention.ms": "-1",
                "cleanup.policy": "delete",
                "max.message.bytes": str(MAX_RECORD_BYTES),
            },
        ),
        # Derived data (the aggregator rebuilds it from the log); keyed by crossing, so not
        # compacted: compaction would keep one window per crossing. A week covers any outage.
        TopicSpec(
            settings.windows_topic,
            settings.reports_partitions,
            {"retention.ms": str(WEEK_MS), "cleanup.policy": "delete"},
        ),
    ]


def ensure_topics(bootstrap: str, specs: list[TopicSpec]) -> list[str]:
    """Create the missing topics; return the names created. Existing topics are left as they are."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="queuewatch-admin")
    try:
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created: list[str] = []
        for spec in missing:
            try:
                admin.create_topics(
                    [NewTopic(spec.name, spec.partitions, 1, topic_configs=dict(spec.configs))]
                )
                created.append(spec.name)
                log.info("created topic %s (%d partitions)", spec.name, spec.partitions)
            except TopicAlreadyExistsError:
                pass  # another process created it between list and create
        return created
    finally:
        admin.close()


def max_message_bytes(bootstrap: str, topic: str) -> int:
    """The largest record batch ``topic`` accepts (its ``max.message.bytes``, as the broker says).

    A topic created before its spec had a limit keeps the broker's default (1 MB): senders ask
    rather than assume, so a record is cut to fit instead of being refused forever.
    """
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="queuewatch-admin")
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})],
            config_filter="all",
        )
    except KafkaError as exc:
        raise ConfigurationError(
            f"cannot read the configs of topic {topic} ({exc}); create it with `queuewatch "
            "topics` (or `queuewatch up`)"
        ) from exc
    finally:
        admin.close()
    try:
        return int(described["topic"][topic]["max.message.bytes"]["value"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"the broker did not say topic {topic}'s max.message.bytes ({described!r:.200}); "
            "check that it exists: `queuewatch topics`"
        ) from exc
