"""Window rows to Kafka in record batches, one per partition, instead of one send per row.

A busy flush emits tens of thousands of windows. Sent one by one (faust's ``producer.send``
-> aiokafka's ``send``), each costs a future, a partitioner call, a debug log record and an
accumulator lookup: in a sparse replay that was over half of the aggregator's time. aiokafka's
batch API (``create_batch`` / ``send_batch``) packs the rows of a partition into one record
batch and returns one future per batch.

Nothing else changes: same topic, key and value; the partition is chosen by the producer's
own partitioner (so a crossing's windows land where ``send`` put them, keeping their order);
and :meth:`WindowBatches.finish` returns only when the broker has acknowledged every batch
(acks=all), so the checkpoint protocol's "delivered before forgotten" still holds.

The state changelog's records go the same way (:func:`send_records`, explicit partitions):
since the state is written incrementally a batch sends a few records per report, and faust's
``send_changelog`` (one buffered send each) halved the dense replay's throughput.
"""

from __future__ import annotations

import asyncio
from typing import Any


class WindowBatches:
    """Collects (key, value) pairs for one topic and ships them as per-partition batches."""

    def __init__(self, producer: Any, topic: str) -> None:
        """``producer`` is the started ``aiokafka.AIOKafkaProducer`` under faust's producer."""
        self.producer = producer
        self.topic = topic
        self.open: dict[int, Any] = {}  # partition -> BatchBuilder being filled
        self.sent: list[Any] = []  # futures of submitted batches
        self.count = 0
        #: key -> partition: every row of a crossing has the same key, and the partitioner
        #: (a pure-Python murmur2 hash, ~3 µs) would give the same answer for each of them
        self.partitions: dict[bytes, int] = {}

    @classmethod
    async def for_app(cls, faust_producer: Any, topic: str) -> WindowBatches:
        """Batches on the aiokafka producer faust uses, with the topic's metadata loaded."""
        producer = faust_producer._ensure_producer()
        await producer.partitions_for(topic)
        return cls(producer, topic)

    def _partition(self, key: bytes) -> int:
        # The producer's own choice for this key (what ``send`` would pick), asked once per key
        # and flush: a flush lives a moment, and one partition per key keeps its rows in order.
        partition = self.partitions.get(key)
        if partition is None:
            partition = self.partitions[key] = self.producer._partition(
                self.topic, None, key, None, key, None
            )
        return partition

    async def add(self, key: bytes, value: bytes) -> None:
        """Queue one message; a full batch is submitted and a new one started."""
        await self.add_to(self._partition(key), key, value)

    async def add_to(self, partition: int, key: bytes, value: bytes | None) -> None:
        """Queue one message for ``partition``, after every message queued for it before."""
        batch = self.open.get(partition)
        if batch is not None:
            if batch.append(timestamp=None, key=key, value=value) is not None:
                self.count += 1
                return
            await self._submit(partition)  # full
        batch = self.open[partition] = self.producer.create_batch()
        if batch.append(timestamp=None, key=key, value=value) is None:
            # Larger than a batch: the producer's own send sizes a batch for it, queued for
            # the partition after the batches submitted before (the order is kept).
            del self.open[partition]
            self.sent.append(
                await self.producer.send(self.topic, value, key=key, partition=partition)
            )
        self.count += 1

    async def _submit(self, partition: int) -> None:
        batch = self.open.pop(partition)
        batch.close()
        self.sent.append(await self.producer.send_batch(batch, self.topic, partition=partition))

    async def finish(self) -> None:
        """Submit what is left and wait until the broker has acknowledged every batch."""
        for partition in list(self.open):
            await self._submit(partition)
        if self.sent:
            await asyncio.gather(*self.sent)


async def send_records(
    faust_producer: Any, topic: str, records: list[tuple[int, bytes, bytes | None]]
) -> None:
    """Send ``(partition, key, value)`` records in order and wait until all are acknowledged.

    ``value`` None is a delete (a tombstone). The records of one partition reach the broker
    in the order given (one batch after the other on one producer), which
    :mod:`queuewatch.aggregator.storage` relies on.
    """
    if not records:
        return
    out = await WindowBatches.for_app(faust_producer, topic)
    for partition, key, value in records:
        await out.add_to(partition, key, value)
    await out.finish()
