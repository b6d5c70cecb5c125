"""The sinks' dead letters: records a sink cannot write go to the dead-letter topic.

The same header scheme as the aggregator's (``aggregator/intake.py``): the original key,
value and headers untouched, then the reason code and text, the source topic, partition and
offset. One header more, ``queuewatch.error.stage``, says which sink wrote the letter, since
the aggregator and both sinks share one dead-letter topic.

The checkpoint protocol calls :meth:`KafkaDeadLetters.flush` before it commits the offsets
the letters cover, so a letter is durable before its record counts as done.
"""

from __future__ import annotations

import threading
from typing import Any

from queuewatch.aggregator.intake import RawMessage, dead_letter
from queuewatch.kafka.security import KafkaSecurity
from queuewatch.sinks.exceptions import SinkError
from queuewatch.sinks.source import Message

#: Which process wrote a dead letter (the aggregator's letters do not carry it).
H_STAGE = "queuewatch.error.stage"
#: How long a flush may wait for the broker before the sink stops (and is restarted).
FLUSH_TIMEOUT_S = 60.0


def letter_headers(message: Message, code: str, reason: str, stage: str) -> list[tuple[str, bytes]]:
    """The headers of ``message``'s dead letter: its own, then why and where from."""
    raw = RawMessage(
        message.topic,
        message.partition,
        message.offset,
        message.timestamp,
        message.key,
        message.value,
        message.headers,
    )
    return [*dead_letter(raw, code, reason).headers, (H_STAGE, stage.encode())]


class KafkaDeadLetters:
    """Sends dead letters with an idempotent, acks=all producer; flush() raises on loss."""

    def __init__(
        self, bootstrap: str, topic: str, stage: str, security: KafkaSecurity | None = None
    ) -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self.stage = stage
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=f"queuewatch-{stage}-dlq",
            acks="all",
            enable_idempotence=True,
            # A letter is as large as the record it keeps; compressed it fits a topic that
            # holds the source's records whatever its own size limit.
            compression_type="lz4",
            linger_ms=5,
            **(security or KafkaSecurity()).kafka_python(),
        )
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []

    def send(self, message: Message, code: str, reason: str) -> None:
        """Queue the letter; failures surface in :meth:`flush`."""
        headers = letter_headers(message, code, reason, self.stage)
        future = self._producer.send(
            self.topic, key=message.key, value=message.value, headers=headers
        )
        future.add_errback(self._failed)

    def _failed(self, exc: Any) -> None:
        with self._lock:
            self._errors.append(exc)

    def flush(self) -> None:
        """Wait until every queued letter is acknowledged; raise SinkError if one is not."""
        try:
            self._producer.flush(timeout=FLUSH_TIMEOUT_S)
        except Exception as exc:  # KafkaTimeoutError: the broker did not answer in time
            self._failed(exc)
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise SinkError(
                f"{len(errors)} dead letters could not be written to {self.topic} ({errors[0]}); "
                "no offset was committed. Check that the topic exists (`queuewatch topics`) "
                "and accepts records this large, then restart the sink"
            )

    def close(self) -> None:
        """Send what is queued and close the producer."""
        self._producer.close(timeout=FLUSH_TIMEOUT_S)
