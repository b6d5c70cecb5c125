"""Decode and validate a batch of raw Kafka messages; everything else becomes a dead letter.

Bad input never stops the aggregator: a payload that does not decode, or a record that breaks
a rule, is sent to the dead-letter topic with its original key and bytes untouched and
headers saying why and where it came from, so a person can fix and replay it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from queuewatch.contract.codec import DecodeError, decode
from queuewatch.contract.schemas import QUEUE_REPORT, SchemaVersion, default_registry
from queuewatch.contract.validation import validate_record

#: Header names on a dead letter (values are UTF-8 bytes).
H_CODE = "queuewatch.error.code"
H_MESSAGE = "queuewatch.error.message"
H_TOPIC = "queuewatch.source.topic"
H_PARTITION = "queuewatch.source.partition"
H_OFFSET = "queuewatch.source.offset"

#: Error code of a record that decodes but breaks a validation rule.
INVALID_REPORT = "invalid_report"
#: Longest error message put in a header (a record can break many rules at once).
_MAX_MESSAGE = 2000


@dataclass(frozen=True, slots=True)
class RawMessage:
    """What intake needs of a Kafka message; independent of the client library."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid report and where it sits in the log."""

    record: dict[str, Any]
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message for the dead-letter topic: original key and value, headers explaining why."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    code: str


def dead_letter(msg: RawMessage, code: str, message: str) -> DeadLetter:
    """Wrap a rejected message, keeping its own headers first."""
    headers = list(msg.headers)
    headers += [
        (H_CODE, code.encode()),
        (H_MESSAGE, message[:_MAX_MESSAGE].encode("utf-8", "replace")),
        (H_TOPIC, msg.topic.encode()),
        (H_PARTITION, str(msg.partition).encode()),
        (H_OFFSET, str(msg.offset).encode()),
    ]
    return DeadLetter(msg.key, msg.value, headers, code)


def reader_schema() -> SchemaVersion:
    """The newest QueueReport schema: every known writer version is read into it."""
    return default_registry().latest(QUEUE_REPORT)


def intake(
    messages: Iterable[RawMessage], reader: SchemaVersion
) -> tuple[list[Accepted], list[DeadLetter]]:
    """Split a batch into valid reports (in order) and dead letters."""
    accepted: list[Accepted] = []
    dead: list[DeadLetter] = []
    for msg in messages:
        try:
            record = decode(msg.value or b"", reader)
        except DecodeError as exc:
            dead.append(dead_letter(msg, exc.code, str(exc)))
            continue
        violations = validate_record(record, now_ms=msg.timestamp_ms)
        if violations:
            text = "; ".join(str(v) for v in violations)
            dead.append(dead_letter(msg, INVALID_REPORT, text))
            continue
        accepted.append(Accepted(record, msg.partition, msg.offset))
    return accepted, dead
