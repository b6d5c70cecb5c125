"""The commit protocol of every sink: nothing commits an offset before ClickHouse has its rows.

Each sink is a loop of checkpoints. One checkpoint:

1. **Poll** a batch from the sink's own consumer group, until it holds ``batch_rows`` records
   or its oldest record has waited ``batch_seconds`` (about 10,000 rows or 1 s).
2. **Transform** each record into a row; a record that is not one (undecodable or invalid)
   yields no row but its offset still belongs to the batch, so it is passed over once.
3. **Write** the rows to ClickHouse in one insert, with an ``insert_deduplication_token``
   made from the (topic, partition, first..last offset) ranges the batch covers.
4. **Only after ClickHouse accepted the insert, commit** per partition the offset after the
   last one of the batch.
5. **A failed write aborts the checkpoint without committing.** A retryable failure
   (ClickHouse down, timeouts, too many parts) pauses consumption, so memory stays one batch,
   and retries the same batch with the same token after a capped exponential backoff,
   logging loudly; when the write succeeds, step 4 runs and consumption resumes. A fatal
   failure (say, an unknown table) raises SinkAborted, still without committing.

Why this gives "exactly once in effect": a crash anywhere before step 4 leaves the offsets
uncommitted, so the next run reads the batch again and writes it again. Writing again is
harmless: each table is a ReplacingMergeTree whose version makes the rewritten row identical
to (or older than) the one already there, so no ``FINAL`` result changes; when the batch
boundaries happen to repeat, the deduplication token even drops the second insert whole.

Why kafka-python with ``enable_auto_commit=False`` and not faust, which the aggregator uses:
faust acknowledges an event when the agent takes it from the stream and commits acknowledged
offsets on its own timer, so offsets can be committed before the batch holding those events
has reached ClickHouse; a crash in between would lose them. Here the commit is an explicit
call placed after the write.

A rebalance revokes the partitions a batch came from: the batch is dropped without commit
(whoever gets the partitions reads those records again from the last commit).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from queuewatch.clickhouse.exceptions import ClickHouseError
from queuewatch.sinks.exceptions import SinkAborted
from queuewatch.sinks.source import Message, RecordSource

log = logging.getLogger(__name__)

Row = Sequence[Any]
#: Turns a Kafka record into a row, or None to pass it over (its offset is still committed).
Transform = Callable[[Message], Row | None]


class BatchWriter(Protocol):
    """Writes one batch of rows in one insert; raises ClickHouseError when refused."""

    def write(self, rows: list[Row], dedup_token: str) -> None:
        """Insert ``rows``; an insert repeating ``dedup_token`` may be dropped by ClickHouse."""
        ...


@dataclass
class Batch:
    """Rows waiting to be written, and the offset range per partition they cover."""

    rows: list[Row] = field(default_factory=list)
    ranges: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    records: int = 0
    started_at: float = 0.0

    def add(self, message: Message, row: Row | None, now: float) -> None:
        """Add one record (and its row, when it makes one)."""
        if self.records == 0:
            self.started_at = now
        self.records += 1
        if row is not None:
            self.rows.append(row)
        key = (message.topic, message.partition)
        first, last = self.ranges.get(key, (message.offset, message.offset))
        self.ranges[key] = (min(first, message.offset), max(last, message.offset))

    def is_empty(self) -> bool:
        """True when no record was added."""
        return self.records == 0

    def is_due(self, now: float, max_records: int, max_seconds: float) -> bool:
        """True when the batch is full or its oldest record has waited long enough."""
        if self.records == 0:
            return False
        return self.records >= max_records or now - self.started_at >= max_seconds

    def next_offsets(self) -> dict[tuple[str, int], int]:
        """The offsets to commit: one past the last record of each partition."""
        return {key: last + 1 for key, (_, last) in self.ranges.items()}

    def dedup_token(self, table: str) -> str:
        """Deterministic token of the offset ranges: the same ranges give the same token.

        A batch covers several partitions, so the token names all of their ranges; it is
        hashed to stay short whatever the partition count.
        """
        spans = ";".join(
            f"{topic}:{partition}:{first}-{last}"
            for (topic, partition), (first, last) in sorted(self.ranges.items())
        )
        digest = hashlib.sha256(f"{table}|{spans}".encode()).hexdigest()[:32]
        return f"{table}-{digest}"


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff: initial, doubling, never above ``maximum`` seconds."""

    initial: float = 0.5
    maximum: float = 10.0

    def delay(self, attempt: int) -> float:
        """Pause before retry number ``attempt`` (1 = the first retry)."""
        return float(min(self.maximum, self.initial * (2 ** max(0, attempt - 1))))


@dataclass
class SinkStats:
    """Counters a sink keeps for its logs and for tests."""

    records: int = 0
    rows_written: int = 0
    skipped: int = 0
    batches: int = 0
    failed_writes: int = 0


