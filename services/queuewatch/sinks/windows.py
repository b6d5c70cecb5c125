"""The window sink: ``crossing-windows`` -> ``crossing_windows``, one row per version.

The aggregator writes these records, so a record that does not decode is a bug upstream or
a newer schema than this sink knows (an aggregator upgraded first). Passing it over would
lose a window update nothing re-emits; stopping would stop every other window too. So it
becomes a dead letter, bytes kept, with the decoder's reason: upgrade the sink and replay it.
"""

from __future__ import annotations

import logging
from typing import Any

from queuewatch.contract.codec import DecodeError, Decoder
from queuewatch.contract.schemas import CROSSING_WINDOW, SchemaVersion, default_registry
from queuewatch.sinks.exceptions import RecordRejected
from queuewatch.sinks.source import Message

log = logging.getLogger(__name__)

TABLE = "crossing_windows"
#: The table is ``PARTITION BY toYYYYMM(window_start)`` (0002_crossing_windows.sql).
PARTITION_COLUMN = "window_start"


def window_columns(schema: SchemaVersion | None = None) -> tuple[str, ...]:
    """The table's columns: the fields of crossing_window.avsc, in order."""
    schema = schema or default_registry().latest(CROSSING_WINDOW)
    return tuple(str(f["name"]) for f in schema.raw["fields"])


class WindowTransform:
    """Kafka record -> crossing_windows row (the Avro record's values in field order).

    The row is decoded straight into a tuple (``Decoder(as_row=True)``), no dict between:
    whatever fields a later window or pane schema has, its fields are the table's columns.
    """

    def __init__(self, reader: SchemaVersion | None = None) -> None:
        self.reader = reader or default_registry().latest(CROSSING_WINDOW)
        self.columns = window_columns(self.reader)
        self.decoder = Decoder(self.reader, as_row=True)

    def __call__(self, message: Message) -> tuple[Any, ...] | None:
        """The row; None for an empty record; RecordRejected for one that does not decode."""
        if message.value is None:
            return None
        try:
            row: tuple[Any, ...] = self.decoder(message.value)
        except DecodeError as exc:
            log.error(
                "record %s[%d]@%d does not decode (%s); dead-lettering it",
                message.topic,
                message.partition,
                message.offset,
                exc,
            )
            raise RecordRejected(exc.code, str(exc)) from exc
        return row
