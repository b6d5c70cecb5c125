"""The raw sink: ``queue-reports`` -> ``queue_reports``, every accepted report as one row.

Invalid or undecodable records are passed over: the aggregator dead-letters them, so a
second copy of that decision here would only disagree with it one day. Validation uses the
Kafka record's timestamp as "now", like the aggregator, so both accept the same reports.
"""

from __future__ import annotations

import logging
from typing import Any

from queuewatch.contract.codec import DecodeError, Decoder
from queuewatch.contract.report import FLAT_FIELDS, flat_values
from queuewatch.contract.schemas import QUEUE_REPORT, SchemaVersion, default_registry
from queuewatch.contract.validation import validate_record
from queuewatch.sinks.source import Message

log = logging.getLogger(__name__)

TABLE = "queue_reports"
#: The table is ``PARTITION BY toYYYYMM(observed_at)`` (0001_queue_reports.sql).
PARTITION_COLUMN = "observed_at"

#: Inserted columns, in row order: the report flattened as contract.report derives it from the
#: schema, then where the row came from; ingested_at and arrival_version are filled by ClickHouse.
COLUMNS: tuple[str, ...] = (*FLAT_FIELDS, "kafka_partition", "kafka_offset", "schema_fingerprint")


def report_row(record: dict[str, Any], message: Message, fingerprint_hex: str) -> list[Any]:
    """One queue_reports row from a decoded report; nested fields flattened."""
    row = flat_values(record)
    row += (message.partition, message.offset, fingerprint_hex)
    return row


class ReportTransform:
    """Kafka record -> queue_reports row, or None for what the aggregator dead-letters."""

    def __init__(self, reader: SchemaVersion | None = None) -> None:
        self.reader = reader or default_registry().latest(QUEUE_REPORT)
        self.decoder = Decoder(self.reader)

    def __call__(self, message: Message) -> list[Any] | None:
        """The row, or None when the record is not an accepted report."""
        if message.value is None:
            return None
        try:
            record, writer = self.decoder.read(message.value)
        except DecodeError as exc:
            log.debug(
                "skipping %s[%d]@%d: %s", message.topic, message.partition, message.offset, exc.code
            )
            return None
        if validate_record(record, now_ms=message.timestamp):
            log.debug(
                "skipping invalid report at %s[%d]@%d",
                message.topic,
                message.partition,
                message.offset,
            )
            return None
        return report_row(record, message, writer.fingerprint_hex)
