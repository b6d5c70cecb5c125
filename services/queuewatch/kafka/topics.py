"""The topics queuewatch uses, created explicitly with their configs.

The broker never auto-creates topics (``auto.create.topics.enable=false``), so a typo in a
topic name fails loudly instead of quietly starting a new, empty log.

A topic that exists keeps the configs it was created with, whatever the settings say now.
So :func:`ensure_topics` also compares the retention of existing topics with their spec:
a retention *shorter* than the spec is raised to it (the broker would otherwise delete
records the spec promises to keep, e.g. window updates a sink down for a week has not read
yet); a longer one is left alone and logged, since shortening it would delete data someone
chose to keep. Any other config that differs is only logged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from queuewatch.errors import ConfigurationError
from queuewatch.kafka.security import KafkaSecurity
from queuewatch.settings import CommonSettings

log = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000
#: Configs whose larger value keeps more data: raising one deletes nothing.
_RETENTION_KEYS = ("retention.ms", "retention.bytes")
#: Largest record the aggregator writes (a state record, a dead letter): 16 MiB. The reports
#: topic keeps the broker's 1 MB limit, but on *compressed* batches: a report's value can be
#: far larger once decompressed, and its dead letter (sent uncompressed, whole) must fit.
MAX_RECORD_BYTES = 16 * 1024 * 1024


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
        # compacted: compaction would keep one window per crossing. Kept long enough for the
        # window sink to come back from an outage (QUEUEWATCH_WINDOWS_RETENTION_DAYS);
        # docs/reliability.md says how to rebuild past it.
        TopicSpec(
            settings.windows_topic,
            settings.reports_partitions,
            {
                "retention.ms": str(int(settings.windows_retention_days * DAY_MS)),
                "cleanup.policy": "delete",
            },
        ),
        # Derived too, the same way: the accepted reports as the aggregator counted them
        # (QUEUEWATCH_AGGREGATOR_OUTPUT=contributions), from which ClickHouse assembles windows.
        TopicSpec(
            settings.contributions_topic,
            settings.reports_partitions,
            {
                "retention.ms": str(int(settings.windows_retention_days * DAY_MS)),
                "cleanup.policy": "delete",
            },
        ),
    ]
    return [TopicSpec(s.name, s.partitions, {**s.configs, **replicated}, factor) for s in specs]


@dataclass(frozen=True)
class ConfigDrift:
    """A config of an existing topic that differs from its spec, and what was done."""

    topic: str
    key: str
    found: str | None
    wanted: str
    altered: bool


def _keeps_less(key: str, found: str | None, wanted: str) -> bool:
    """True when ``found`` keeps less data than ``wanted`` (-1 means unlimited)."""
    if key not in _RETENTION_KEYS or found is None:
        return False
    have, want = int(found), int(wanted)
    if want < 0:
        return have >= 0
    return 0 <= have < want


def config_drift(
    topic: str, found: dict[str, str | None], wanted: dict[str, str]
) -> list[ConfigDrift]:
    """The configs of ``topic`` that differ from ``wanted``; ``altered`` marks those to raise.

    A key missing from ``found`` is unknown, not different: a broker applying a config change
    can answer a describe with no configs for a moment, and that must not read as drift.
    """
    return [
        ConfigDrift(topic, key, found[key], value, _keeps_less(key, found[key], value))
        for key, value in sorted(wanted.items())
        if key in found and found[key] != value
    ]


#: A broker applying a topic change (just created, or altered) can answer a describe with no
#: configs for a moment; ask this many times, this far apart, before giving up.
_DESCRIBE_ATTEMPTS = 10
_DESCRIBE_PAUSE_S = 0.5


def _describe(admin: KafkaAdminClient, spec: TopicSpec) -> dict[str, str | None]:
    """The current values of the spec's config keys on its topic; empty if unreadable."""
    from kafka.admin import ConfigResource, ConfigResourceType

    resource = ConfigResource(ConfigResourceType.TOPIC, spec.name, list(spec.configs))
    for attempt in range(_DESCRIBE_ATTEMPTS):
        described = admin.describe_configs([resource], config_filter="all")
        configs = described.get("topic", {}).get(spec.name, {})
        if configs:
            return {k: c.get("value") for k, c in configs.items()}
        if attempt + 1 < _DESCRIBE_ATTEMPTS:
            time.sleep(_DESCRIBE_PAUSE_S)
    return {}


def align_configs(admin: KafkaAdminClient, specs: list[TopicSpec]) -> list[ConfigDrift]:
    """Raise short retentions of existing topics to their spec; log every other difference."""
    from kafka.admin import ConfigResource, ConfigResourceType

    wanted = [s for s in specs if s.configs]
    if not wanted:
        return []
    drifts: list[ConfigDrift] = []
    for spec in wanted:
        found = _describe(admin, spec)
        if not found:
            log.warning(
                "could not read the configs of topic %s; not checking its retention (run "
                "`queuewatch topics` again once the broker is settled)",
                spec.name,
            )
        drifts += config_drift(spec.name, found, spec.configs)
    to_alter: dict[str, dict[str, str]] = {}
    for d in drifts:
        if d.altered:
            to_alter.setdefault(d.topic, {})[d.key] = d.wanted
            log.warning(
                "topic %s exists with %s=%s, which keeps less than its spec; setting %s=%s",
                d.topic,
                d.key,
                d.found,
                d.key,
                d.wanted,
            )
        else:
            log.warning(
                "topic %s exists with %s=%s, not %s as configured; left as it is (change it "
                "with kafka-configs.sh if that is not meant)",
                d.topic,
                d.key,
                d.found,
                d.wanted,
            )
    if to_alter:
        admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t, c) for t, c in to_alter.items()]
        )
    return drifts


def ensure_topics(
    bootstrap: str, specs: list[TopicSpec], security: KafkaSecurity | None = None
) -> list[str]:
    """Create the missing topics and align the retention of existing ones; return those created.

    See the module docstring for what happens to an existing topic whose configs differ.
    """
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="queuewatch-admin",
        **(security or KafkaSecurity()).kafka_python(),
    )
    try:
        existing = set(admin.list_topics())
        created: list[str] = []
        for spec in (s for s in specs if s.name not in existing):
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
                # Created by another process between list and create, or so recently that
                # the listing did not show it yet: it exists, so its configs are checked too.
                pass
        align_configs(admin, [s for s in specs if s.name not in created])
        return created
    finally:
        admin.close()


def max_message_bytes(bootstrap: str, topic: str, security: KafkaSecurity | None = None) -> int:
    """The largest record batch ``topic`` accepts (its ``max.message.bytes``, as the broker says).

    A topic created before its spec had a limit keeps the broker's default (1 MB): senders ask
    rather than assume, so a record is cut to fit instead of being refused forever.
    """
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="queuewatch-admin",
        **(security or KafkaSecurity()).kafka_python(),
    )
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
