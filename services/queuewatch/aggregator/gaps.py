"""Is a missing offset a hole or a gap? Asked of the broker with a consumer of our own.

A partition's offsets are not all records a consumer receives: a transactional producer
(Kafka Connect, Flink, Kafka Streams with exactly-once) writes a control record (commit or
abort marker) after each transaction, and a ``read_committed`` consumer never receives those
nor the records of aborted transactions. :mod:`queuewatch.aggregator.ordering` would take each
such *gap* for a hole (records the client skipped) and seek back to it forever.

The rule: a fresh fetch from the wanted offset, by a consumer outside faust (so no buffered
message of an earlier fetch can interfere), returns the first record at or after it. Offsets
before that record hold nothing we can ever receive: a gap, not a hole. faust's own consumer
cannot answer that, because messages of an earlier fetch are still delivered after a seek.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from queuewatch.kafka.security import KafkaSecurity

log = logging.getLogger(__name__)


class GapProbe:
    """Finds the first record at or after an offset; one consumer, started on first use."""

    def __init__(
        self, bootstrap: str, timeout_s: float = 5.0, security: KafkaSecurity | None = None
    ) -> None:
        self.bootstrap = bootstrap
        self.security = security or KafkaSecurity()
        self.timeout_s = timeout_s
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def first_at_or_after(self, topic: str, partition: int, offset: int) -> int | None:
        """The offset of the first committed record at or after ``offset``.

        None when the broker gave no record within the timeout or the fetch failed (for
        example the offset was deleted by retention): the caller then treats it as a hole.
        """
        tp = TopicPartition(topic, partition)
        async with self._lock:
            try:
                consumer = await self._started()
                consumer.assign([tp])
                consumer.seek(tp, offset)
                batch = await consumer.getmany(tp, timeout_ms=int(self.timeout_s * 1000))
            except (KafkaError, OSError) as exc:
                log.warning(
                    "cannot ask the broker what follows offset %d of %s: %s", offset, tp, exc
                )
                return None
        records = batch.get(tp) or []
        return records[0].offset if records else None

    async def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                client_id="queuewatch-aggregator-gap-probe",
                enable_auto_commit=False,
                isolation_level="read_committed",
                auto_offset_reset="none",  # a deleted offset is an error, not a jump
                max_partition_fetch_bytes=64
                * 1024,  # one record is enough; a large one still comes
                **self.security.aiokafka(),
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def close(self) -> None:
        """Stop the consumer if it was started."""
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()
