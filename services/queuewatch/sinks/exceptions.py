"""Errors of the sinks."""

from __future__ import annotations

from queuewatch.errors import QueuewatchError


class SinkError(QueuewatchError):
    """A sink cannot go on; its uncommitted offsets are replayed by the next run."""


class SinkAborted(SinkError):
    """ClickHouse refused a batch for a reason retrying cannot fix (a fatal ClickHouse error).

    Nothing was committed for the batch, so fixing the cause and restarting the sink
    resumes exactly where it stopped.
    """


class SinkKafkaError(SinkError):
    """The sink's consumer cannot reach Kafka, or Kafka refused its login."""
