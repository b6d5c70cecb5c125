"""Errors of the sinks."""

from __future__ import annotations

from queuewatch.errors import QueuewatchError


class SinkError(QueuewatchError):
    """A sink cannot go on; its uncommitted offsets are replayed by the next run."""


class SinkAborted(SinkError):
    """A batch cannot be written: ClickHouse refused it for good, or kept failing too long.

    Nothing was committed for the batch, so fixing the cause and restarting the sink
    resumes exactly where it stopped.
    """


class RecordRejected(SinkError):
    """A transform's verdict: this record makes no row and goes to the dead-letter topic.

    ``code`` is the dead letter's reason code (e.g. ``unknown_fingerprint``), ``reason`` the
    text a person reads in its headers.
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class SinkKafkaError(SinkError):
    """The sink's consumer cannot reach Kafka, or Kafka refused its login."""
