"""faust's Kafka transport, reading only committed records (``isolation.level=read_committed``).

Why: the reports topic may be written by transactional producers (Kafka Connect, Flink, Kafka
Streams with exactly-once). faust reads ``read_uncommitted`` unless it runs transactions
itself, so the records of an *aborted* transaction would be aggregated as reports. faust has
no setting for it; this transport is faust's own aiokafka transport with that one change, and
the app names it in its broker URLs (:data:`SCHEME`).
"""

from __future__ import annotations

from typing import Any

import aiokafka
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as faust_aiokafka

#: URL scheme of this transport: ``queuewatch-kafka://host:port``.
SCHEME = "queuewatch-kafka"


class ReadCommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread whose aiokafka consumer skips aborted transactions."""

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its fetcher; not yet started here.
        consumer._isolation_level = "read_committed"
        return consumer


class ReadCommittedConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer, with :class:`ReadCommittedConsumerThread`."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """faust's aiokafka transport with :class:`ReadCommittedConsumer`."""

    Consumer = ReadCommittedConsumer


TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
