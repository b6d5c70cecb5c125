"""The commit protocol of every sink: nothing commits an offset before ClickHouse has its rows.

Each sink is a loop of checkpoints. One checkpoint:

1. **Poll** a batch from the sink's own consumer group, until it holds ``batch_rows`` records
   or its oldest record has waited ``batch_seconds`` (about 10,000 rows or 1 s).
2. **Transform** each record into a row; a record that is not one (undecodable or invalid)
   yields no row but its offset still belongs to the batch, so it is passed over once. A
   record the transform *rejects* (raises RecordRejected, or fails unexpectedly) becomes a
   dead letter of the batch instead.
3. **Write** the rows to ClickHouse with an ``insert_deduplication_token`` made from the
   topic ids and (topic, partition, first..last offset) ranges the batch covers. The writer
   may split the batch by the table's partition key (ClickHouse refuses an insert touching
   too many partitions); each part gets the batch token plus its place, so the parts too
   are deterministic. When ClickHouse refuses the *rows* (a value it cannot take), the
   batch is halved and each half written with a token of its own, down to the single rows
   at fault, which become dead letters: one bad row in 10,000 costs 27 inserts, not the
   batch. More refused rows than ``refused_rows_limit`` (1%) stop the sink instead.
4. **Send the batch's dead letters** and wait until the broker acknowledged every one.
5. **Only after ClickHouse accepted every part and the dead letters are durable, commit**
   per partition the offset after the last one of the batch.
6. **A failed write aborts the checkpoint without committing.** A retryable failure
   (ClickHouse down, timeouts, merges behind) pauses consumption, so memory stays one batch,
   and retries the same part with the same token after a capped exponential backoff,
   logging loudly; when the write succeeds, the next part or step 4 runs and consumption
   resumes. After ``max_attempts`` failures in a row, or at once for a fatal failure (say,
   an unknown table), it raises SinkAborted naming the partitions, the offsets, the error
   and what to do, still without committing: the process exits non-zero and is restarted,
   rather than retrying one batch forever.

Why this gives "exactly once in effect": a crash anywhere before step 5 leaves the offsets
uncommitted, so the next run reads the batch again and writes it again. Writing again is
harmless: each table is a ReplacingMergeTree whose version makes the rewritten row identical
to (or older than) the one already there, so no ``FINAL`` result changes; when the batch
boundaries happen to repeat, the deduplication token even drops the second insert whole.
The token names each topic's id (Kafka's topic UUID), not only its name: a topic deleted and
created again restarts its offsets at 0, and a token of names and offsets alone would then
repeat an old batch's token and have ClickHouse drop new rows as duplicates.

Why kafka-python with ``enable_auto_commit=False`` and not faust, which the aggregator uses:
faust acknowledges an event when the agent takes it from the stream and commits acknowledged
offsets on its own timer, so offsets can be committed before the batch holding those events
has reached ClickHouse; a crash in between would lose them. Here the commit is an explicit
call placed after the write.

A rebalance revokes the partitions a batch came from: the batch is dropped without commit
(whoever gets the partitions reads those records again from the last commit). Dead letters
sent in step 4 before a crash are sent again by the replay: at least once, and their headers
name the source partition and offset, so a reader can drop the repeats.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from queuewatch.clickhouse.exceptions import ClickHouseError, too_many_partitions
from queuewatch.sinks.exceptions import RecordRejected, SinkAborted
from queuewatch.sinks.source import Message, RecordSource

log = logging.getLogger(__name__)

Row = Sequence[Any]
#: Turns a Kafka record into a row, or None to pass it over (its offset is still committed);
#: raises RecordRejected for a record that must be dead-lettered instead.
Transform = Callable[[Message], Row | None]

#: Dead-letter code of a row ClickHouse refused on its own (found by halving the batch).
CLICKHOUSE_REFUSED = "clickhouse_refused"
#: Dead-letter code of a record whose transform raised something it did not mean to.
TRANSFORM_FAILED = "transform_failed"


class BatchWriter(Protocol):
    """Writes one batch of rows; raises ClickHouseError when refused."""

    def write(self, rows: list[Row], dedup_token: str) -> None:
        """Insert ``rows``; an insert repeating ``dedup_token`` may be dropped by ClickHouse."""
        ...


class DeadLetters(Protocol):
    """Where a sink puts the records it cannot write; KafkaDeadLetters is the real one."""

    def send(self, message: Message, code: str, reason: str) -> None:
        """Queue ``message`` (bytes untouched) with why it could not be written."""
        ...

    def flush(self) -> None:
        """Return once every queued letter is durable; raise SinkError if one is not."""
        ...


@dataclass(frozen=True)
class Letter:
    """A record of the batch that goes to the dead-letter topic, and why."""

    message: Message
    code: str
    reason: str


@dataclass
class Batch:
    """Rows waiting to be written, the records they came from, and the offsets they cover."""

    rows: list[Row] = field(default_factory=list)
    #: The record each row came from, index for index (to dead-letter a refused row).
    sources: list[Message] = field(default_factory=list)
    letters: list[Letter] = field(default_factory=list)
    ranges: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    topic_ids: dict[str, str] = field(default_factory=dict)
    records: int = 0
    started_at: float = 0.0

    def add(self, message: Message, row: Row | None, now: float) -> None:
        """Add one record (and its row, when it makes one)."""
        if self.records == 0:
            self.started_at = now
        self.records += 1
        if row is not None:
            self.rows.append(row)
            self.sources.append(message)
        key = (message.topic, message.partition)
        offset = message.offset
        span = self.ranges.get(key)
        if span is None:
            self.ranges[key] = (offset, offset)
            self.topic_ids.setdefault(message.topic, message.topic_id)
        elif not span[0] <= offset <= span[1]:  # offsets grow per partition: rarely taken
            self.ranges[key] = (min(span[0], offset), max(span[1], offset))

    def reject(self, message: Message, code: str, reason: str, now: float) -> None:
        """Add a record that makes no row but a dead letter."""
        self.add(message, None, now)
        self.letters.append(Letter(message, code, reason))

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

    def describe(self) -> str:
        """The batch's records for a person: ``topic[partition] offsets first-last, ...``."""
        return ", ".join(
            f"{topic}[{partition}] offsets {first}-{last}"
            for (topic, partition), (first, last) in sorted(self.ranges.items())
        )

    def dedup_token(self, table: str) -> str:
        """Deterministic token of the offset ranges: the same ranges give the same token.

        A batch covers several partitions, so the token names all of their ranges; it is
        hashed to stay short whatever the partition count. Each topic is named with its id
        too, so the same offsets of a re-created topic give another token.
        """
        spans = ";".join(
            f"{topic}@{self.topic_ids.get(topic, '')}:{partition}:{first}-{last}"
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
    dead_letters: int = 0
    #: monotonic time of the last commit after a write (metrics: the age of the last commit)
    last_commit_at: float | None = None


class _RowsRefused(Exception):
    """Internal: ClickHouse refused these rows for what they hold (halve and try again)."""

    def __init__(self, error: ClickHouseError) -> None:
        super().__init__(str(error))
        self.error = error


def advice(error: ClickHouseError) -> str:
    """What a person should do about ``error`` before restarting the sink."""
    if too_many_partitions(error.code, str(error)):
        return (
            "lower QUEUEWATCH_SINK_MAX_PARTITIONS_PER_INSERT to the server's "
            "max_partitions_per_insert_block"
        )
    if error.retryable:
        return (
            "check that ClickHouse is up and has room (its log says why it fails); raise "
            "QUEUEWATCH_SINK_WRITE_MAX_ATTEMPTS to let the sink wait longer"
        )
    return "fix the table or the settings the error names (`queuewatch migrate` applies the schema)"


def refused_rows_limit(rows: int) -> int:
    """Most rows of a batch that may be dead-lettered as refused before the sink stops.

    1% of the batch, at least 10: a few odd values are data; more is a table that no longer
    fits the rows (a changed column type), where every row would be dead-lettered.
    """
    return max(10, rows // 100)


#: How often a sink measures its lag (end offsets minus its positions): a request per
#: partition leader, so not on every poll.
LAG_EVERY_S = 5.0


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
        max_attempts: int = 60,
        dead_letters: DeadLetters | None = None,
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
        self.max_attempts = max(1, max_attempts)
        self.dead_letters = dead_letters
        self.stats = SinkStats()
        self._batch = Batch()
        self._generation = 0  # bumped when a rebalance drops the batch
        # Liveness (platform.liveness), read by the process's monitor thread: when the loop
        # last began a step, the input waiting (measured every LAG_EVERY_S from this thread,
        # which owns the consumer), and why a write is being retried, if it is.
        self.last_step_at = clock()
        self.lag: int | None = None
        self._lag_at = -LAG_EVERY_S
        self.retrying: str | None = None
        #: observes each flush's seconds (write, dead letters, commit) when metrics are on
        self.flush_seconds: Any = None

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
        """Steps 1-2 for one poll, then steps 3-6 when the batch is due."""
        now = self.last_step_at = self.clock()
        if now - self._lag_at >= LAG_EVERY_S:
            self._lag_at = now
            self._measure_lag()
        wait = self.batch_seconds
        if not self._batch.is_empty():
            wait = max(0.0, self._batch.started_at + self.batch_seconds - now)
        room = self.batch_rows - self._batch.records
        polled = self.source.poll(min(wait, 0.5), room)
        now = self.clock()
        for message in polled:
            self._transform(message, now)
        if self._batch.is_due(self.clock(), self.batch_rows, self.batch_seconds):
            self.flush(stop)

    def _measure_lag(self) -> None:
        try:
            self.lag = self.source.lag() + self._batch.records
        except Exception as exc:  # a broker that does not answer: the lag stays as it was
            log.debug("%s: lag not measured (%s)", self.name, exc)

    def _transform(self, message: Message, now: float) -> None:
        """Step 2 for one record polled at ``now``."""
        self.stats.records += 1
        try:
            row = self.transform(message)
        except RecordRejected as exc:  # step 2: the transform's own verdict
            self._batch.reject(message, exc.code, exc.reason, now)
            return
        except Exception as exc:  # a bug must not stop the projection on one record
            log.exception(
                "%s: transform failed on %s[%d]@%d; dead-lettering it",
                self.name,
                message.topic,
                message.partition,
                message.offset,
            )
            reason = f"{type(exc).__name__}: {exc}"
            self._batch.reject(message, TRANSFORM_FAILED, reason, now)
            return
        if row is None:
            self.stats.skipped += 1
        self._batch.add(message, row, now)

    def flush(self, stop: threading.Event) -> bool:
        """Steps 3-5: write the batch, dead-letter, then commit its offsets; False if aborted."""
        began = self.clock()
        batch, generation = self._batch, self._generation
        if batch.rows and not self._write_batch(batch, generation, stop):
            return False  # step 6: aborted without commit
        if generation != self._generation:
            return False  # revoked during the write: the new owner replays these offsets
        if batch.letters:
            self._send_letters(batch)  # step 4
        try:
            self.source.commit(batch.next_offsets())  # step 5
        except Exception as exc:  # a rebalance between write and commit: rows are in, and a
            # replay rewrites the same versions, so this costs only a re-read
            log.warning(
                "%s: commit after a successful write failed (%s); the records "
                "will be read and written again, which changes nothing",
                self.name,
                exc,
            )
        self.stats.batches += 1
        self.stats.last_commit_at = now = self.clock()
        if self.flush_seconds is not None:
            self.flush_seconds.observe(now - began)
        self.stats.rows_written += len(batch.rows) - sum(
            1 for letter in batch.letters if letter.code == CLICKHOUSE_REFUSED
        )
        self._batch = Batch()
        return True

    def _write_batch(self, batch: Batch, generation: int, stop: threading.Event) -> bool:
        """Step 3, halving the batch around rows ClickHouse refuses; False if abandoned."""
        token = batch.dedup_token(self.table)
        pending = [(0, len(batch.rows), token)]
        while pending:
            start, end, part_token = pending.pop()
            try:
                if not self._write_until_accepted(
                    batch, batch.rows[start:end], part_token, generation, stop
                ):
                    return False
            except _RowsRefused as refused:
                if end - start > 1:
                    mid = (start + end) // 2
                    whole = end - start == len(batch.rows)
                    log.log(
                        logging.WARNING if whole else logging.DEBUG,
                        "%s: ClickHouse refused %d rows of %s (%s); halving to find the rows "
                        "at fault",
                        self.name,
                        end - start,
                        batch.describe(),
                        refused.error,
                    )
                    # Tokens of the halves derive from the batch's: a replay halves the same
                    # way, so a half written before a crash is dropped as a repeat.
                    pending.append((mid, end, f"{token}:{mid}-{end}"))
                    pending.append((start, mid, f"{token}:{start}-{mid}"))
                    continue
                self._refused_row(batch, batch.sources[start], refused.error)
        return True

    def _refused_row(self, batch: Batch, message: Message, error: ClickHouseError) -> None:
        where = f"{message.topic}[{message.partition}]@{message.offset}"
        refused = 1 + sum(1 for letter in batch.letters if letter.code == CLICKHOUSE_REFUSED)
        if refused > refused_rows_limit(len(batch.rows)):
            # So many bad rows say the table changed, not the data: dead-lettering a whole
            # topic because of a migration would be worse than stopping.
            raise SinkAborted(
                f"{self.name}: ClickHouse refuses {refused} of the {len(batch.rows)} rows of "
                f"{batch.describe()} ({error}), more than bad data explains; no offset was "
                "committed. Check that the table matches the schema (`queuewatch migrate`), "
                "then restart the sink"
            )
        if self.dead_letters is None:
            raise SinkAborted(
                f"{self.name}: ClickHouse refuses the row of {where} ({error}) and this sink "
                f"has no dead-letter topic; no offset of {batch.describe()} was committed. "
                "Fix the row's producer or the table, then restart the sink"
            )
        log.error(
            "%s: ClickHouse refuses the row of %s (%s); dead-lettering it", self.name, where, error
        )
        batch.letters.append(Letter(message, CLICKHOUSE_REFUSED, str(error)))

    def _send_letters(self, batch: Batch) -> None:
        if self.dead_letters is None:
            first = batch.letters[0]
            raise SinkAborted(
                f"{self.name}: {len(batch.letters)} records of {batch.describe()} cannot be "
                f"written (first: {first.message.topic}[{first.message.partition}]@"
                f"{first.message.offset}, {first.code}: {first.reason}) and this sink has no "
                "dead-letter topic; nothing was committed. Fix them upstream, then restart"
            )
        for letter in batch.letters:
            self.dead_letters.send(letter.message, letter.code, letter.reason)
        self.dead_letters.flush()
        self.stats.dead_letters += len(batch.letters)
        log.warning(
            "%s: %d records of %s dead-lettered (%s)",
            self.name,
            len(batch.letters),
            batch.describe(),
            ", ".join(sorted({letter.code for letter in batch.letters})),
        )

    def _write_until_accepted(
        self,
        batch: Batch,
        rows: list[Row],
        token: str,
        generation: int,
        stop: threading.Event,
    ) -> bool:
        attempt = 0
        failing_since = 0.0
        try:
            while True:
                try:
                    self.writer.write(rows, token)  # step 3
                except ClickHouseError as exc:
                    self.stats.failed_writes += 1
                    if exc.refused_rows:
                        raise _RowsRefused(exc) from exc
                    if not exc.retryable:
                        raise SinkAborted(
                            f"{self.name}: ClickHouse refused a write of {len(rows)} rows for "
                            f"good ({exc}); no offset of {batch.describe()} was committed, so "
                            f"{advice(exc)}, then restart the sink to resume where it stopped"
                        ) from exc
                    attempt += 1
                    if attempt == 1:
                        failing_since = self.clock()
                        self.source.pause()
                    if attempt >= self.max_attempts:
                        raise SinkAborted(
                            f"{self.name}: ClickHouse failed {attempt} writes in a row over "
                            f"{self.clock() - failing_since:.0f} s (last: {exc}); no offset of "
                            f"{batch.describe()} was committed, so {advice(exc)}; the sink "
                            "stops so that its supervisor restarts it from those offsets"
                        ) from exc
                    delay = self.backoff.delay(attempt)
                    self.retrying = (
                        f"ClickHouse failed {attempt} writes in a row over "
                        f"{self.clock() - failing_since:.0f} s ({exc}); retrying, at most "
                        f"{self.max_attempts} attempts"
                    )
                    log.error(
                        "%s: ClickHouse write failed (attempt %d of %d, failing for %.0f s): "
                        "%s; consumption paused, %d rows held, offsets not committed; "
                        "retrying in %.1f s",
                        self.name,
                        attempt,
                        self.max_attempts,
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
            self.retrying = None
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
