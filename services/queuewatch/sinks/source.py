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

    def close(self) -> None:
        """Leave the group without committing anything."""
        ...


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
        security = security or KafkaSecurity()
        with RefusalLog() as refusals:
            try:
                self._consumer = self._connect(
                    KafkaConsumer, bootstrap, group, client_id, session_timeout_s, security
                )
            except KafkaError as exc:
                raise SinkKafkaError(describe_failure(bootstrap, security, exc, refusals)) from exc
        revoke = on_revoke

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                if revoke is not None and revoked:
                    revoke()

            def on_partitions_assigned(self, assigned: Any) -> None:
                log.info("%s: assigned %d partitions of %s", group, len(assigned), topic)

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
        for records in batches.values():
            out.extend(
                Message(r.topic, r.partition, r.offset, r.timestamp, r.value) for r in records
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

    def close(self) -> None:
        """Leave the group; uncommitted records are read again by the next member."""
        self._consumer.close(autocommit=False)
