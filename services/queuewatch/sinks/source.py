"""Where a sink reads from: a Kafka consumer group, behind a small interface.

The commit protocol (``checkpoint``) needs five things from its source: poll, commit exact
offsets, pause, resume and stay alive while paused. ``KafkaSource`` gives them with
kafka-python and ``enable_auto_commit=False``: offsets move only when the protocol commits
them, after ClickHouse accepted the rows they cover.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from queuewatch.kafka.security import KafkaSecurity, RefusalLog, describe_failure
from queuewatch.sinks.exceptions import SinkKafkaError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    """One Kafka record as a sink sees it."""

    topic: str
    partition: int
    offset: int
    timestamp: int  # ms, the record's log timestamp
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    #: The topic's id (Kafka's topic UUID, KIP-516): it changes when a topic is deleted and
    #: created again under the same name, when offsets start again at 0. Empty if unknown.
    topic_id: str = ""


class RecordSource(Protocol):
    """What the commit protocol reads from; KafkaSource is the real one."""

    def poll(self, timeout_s: float, max_records: int) -> list[Message]:
        """Next records, at most ``max_records``, waiting up to ``timeout_s`` for some."""
        ...

    def commit(self, next_offsets: dict[tuple[str, int], int]) -> None:
        """Commit, per (topic, partition), the offset of the next record to read."""
        ...

    def pause(self) -> None:
        """Stop fetching records (polls then return nothing), keeping group membership."""
        ...

    def resume(self) -> None:
        """Fetch again after :meth:`pause`."""
        ...

    def rewind(self, messages: list[Message]) -> None:
        """Read these records again: move each partition back to its first one listed."""
        ...

    def lag(self) -> int:
        """Records after the read position, summed over the assigned partitions."""
        ...

    def close(self) -> None:
        """Leave the group without committing anything."""
        ...


#: The id Kafka reports for a topic it has no id for (KIP-516's "zero UUID").
_NO_TOPIC_ID = "00000000-0000-0000-0000-000000000000"


def topic_id(
    bootstrap: str,
    topic: str,
    client_id: str = "queuewatch-sink",
    security: KafkaSecurity | None = None,
) -> str:
    """Kafka's UUID of ``topic`` as text, or "" when the broker gives none (before 2.8).

    A topic deleted and created again under the same name gets a new id while its offsets
    start again at 0: the id is what tells its records from the old ones.
    """
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id=f"{client_id}-admin",
        **(security or KafkaSecurity()).kafka_python(),
    )
    try:
        for described in admin.describe_topics([topic]):
            if described.get("name") == topic:
                found = str(described.get("topic_id") or "")
                return "" if found == _NO_TOPIC_ID else found
        return ""
    finally:
        admin.close()


def skip_expired(
    bootstrap: str, group: str, topic: str, security: KafkaSecurity | None = None
) -> dict[int, int]:
    """Move ``group`` past records the broker deleted before it read them; return the counts.

    A group whose committed offset is older than a partition's first kept record (retention
    deleted them while its sink was down) resumes at that first record, and the ones between
    are gone without a word; if nothing was kept after them, its commit never moves again and
    the lag it shows stays up for good. So, before the sink joins its group, this counts them
    per partition and commits each such partition's first kept offset: the records are gone,
    and saying so once is better than waiting for them. The caller reports the counts.
    """
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        **(security or KafkaSecurity()).kafka_python(),
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        firsts = consumer.beginning_offsets(tps)
        gaps: dict[int, int] = {}
        for tp in tps:
            committed = consumer.committed(tp)
            if committed is not None and committed < firsts[tp]:
                gaps[tp.partition] = firsts[tp] - committed
        if gaps:
            try:
                consumer.commit(
                    {
                        TopicPartition(topic, p): OffsetAndMetadata(
                            firsts[TopicPartition(topic, p)], "", -1
                        )
                        for p in gaps
                    }
                )
            except Exception as exc:  # another member is active: it reads on from the start
                log.warning("%s: could not commit past the expired records (%s)", group, exc)
        return gaps
    finally:
        consumer.close(autocommit=False)


class KafkaSource:
    """A kafka-python consumer in its own group, committing only what it is told to."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        on_revoke: Callable[[], None] | None = None,
        client_id: str = "queuewatch-sink",
        session_timeout_s: float = 10.0,
        security: KafkaSecurity | None = None,
    ) -> None:
        from kafka import KafkaConsumer
        from kafka.consumer.subscription_state import ConsumerRebalanceListener
        from kafka.errors import KafkaError

        self._topic = topic
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._topic_id = ""
        security = security or KafkaSecurity()
        self._security = security
        with RefusalLog() as refusals:
            try:
                self._consumer = self._connect(
                    KafkaConsumer, bootstrap, group, client_id, session_timeout_s, security
                )
            except KafkaError as exc:
                raise SinkKafkaError(describe_failure(bootstrap, security, exc, refusals)) from exc
        revoke = on_revoke
        source = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                if revoke is not None and revoked:
                    revoke()

            def on_partitions_assigned(self, assigned: Any) -> None:
                # Every assignment follows a rebalance, and deleting or re-creating a
                # subscribed topic causes one: so the id read here is the incarnation
                # that the records polled until the next assignment come from.
                try:
                    source._topic_id = topic_id(bootstrap, topic, client_id, security)
                except Exception as exc:  # a failing callback would break the group join
                    source._topic_id = ""
                    log.warning(
                        "%s: could not read the id of %s (%s); deduplication tokens name the "
                        "topic only until the next assignment",
                        group,
                        topic,
                        exc,
                    )
                log.info(
                    "%s: assigned %d partitions of %s (topic id %s)",
                    group,
                    len(assigned),
                    topic,
                    source._topic_id or "unknown",
                )

        self._consumer.subscribe([topic], listener=Listener())

    @staticmethod
    def _connect(
        consumer_class: Any,
        bootstrap: str,
        group: str,
        client_id: str,
        session_timeout_s: float,
        security: KafkaSecurity,
    ) -> Any:
        return consumer_class(
            bootstrap_servers=bootstrap,
            group_id=group,
            client_id=client_id,
            # The protocol commits after the write; auto-commit would commit on a timer,
            # before the rows it covers are in ClickHouse.
            enable_auto_commit=False,
            # A new group starts at the beginning: the projections are built from the log.
            auto_offset_reset="earliest",
            # Room for a ClickHouse outage of a few minutes between polls would be needed
            # without pause(); with it we poll every backoff step, so the default is fine.
            max_poll_interval_ms=300_000,
            session_timeout_ms=int(session_timeout_s * 1000),
            heartbeat_interval_ms=max(500, int(session_timeout_s * 1000 / 3)),
            **security.kafka_python(),
        )

    def poll(self, timeout_s: float, max_records: int) -> list[Message]:
        """Next records, oldest first per partition."""
        batches = self._consumer.poll(
            timeout_ms=max(0, int(timeout_s * 1000)), max_records=max(1, max_records)
        )
        out: list[Message] = []
        topic_id = self._topic_id
        for records in batches.values():
            out.extend(
                Message(
                    r.topic,
                    r.partition,
                    r.offset,
                    r.timestamp,
                    r.value,
                    r.key,
                    tuple((k, v or b"") for k, v in r.headers or ()),
                    topic_id,
                )
                for r in records
            )
        return out

    def commit(self, next_offsets: dict[tuple[str, int], int]) -> None:
        """Synchronous commit of exactly these offsets."""
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        self._consumer.commit(
            {
                TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
                for (topic, partition), offset in next_offsets.items()
            }
        )

    def pause(self) -> None:
        """Pause every assigned partition."""
        self._consumer.pause(*self._consumer.assignment())

    def resume(self) -> None:
        """Resume every paused partition."""
        self._consumer.resume(*self._consumer.paused())

    def rewind(self, messages: list[Message]) -> None:
        """Seek each partition back to the first of ``messages`` in it."""
        from kafka import TopicPartition

        first: dict[tuple[str, int], int] = {}
        for m in messages:
            key = (m.topic, m.partition)
            first[key] = min(first.get(key, m.offset), m.offset)
        for (topic, partition), offset in first.items():
            self._consumer.seek(TopicPartition(topic, partition), offset)

    def lag(self) -> int:
        """End offsets minus positions of the assigned partitions (0 with none assigned)."""
        assigned = list(self._consumer.assignment())
        if not assigned:
            return 0
        ends = self._consumer.end_offsets(assigned)
        return sum(max(0, ends[tp] - self._consumer.position(tp)) for tp in assigned)

    def close(self) -> None:
        """Leave the group; uncommitted records are read again by the next member."""
        self._consumer.close(autocommit=False)