class Checkpointer:
    """Runs the numbered protocol of this module for one sink."""

    def __init__(
        self,
        name: str,
        source: RecordSource,
        writer: BatchWriter,
        transform: Transform,
        table: str,
        batch_rows: int = 10_000,
        batch_seconds: float = 1.0,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.source = source
        self.writer = writer
        self.transform = transform
        self.table = table
        self.batch_rows = batch_rows
        self.batch_seconds = batch_seconds
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.stats = SinkStats()
        self._batch = Batch()
        self._generation = 0  # bumped when a rebalance drops the batch

    def revoke(self) -> None:
        """Partitions were taken away: drop the uncommitted batch (it will be read again)."""
        if not self._batch.is_empty():
            log.warning(
                "%s: partitions revoked; dropping %d uncommitted records, which the new "
                "owner reads again from the last commit",
                self.name,
                self._batch.records,
            )
        self._batch = Batch()
        self._generation += 1

    def run(self, stop: threading.Event) -> None:
        """Checkpoint until ``stop`` is set, then write and commit what is left."""
        while not stop.is_set():
            self.step(stop)
        if not self._batch.is_empty():
            self.flush(stop)
        self.source.close()

    def step(self, stop: threading.Event) -> None:
        """Steps 1-2 for one poll, then steps 3-5 when the batch is due."""
        now = self.clock()
        wait = self.batch_seconds
        if not self._batch.is_empty():
            wait = max(0.0, self._batch.started_at + self.batch_seconds - now)
        room = self.batch_rows - self._batch.records
        for message in self.source.poll(min(wait, 0.5), room):
            row = self._transform(message)
            self._batch.add(message, row, self.clock())
        if self._batch.is_due(self.clock(), self.batch_rows, self.batch_seconds):
            self.flush(stop)

    def _transform(self, message: Message) -> Row | None:
        self.stats.records += 1
        row = self.transform(message)
        if row is None:
            self.stats.skipped += 1
        return row

    def flush(self, stop: threading.Event) -> bool:
        """Steps 3-5: write the batch, then commit its offsets; False when aborted."""
        batch, generation = self._batch, self._generation
        if batch.rows and not self._write_until_accepted(batch, generation, stop):
            return False  # step 5: aborted without commit
        if generation != self._generation:
            return False  # revoked during the write: the new owner replays these offsets
        try:
            self.source.commit(batch.next_offsets())  # step 4
        except Exception as exc:  # a rebalance between write and commit: rows are in, and a
            # replay rewrites the same versions, so this costs only a re-read
            log.warning(
                "%s: commit after a successful write failed (%s); the records "
                "will be read and written again, which changes nothing",
                self.name,
                exc,
            )
        self.stats.batches += 1
        self.stats.rows_written += len(batch.rows)
        self._batch = Batch()
        return True

    def _write_until_accepted(self, batch: Batch, generation: int, stop: threading.Event) -> bool:
        token = batch.dedup_token(self.table)
        attempt = 0
        failing_since = 0.0
        try:
            while True:
                try:
                    self.writer.write(batch.rows, token)  # step 3
                except ClickHouseError as exc:
                    self.stats.failed_writes += 1
                    if not exc.retryable:
                        raise SinkAborted(
                            f"{self.name}: ClickHouse refused a batch of {len(batch.rows)} rows "
                            f"for good ({exc}); no offset was committed, so fix the cause and "
                            "restart the sink to resume where it stopped"
                        ) from exc
                    attempt += 1
                    if attempt == 1:
                        failing_since = self.clock()
                        self.source.pause()
                    delay = self.backoff.delay(attempt)
                    log.error(
                        "%s: ClickHouse write failed (attempt %d, failing for %.0f s): %s; "
                        "consumption paused, %d rows held, offsets not committed; retrying "
                        "in %.1f s",
                        self.name,
                        attempt,
                        self.clock() - failing_since,
                        exc,
                        len(batch.rows),
                        delay,
                    )
                    if not self._wait(delay, stop):
                        log.error(
                            "%s: stopping while ClickHouse fails: the held batch is not "
                            "committed and will be read again on restart",
                            self.name,
                        )
                        return False
                    if generation != self._generation:
                        return False
                    continue
                if attempt:
                    log.warning(
                        "%s: ClickHouse accepted the batch after %d failed attempts over "
                        "%.0f s; resuming consumption",
                        self.name,
                        attempt,
                        self.clock() - failing_since,
                    )
                return True
        finally:
            if attempt:
                self.source.resume()

    def _wait(self, delay: float, stop: threading.Event) -> bool:
        """Sleep ``delay`` while keeping the group membership alive; False if stopping."""
        deadline = self.clock() + delay
        while not stop.is_set():
            remaining = deadline - self.clock()
            if remaining <= 0:
                return True
            # Paused: this poll returns nothing but keeps this member in its group, and
            # re-pauses partitions a rebalance may have handed over meanwhile.
            self.source.pause()
            stray = self.source.poll(min(remaining, 0.5), 100)
            if stray:
                # Only when a rebalance handed over new, unpaused partitions inside this
                # poll: their records were not processed, so read them again later.
                self.source.rewind(stray)
        return False
