"""Read, explain and re-publish dead letters (`queuewatch dlq list|show|republish`).

A dead letter keeps the original key, value and headers, then says why and where from
(``aggregator/intake.py``, ``sinks/dead_letters.py``). Once the cause is fixed (say the
reader lacked a schema file), a letter goes back to the reports topic with its original key
and one header more, :data:`H_REPUBLISHED_FROM`, naming the letter (``dlq-topic/partition/offset``).

Counting once. Within the dedup horizon the aggregator drops a repeated ``event_id`` and the
raw table keeps one row per ``(crossing_id, event_id)`` under FINAL. Past the horizon a second
copy would count again in the windows, so a letter is re-published at most once: before
sending, the reports topic is read from the oldest selected letter's time on (a re-published
copy is always newer than its letter) and every letter named by a link header there is
refused, with the reason. The check and the send are not one transaction: two operators
re-publishing the same letter at the same second could both pass it; one operator at a time.
Only letters whose original came from the reports topic go back there: a window sink's letter
holds a ``crossing-windows`` record, a poison report in ``queue-reports``.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from queuewatch.aggregator.intake import H_CODE, H_MESSAGE, H_OFFSET, H_PARTITION, H_TOPIC
from queuewatch.errors import QueuewatchError
from queuewatch.kafka.security import KafkaSecurity

#: Header a re-published report carries: the letter it came from, ``topic/partition/offset``.
H_REPUBLISHED_FROM = "queuewatch.republished.from"
#: Header of the sinks' letters naming the stage (the aggregator's carry none).
H_STAGE = "queuewatch.error.stage"
#: Headers a dead letter adds; a re-published report leaves them behind.
LETTER_HEADERS = frozenset({H_CODE, H_MESSAGE, H_TOPIC, H_PARTITION, H_OFFSET, H_STAGE})
#: How long one poll may wait for the broker before the read counts as done.
POLL_TIMEOUT_MS = 1000
#: Empty polls in a row before a read that has not reached the end gives up (a broker gone).
MAX_IDLE_POLLS = 30


class DlqError(QueuewatchError):
    """A dead-letter command cannot do what it was asked (the message says what to do)."""


@dataclass(frozen=True)
class Letter:
    """One dead letter as read from the dead-letter topic."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @property
    def ref(self) -> str:
        """The letter's id on the command line: ``partition:offset``."""
        return f"{self.partition}:{self.offset}"

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` as text, or None."""
        found = [v for k, v in self.headers if k == name]
        return found[-1].decode("utf-8", "replace") if found else None

    @property
    def reason(self) -> str:
        """The error code (``unknown_fingerprint``, ``invalid_report``...)."""
        return self.header(H_CODE) or "?"

    @property
    def source(self) -> str:
        """Where the original was: ``topic[partition]@offset``."""
        return (
            f"{self.header(H_TOPIC) or '?'}[{self.header(H_PARTITION) or '?'}]"
            f"@{self.header(H_OFFSET) or '?'}"
        )

    def original_headers(self) -> list[tuple[str, bytes]]:
        """The headers the original message had (those before the letter's own)."""
        return [(k, v) for k, v in self.headers if k not in LETTER_HEADERS]


def link(dlq_topic: str, letter: Letter) -> str:
    """The value of :data:`H_REPUBLISHED_FROM` for ``letter``."""
    return f"{dlq_topic}/{letter.partition}/{letter.offset}"


def printable(data: bytes | None, limit: int) -> str:
    """The first ``limit`` bytes as text, unprintable bytes as ``.``: a preview for a list."""
    if data is None:
        return "(null)"
    shown = "".join(chr(b) if chr(b) in _PRINTABLE else "." for b in data[:limit])
    return shown + ("..." if len(data) > limit else "")


_PRINTABLE = set(string.ascii_letters + string.digits + string.punctuation + " ")


def hexdump(data: bytes, width: int = 16) -> list[str]:
    """``offset  hex bytes  text`` lines, the classic dump a person can read a payload with."""
    lines = []
    for start in range(0, len(data), width):
        chunk = data[start : start + width]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        lines.append(f"{start:08x}  {hexes:<{width * 3}} {printable(chunk, width)}")
    return lines


def select(
    letters: Sequence[Letter], reason: str | None = None, offset: int = 0, limit: int | None = None
) -> list[Letter]:
    """The letters with ``reason`` (all without), from the ``offset``-th, at most ``limit``."""
    chosen = [x for x in letters if reason is None or x.reason == reason]
    end = None if limit is None else offset + limit
    return chosen[offset:end]


def find(letters: Sequence[Letter], ref: str) -> Letter:
    """The letter named ``ref``: ``partition:offset``, or N for the N-th of the list (from 1)."""
    if ":" in ref:
        try:
            partition, offset = (int(part) for part in ref.split(":", 1))
        except ValueError:
            raise DlqError(f"{ref!r} is not PARTITION:OFFSET (e.g. 0:12) nor a number") from None
        for x in letters:
            if (x.partition, x.offset) == (partition, offset):
                return x
        raise DlqError(f"no dead letter at {ref}; `queuewatch dlq list` shows their ids")
    try:
        index = int(ref)
    except ValueError:
        raise DlqError(f"{ref!r} is not PARTITION:OFFSET (e.g. 0:12) nor a number") from None
    if not 1 <= index <= len(letters):
        raise DlqError(f"there are {len(letters)} dead letters; N runs from 1 to {len(letters)}")
    return letters[index - 1]


def refused(
    letters: Iterable[Letter], dlq_topic: str, reports_topic: str, links: set[str]
) -> dict[str, str]:
    """Letter ref -> why it must not be re-published (already was, was cut, not a report)."""
    out: dict[str, str] = {}
    for x in letters:
        if x.header(H_TOPIC) != reports_topic:
            # A window sink's letter holds a crossing-windows record: in the reports topic it
            # would be a poison report. Its fix is a sink that reads it (docs/operations.md).
            out[x.ref] = (
                f"its original came from {x.header(H_TOPIC)!r}, not {reports_topic}; only "
                "reports go back to the reports topic"
            )
        elif x.header(H_STAGE) is not None:
            # A sink's letter of a report: the aggregator accepted that report and counted it
            # in its windows; sent again it would count twice once past the dedup horizon.
            # Only its ClickHouse row is missing: fix the table and replay that sink.
            out[x.ref] = (
                f"the {x.header(H_STAGE)} sink wrote it: the aggregator already counted it, so "
                "re-publishing would count it twice; fix ClickHouse and replay that sink "
                "(docs/operations.md)"
            )
        elif link(dlq_topic, x) in links:
            out[x.ref] = f"already re-published (a report in the log links to {link(dlq_topic, x)})"
        elif x.header("queuewatch.original.bytes") is not None:
            out[x.ref] = (
                "the letter holds only the first bytes of a larger original; re-publish the "
                f"original at {x.source} instead"
            )
        elif x.value is None:
            out[x.ref] = "the letter has no value to re-publish"
    return out


# --- Kafka I/O -----------------------------------------------------------------------------


def _consumer(bootstrap: str, security: KafkaSecurity) -> Any:
    from kafka import KafkaConsumer

    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id="queuewatch-dlq",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **security.kafka_python(),
    )


def _read(consumer: Any, topic: str, since_ms: int | None = None) -> list[Any]:
    """Every record of ``topic`` up to its end now (from ``since_ms`` on when given)."""
    from kafka import TopicPartition

    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise DlqError(f"topic {topic} does not exist; create it with `queuewatch topics`")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    ends = consumer.end_offsets(tps)
    starts = consumer.beginning_offsets(tps)
    if since_ms is not None:
        found = consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
        starts = {tp: (found[tp].offset if found.get(tp) else ends[tp]) for tp in tps}
    for tp in tps:
        consumer.seek(tp, starts[tp])
    records: list[Any] = []
    pending = {tp for tp in tps if starts[tp] < ends[tp]}
    idle = 0
    while pending:
        batch = consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=10_000)
        for tp, got in batch.items():
            records.extend(r for r in got if r.offset < ends[tp])
        pending = {tp for tp in pending if consumer.position(tp) < ends[tp]}
        idle = 0 if batch else idle + 1
        if pending and idle >= MAX_IDLE_POLLS:
            raise DlqError(
                f"reading {topic} stopped short of its end ({len(pending)} partitions unread "
                f"after {MAX_IDLE_POLLS} empty polls); check the broker (`queuewatch status`) "
                "and run the command again"
            )
    return records


def read_letters(bootstrap: str, dlq_topic: str, security: KafkaSecurity) -> list[Letter]:
    """Every letter of the dead-letter topic, oldest first (time, then partition and offset)."""
    consumer = _consumer(bootstrap, security)
    try:
        records = _read(consumer, dlq_topic)
    finally:
        consumer.close()
    letters = [
        Letter(r.partition, r.offset, r.timestamp, r.key, r.value, tuple(r.headers or ()))
        for r in records
    ]
    return sorted(letters, key=lambda x: (x.timestamp_ms, x.partition, x.offset))


def republished_links(
    bootstrap: str, reports_topic: str, since_ms: int, security: KafkaSecurity
) -> set[str]:
    """The letters named by link headers in the reports topic from ``since_ms`` on."""
    consumer = _consumer(bootstrap, security)
    try:
        records = _read(consumer, reports_topic, since_ms)
    finally:
        consumer.close()
    return {
        value.decode("utf-8", "replace")
        for r in records
        for name, value in (r.headers or ())
        if name == H_REPUBLISHED_FROM
    }


def republish(
    bootstrap: str,
    reports_topic: str,
    dlq_topic: str,
    letters: Sequence[Letter],
    security: KafkaSecurity,
) -> tuple[list[Letter], dict[str, str]]:
    """Send the letters not refused back to ``reports_topic``; (sent, refused ref -> why).

    Each goes with its original key, value and headers plus the link header, through an
    idempotent acks=all producer, flushed before this returns.
    """
    from kafka import KafkaProducer

    if not letters:
        return [], {}
    since = min(x.timestamp_ms for x in letters)
    links = republished_links(bootstrap, reports_topic, since, security)
    why = refused(letters, dlq_topic, reports_topic, links)
    chosen = [x for x in letters if x.ref not in why]
    if not chosen:
        return [], why
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="queuewatch-dlq-republish",
        acks="all",
        enable_idempotence=True,
        **security.kafka_python(),
    )
    try:
        futures = [
            producer.send(
                reports_topic,
                key=x.key,
                value=x.value,
                headers=[*x.original_headers(), (H_REPUBLISHED_FROM, link(dlq_topic, x).encode())],
            )
            for x in chosen
        ]
        producer.flush(timeout=60)
        for future in futures:
            future.get(timeout=60)
    except Exception as exc:
        raise DlqError(
            f"re-publishing to {reports_topic} failed ({exc}); run the same command again: "
            "letters already sent are refused then, the others go"
        ) from exc
    finally:
        producer.close(timeout=60)
    return chosen, why
