"""Where a sink reads from: a Kafka consumer group, behind a small interface.

The commit protocol (``checkpoint``) needs five things from its source: poll, commit exact
offsets, pause, resume and stay alive while paused. ``KafkaSource`` gives them with
confluent-kafka and ``enable.auto.commit=False``: offsets move only when the protocol commits
them, after ClickHouse accepted the rows they cover. The admin look-ups done once per
assignment or start-up (:func:`topic_id`, :func:`skip_expired`) stay with kafka-python.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from queuewatch.kafka.security import KafkaSecurity, describe_failure
from queuewatch.sinks.exceptions import SinkKafkaError

log = logging.getLogger(__name__)


class Message(NamedTuple):
    """One Kafka record as a sink sees it.

    A named tuple rather than a frozen dataclass: a sink makes one per record, and a frozen
    dataclass costs about 1.5 µs to build here, a tuple a quarter of that.
    """

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
    """A confluent-kafka consumer in its own group, committing only what it is told to.

    Why confluent-kafka and not kafka-python, which the producer SDK and the CLI use: a sink
    reads as fast as ClickHouse writes, and kafka-python reads at most about 35k records/s
    here (its fetch, parse and record objects are Python), under the 50k rows/s the sinks
    must write. librdkafka fetches in its own threads, in C, about 300k records/s on the
    same topic (docs/performance.md, "Sinks"). The protocol is unchanged: auto-commit off,
    offsets stored by nobody but :meth:`commit`, rebalance callbacks run inside :meth:`poll`
    on the sink's thread, exactly as kafka-python's do.
    """

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
        from confluent_kafka import Consumer, KafkaException

        self._topic = topic
        self._topic_id = ""
        security = security or KafkaSecurity()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "client.id": client_id,
                # The protocol commits after the write; auto-commit would commit on a timer,
                # before the rows it covers are in ClickHouse.
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                # A new group starts at the beginning: the projections are built from the log.
                "auto.offset.reset": "earliest",
                # Room for a ClickHouse outage of a few minutes between polls would be needed
                # without pause(); with it we poll every backoff step, so the default is fine.
                "max.poll.interval.ms": 300_000,
                "session.timeout.ms": int(session_timeout_s * 1000),
                "heartbeat.interval.ms": max(500, int(session_timeout_s * 1000 / 3)),
                # librdkafka prefetches up to this much per consumer (default 64 MiB): one
                # batch of 10,000 reports is about 2 MiB, so 16 MiB keeps it ahead and bounded.
                "queued.max.messages.kbytes": 16_384,
                # Its log lines go through logging (served inside poll), not straight to stderr.
                "logger": logging.getLogger("queuewatch.sinks.librdkafka"),
                **security.librdkafka(),
            }
        )
        try:
            # librdkafka connects lazily; a metadata request now turns a wrong address or a
            # refused login into an error at start-up, as kafka-python's constructor did.
            self._consumer.list_topics(topic, timeout=max(5.0, session_timeout_s))
        except KafkaException as exc:
            self._consumer.close()
            raise SinkKafkaError(describe_failure(bootstrap, security, exc)) from exc

        def assigned(_consumer: Any, partitions: list[Any]) -> None:
            # Every assignment follows a rebalance, and deleting or re-creating a subscribed
            # topic causes one: so the id read here is the incarnation that the records
            # polled until the next assignment come from.
            try:
                self._topic_id = topic_id(bootstrap, topic, client_id, security)
            except Exception as exc:  # a failing callback would break the group join
                self._topic_id = ""
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
                len(partitions),
                topic,
                self._topic_id or "unknown",
            )

        def revoked(_consumer: Any, partitions: list[Any]) -> None:
            if on_revoke is not None and partitions:
                on_revoke()

        self._consumer.subscribe([topic], on_assign=assigned, on_revoke=revoked)

    def poll(self, timeout_s: float, max_records: int) -> list[Message]:
        """Next records, oldest first per partition."""
        from confluent_kafka import KafkaError

        records = self._consumer.consume(max(1, max_records), max(0.0, timeout_s))
        out: list[Message] = []
        append = out.append
        topic_id = self._topic_id
        for r in records:
            error = r.error()
            if error is not None:
                if error.fatal():
                    raise SinkKafkaError(
                        f"the Kafka consumer of {self._topic} failed for good ({error.str()}); "
                        "restart the sink, which resumes from the last committed offsets"
                    )
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("%s: %s", self._topic, error.str())
                continue
            topic, partition, offset = r.topic(), r.partition(), r.offset()
            if topic is None or partition is None or offset is None:
                continue  # only error events lack them, and those were handled above
            headers: Any = r.headers()
            append(
                Message(
                    topic,
                    partition,
                    offset,
                    r.timestamp()[1],
                    r.value(),
                    r.key(),
                    tuple((k, v or b"") for k, v in headers) if headers else (),
                    topic_id,
                )
            )
        return out

    def commit(self, next_offsets: dict[tuple[str, int], int]) -> None:
        """Synchronous commit of exactly these offsets; raises if any partition's fails."""
        from confluent_kafka import KafkaException, TopicPartition

        done = self._consumer.commit(
            offsets=[
                TopicPartition(topic, partition, offset)
                for (topic, partition), offset in next_offsets.items()
            ],
            asynchronous=False,
        )
        failed = [tp for tp in done or () if tp.error is not None]
        if failed:
            raise KafkaException(failed[0].error)

    def pause(self) -> None:
        """Pause every assigned partition."""
        assigned = self._consumer.assignment()
        if assigned:
            self._consumer.pause(assigned)

    def resume(self) -> None:
        """Resume every assigned partition (resuming one not paused changes nothing)."""
        assigned = self._consumer.assignment()
        if assigned:
            self._consumer.resume(assigned)

    def rewind(self, messages: list[Message]) -> None:
        """Seek each partition back to the first of ``messages`` in it."""
        from confluent_kafka import TopicPartition

        first: dict[tuple[str, int], int] = {}
        for m in messages:
            key = (m.topic, m.partition)
            first[key] = min(first.get(key, m.offset), m.offset)
        for (topic, partition), offset in first.items():
            self._consumer.seek(TopicPartition(topic, partition, offset))

    def lag(self) -> int:
        """End offsets minus positions of the assigned partitions (0 with none assigned).

        The end offsets are the high watermarks of the last fetch responses (no request): a
        request would queue on each broker connection behind the fetch it is long-polling,
        about 0.5 s per partition here, and block the sink's loop. Only a partition not
        fetched yet is asked for. A partition not read yet has no position: its committed
        offset stands in for it, and with none, its first offset (where reading starts).
        """
        consumer = self._consumer
        assigned = consumer.assignment()
        if not assigned:
            return 0
        positions = {(tp.topic, tp.partition): tp.offset for tp in consumer.position(assigned)}
        unknown = [tp for tp in assigned if positions.get((tp.topic, tp.partition), -1) < 0]
        if unknown:
            for tp in consumer.committed(unknown, timeout=5.0):
                positions[(tp.topic, tp.partition)] = tp.offset
        total = 0
        for tp in assigned:
            low, high = consumer.get_watermark_offsets(tp, cached=True)
            if high < 0:  # not fetched yet
                low, high = consumer.get_watermark_offsets(tp, timeout=5.0)
            at = positions.get((tp.topic, tp.partition), -1)
            total += max(0, high - (at if at >= 0 else low))
        return total

    def close(self) -> None:
        """Leave the group; uncommitted records are read again by the next member."""
        self._consumer.close()
