"""The Python SDK for publishing queue reports: one call per report, validated first.

    with ReportProducer("127.0.0.1:9092") as producer:
        producer.publish({"event_id": ..., "crossing_id": "ge-ru-verkhny-lars", ...})

Guarantees and why:

1. **Validated at the door.** ``publish`` checks every rule of
   :mod:`queuewatch.contract.validation` and raises :class:`ReportInvalid` before anything
   reaches the log, so a typo fails in the producer's hands, not in a dead-letter topic.
2. **Keyed by crossing.** The key is ``crossing_id`` (UTF-8), so one crossing's reports land on
   one partition in the order they were published.
3. **Durable and not duplicated by retries.** ``acks=all`` with the idempotent producer: a
   retried batch is written once, and with at most 5 requests in flight per connection the
   broker keeps the order of a partition even across retries (sequence numbers).
4. **Batched and compressed.** ``linger_ms`` and ``batch_size`` let reports share requests;
   batches are lz4-compressed (the ``lz4`` package is a pinned dependency), gzip if configured.
5. **Failures are loud.** Delivery runs in kafka-python's background thread; every failure is
   recorded by an errback and raised as :class:`DeliveryFailed` by the next ``publish``,
   ``flush`` or ``close``. Nothing is dropped silently: leaving the ``with`` block flushes and
   raises if any report was not acknowledged.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from queuewatch.contract.codec import encode
from queuewatch.contract.report import QueueReport
from queuewatch.contract.schemas import QUEUE_REPORT, SchemaVersion, default_registry
from queuewatch.contract.validation import ReportInvalid, parse_json_report, validate_record
from queuewatch.errors import QueuewatchError
from queuewatch.kafka.security import (
    KafkaSecurity,
    RefusalLog,
    connection_hint,
    describe_failure,
)
from queuewatch.settings import CommonSettings, ProducerSettings

Compression = Literal["lz4", "gzip", "none"]

#: The idempotent producer keeps a partition's order only with at most 5 requests in flight.
MAX_IN_FLIGHT = 5
#: How long ``publish`` may block waiting for topic metadata or buffer space: long enough for a
#: broker that is starting, short enough that a wrong address fails within a minute.
MAX_BLOCK_MS = 60_000


class PublishError(QueuewatchError):
    """A report could not be handed to Kafka (no broker, no such topic, producer closed)."""


class DeliveryFailed(PublishError):
    """The broker did not acknowledge one or more reports; ``errors`` holds the causes."""

    def __init__(self, failed: int, errors: list[BaseException], topic: str) -> None:
        self.failed = failed
        self.errors = errors
        first = errors[0] if errors else None
        super().__init__(
            f"{failed} report(s) were not acknowledged by Kafka on topic {topic!r} "
            f"(first cause: {type(first).__name__}: {first}); they are not in the log: "
            "check the broker (`queuewatch status`) and publish them again "
            "(the same event_id makes a re-send harmless)"
        )


class ReportProducer:
    """Publishes queue reports to the reports topic; see the module docstring for guarantees."""

    def __init__(
        self,
        bootstrap: str,
        topic: str = "queue-reports",
        *,
        linger_ms: int = 20,
        batch_bytes: int = 262_144,
        compression: Compression = "lz4",
        delivery_timeout_s: float = 120.0,
        client_id: str = "queuewatch-producer",
        schema: SchemaVersion | None = None,
        clock_ms: Callable[[], int] | None = None,
        max_block_s: float = MAX_BLOCK_MS / 1000,
        security: KafkaSecurity | None = None,
    ) -> None:
        self.topic = topic
        self.bootstrap = bootstrap
        self.security = security or KafkaSecurity()
        # kafka-python only logs a refused login; this keeps it for our error messages.
        self._refusals = RefusalLog().attach()
        self._schema = schema or default_registry().latest(QUEUE_REPORT)
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []
        self._failed = 0
        self._reported = 0  # failures already raised to the caller
        self.published = 0
        self._max_block_s = max_block_s
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=bootstrap,
                client_id=client_id,
                acks="all",
                enable_idempotence=True,
                max_in_flight_requests_per_connection=MAX_IN_FLIGHT,
                compression_type=None if compression == "none" else compression,
                linger_ms=linger_ms,
                batch_size=batch_bytes,
                delivery_timeout_ms=int(delivery_timeout_s * 1000),
                max_block_ms=int(max_block_s * 1000),
                **self.security.kafka_python(),
            )
        except KafkaError as exc:
            self._refusals.detach()
            raise PublishError(
                describe_failure(bootstrap, self.security, exc, self._refusals)
            ) from exc
        except BaseException:
            self._refusals.detach()
            raise
        self._closed = False

    @classmethod
    def from_settings(
        cls,
        common: CommonSettings | None = None,
        producer: ProducerSettings | None = None,
        **overrides: Any,
    ) -> ReportProducer:
        """A producer configured from the environment (QUEUEWATCH_*)."""
        common = common or CommonSettings()
        producer = producer or ProducerSettings()
        kwargs: dict[str, Any] = {
            "linger_ms": producer.producer_linger_ms,
            "batch_bytes": producer.producer_batch_bytes,
            "compression": producer.producer_compression,
            "delivery_timeout_s": producer.producer_delivery_timeout_s,
            "max_block_s": producer.producer_max_block_s,
        }
        kwargs.update(overrides)
        kwargs.setdefault("security", KafkaSecurity.from_settings(common))
        return cls(common.kafka_bootstrap, common.reports_topic, **kwargs)

    # --- publishing ------------------------------------------------------------------------

    def publish(self, report: dict[str, Any] | QueueReport) -> None:
        """Validate one report and queue it for delivery; raise ReportInvalid if it breaks a rule.

        ``report`` is a typed :class:`QueueReport`, the JSON form (``observed_at`` an RFC 3339
        string) or an already-parsed record (``observed_at`` in UTC milliseconds). The
        future-time rule is checked against this machine's clock. Delivery is asynchronous:
        call :meth:`flush` to wait for it.
        """
        now_ms = self._clock_ms()
        if isinstance(report, QueueReport):
            report = report.to_record()
        if isinstance(report.get("observed_at"), str):
            record = parse_json_report(report, now_ms)
        else:
            record = report
            violations = validate_record(record, now_ms)
            if violations:
                raise ReportInvalid(violations)
        self.publish_raw(record["crossing_id"].encode(), encode(record, self._schema))

    def publish_raw(self, key: bytes | None, value: bytes) -> None:
        """Queue bytes as they are, without validation.

        For tools that must put what the contract rejects on the log (the simulator's invalid
        share, chaos tests) and for replaying dead letters; producers of reports use
        :meth:`publish`.
        """
        self._raise_failures()
        if self._closed:
            raise PublishError("the producer is closed; create a new ReportProducer")
        try:
            future = self._producer.send(self.topic, key=key, value=value)
        except KafkaTimeoutError as exc:
            if self._refusals.refusals:
                raise PublishError(
                    describe_failure(self.bootstrap, self.security, exc, self._refusals)
                ) from exc
            raise PublishError(
                f"Kafka at {self.bootstrap} did not give metadata or buffer space for topic "
                f"{self.topic!r} within {self._max_block_s:g} s ({exc}); check that the broker "
                "runs and the topic exists (`queuewatch topics`); " + connection_hint(self.security)
            ) from exc
        except KafkaError as exc:
            raise PublishError(f"Kafka refused the report: {type(exc).__name__}: {exc}") from exc
        future.add_errback(self._on_failure)
        self.published += 1

    def _on_failure(self, exc: BaseException) -> None:
        # Runs in kafka-python's sender thread: record, never raise here (it would be logged
        # and lost); the caller's thread raises on its next call.
        with self._lock:
            self._failed += 1
            if len(self._errors) < 10:
                self._errors.append(exc)

    def _raise_failures(self) -> None:
        with self._lock:
            failed, errors = self._failed, list(self._errors)
            new = failed - self._reported
            self._reported = failed
        if new:
            raise DeliveryFailed(new, errors, self.topic)

    @property
    def failed(self) -> int:
        """Reports whose delivery failed so far (raised or about to be)."""
        with self._lock:
            return self._failed

    # --- lifecycle -------------------------------------------------------------------------

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every queued report is acknowledged; raise DeliveryFailed if any was not."""
        if not self._closed:
            try:
                self._producer.flush(timeout=timeout_s)
            except KafkaTimeoutError as exc:
                raise PublishError(
                    f"reports were not acknowledged within {timeout_s} s ({exc}); the broker at "
                    f"{self.bootstrap} is slow or down: check `queuewatch status`"
                ) from exc
        self._raise_failures()

    def close(self, timeout_s: float | None = None) -> None:
        """Flush, then release the connection; raise DeliveryFailed if a report was lost."""
        if self._closed:
            self._raise_failures()
            return
        try:
            self.flush(timeout_s)
        finally:
            self._closed = True
            self._refusals.detach()
            self._producer.close(timeout=timeout_s)
        self._raise_failures()

    def __enter__(self) -> ReportProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        # Already failing: still try to deliver what was accepted, but let the first error win.
        with contextlib.suppress(QueuewatchError):
            self.close()


__all__ = ["DeliveryFailed", "PublishError", "ReportProducer"]
