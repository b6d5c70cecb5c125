"""Decode and validate a batch of raw Kafka messages; everything else becomes a dead letter.

Bad input never stops the aggregator: a payload that does not decode, a record that breaks a
rule, or a report keyed by something else than its ``crossing_id`` is sent to the dead-letter
topic with its original key and bytes untouched and headers saying why and where it came
from, so a person can fix and replay it. A letter too large for the dead-letter topic is
sent truncated, with the original's size and SHA-256 (:func:`fit_letter`): a send that can
never succeed would replay its batch forever.
"""

from __future__ import annotations

import hashlib
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
#: On a truncated letter only: the original value's length and SHA-256 (hex).
H_ORIGINAL_BYTES = "queuewatch.original.bytes"
H_ORIGINAL_SHA256 = "queuewatch.original.sha256"

#: Error code of a record that decodes but breaks a validation rule.
INVALID_REPORT = "invalid_report"
#: Error code of a valid report whose Kafka key is not its ``crossing_id``: it may sit on
#: another partition than the crossing's other reports, and two workers would then each keep a
#: state for the crossing (the changelog's recovery order would pick one, losing reports).
KEY_MISMATCH = "key_mismatch"
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


def letter_bytes(letter: DeadLetter) -> int:
    """Key, value and header bytes of a letter: what the producer's size check counts."""
    size = len(letter.key or b"") + len(letter.value or b"")
    return size + sum(len(name) + len(value) for name, value in letter.headers)


def fit_letter(letter: DeadLetter, max_bytes: int) -> DeadLetter:
    """The letter, or a copy whose value is cut to fit ``max_bytes`` (see the module doc).

    The copy keeps the value's first bytes and says what was cut: the original's length and
    SHA-256 in headers, next to the source topic, partition and offset, where the whole
    original still is.
    """
    value = letter.value or b""
    if letter_bytes(letter) <= max_bytes:
        return letter
    headers = [
        *letter.headers,
        (H_ORIGINAL_BYTES, str(len(value)).encode()),
        (H_ORIGINAL_SHA256, hashlib.sha256(value).hexdigest().encode()),
    ]
    rest = letter_bytes(DeadLetter(letter.key, b"", headers, letter.code))
    return DeadLetter(letter.key, value[: max(0, max_bytes - rest)], headers, letter.code)


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
        crossing_id = record["crossing_id"]
        if msg.key != crossing_id.encode():
            dead.append(
                dead_letter(
                    msg,
                    KEY_MISMATCH,
                    f"the message key is {msg.key!r}, the report's crossing_id {crossing_id!r}; "
                    "publish it keyed by its crossing_id (queuewatch publish does)",
                )
            )
            continue
        accepted.append(Accepted(record, msg.partition, msg.offset))
    return accepted, dead
