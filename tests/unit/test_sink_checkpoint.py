"""The commit protocol (queuewatch.sinks.checkpoint) step by step, against in-memory doubles of
its own two interfaces (RecordSource, BatchWriter); Kafka and ClickHouse themselves are
exercised in tests/integration and tests/chaos."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from queuewatch.clickhouse.exceptions import ClickHouseError
from queuewatch.sinks.checkpoint import Backoff, Batch, Checkpointer
from queuewatch.sinks.exceptions import RecordRejected, SinkAborted
from queuewatch.sinks.source import Message


class FakeClock:
    """Time that moves only when told (and a little on every poll)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MemorySource:
    """Records of one topic, polled in order; every call is appended to ``events``."""

    def __init__(self, messages: list[Message], clock: FakeClock, events: list[str]) -> None:
        self.pending = list(messages)
        self.clock = clock
        self.events = events
        self.committed: dict[tuple[str, int], int] = {}
        self.paused = False
        self.closed = False

    def poll(self, timeout_s: float, max_records: int) -> list[Message]:
        self.clock.now += max(timeout_s, 0.01)
        if self.paused:
            return []
        out, self.pending = self.pending[:max_records], self.pending[max_records:]
        return out

    def commit(self, next_offsets: dict[tuple[str, int], int]) -> None:
        self.events.append(f"commit {sorted(next_offsets.items())}")
        self.committed.update(next_offsets)

    def pause(self) -> None:
        if not self.paused:
            self.events.append("pause")
        self.paused = True

    def resume(self) -> None:
        self.events.append("resume")
        self.paused = False

    def rewind(self, messages: list[Message]) -> None:
        self.pending = list(messages) + self.pending

    def lag(self) -> int:
        return len(self.pending)

    def close(self) -> None:
        self.closed = True


class MemoryWriter:
    """Accepts batches, or fails with the queued errors first."""

    def __init__(self, events: list[str], failures: Sequence[ClickHouseError] = ()) -> None:
        self.events = events
        self.failures = list(failures)
        self.batches: list[tuple[list[Any], str]] = []

    def write(self, rows: list[Any], dedup_token: str) -> None:
        if self.failures:
            self.events.append("write failed")
            raise self.failures.pop(0)
        self.events.append(f"write {len(rows)}")
        self.batches.append((list(rows), dedup_token))


def messages(n: int, partition: int = 0, start: int = 0) -> list[Message]:
    return [Message("t", partition, start + i, 0, f"v{start + i}".encode()) for i in range(n)]


def keep_all(message: Message) -> list[Any]:
    return [message.offset]


def make(
    msgs: list[Message],
    failures: Sequence[ClickHouseError] = (),
    batch_rows: int = 10,
    transform: Any = keep_all,
) -> tuple[Checkpointer, MemorySource, MemoryWriter, list[str]]:
    events: list[str] = []
    clock = FakeClock()
    source = MemorySource(msgs, clock, events)
    writer = MemoryWriter(events, failures)
    cp = Checkpointer(
        "test-sink",
        source,
        writer,
        transform,
        table="db.t",
        batch_rows=batch_rows,
        batch_seconds=1.0,
        backoff=Backoff(0.5, 2.0),
        clock=clock,
    )
    return cp, source, writer, events


OUTAGE = ClickHouseError("connection refused", 210, "NETWORK_ERROR", retryable=True)
FATAL = ClickHouseError("no such table", 60, "UNKNOWN_TABLE", retryable=False)


def test_full_batch_is_written_before_its_offsets_are_committed() -> None:
    cp, source, _writer, events = make(messages(10))
    cp.step(threading.Event())
    assert events == ["write 10", "commit [(('t', 0), 10)]"]
    assert source.committed == {("t", 0): 10}


def test_partial_batch_waits_until_batch_seconds_then_flushes() -> None:
    cp, source, writer, _events = make(messages(3))
    stop = threading.Event()
    cp.step(stop)  # polls 3 records; 0.5 s pass
    assert writer.batches == []
    assert source.committed == {}
    for _ in range(3):
        cp.step(stop)
    assert [rows for rows, _ in writer.batches] == [[[0], [1], [2]]]
    assert source.committed == {("t", 0): 3}


def test_fatal_write_error_aborts_without_offset_commit() -> None:
    cp, source, _writer, events = make(messages(10), failures=[FATAL])
    with pytest.raises(SinkAborted, match="UNKNOWN_TABLE"):
        cp.step(threading.Event())
    assert source.committed == {}
    assert not any(e.startswith("commit") for e in events)


def test_retryable_failure_pauses_retries_same_token_then_commits_and_resumes() -> None:
    cp, source, writer, events = make(messages(10), failures=[OUTAGE, OUTAGE, OUTAGE])
    cp.step(threading.Event())
    assert events == [
        "write failed",
        "pause",
        "write failed",
        "write failed",
        "write 10",
        "resume",
        "commit [(('t', 0), 10)]",
    ]
    assert len(writer.batches) == 1
    assert cp.stats.failed_writes == 3
    assert source.committed == {("t", 0): 10}


def test_stop_while_clickhouse_fails_commits_nothing() -> None:
    cp, source, _writer, _events = make(messages(10), failures=[OUTAGE] * 100)
    stop = threading.Event()
    stop.set()
    for m in source.poll(0.0, 10):
        cp._batch.add(m, [m.offset], 0.0)
    assert cp.flush(stop) is False
    assert source.committed == {}


def test_records_without_a_row_are_committed_without_a_write() -> None:
    cp, source, writer, _events = make(messages(10), transform=lambda m: None)
    cp.step(threading.Event())
    assert writer.batches == []
    assert source.committed == {("t", 0): 10}
    assert cp.stats.skipped == 10


def test_skipped_record_between_rows_is_covered_by_the_commit() -> None:
    cp, source, writer, _ = make(messages(10), transform=lambda m: None if m.offset == 4 else [1])
    cp.step(threading.Event())
    assert len(writer.batches[0][0]) == 9
    assert source.committed == {("t", 0): 10}


def test_revoke_drops_the_uncommitted_batch() -> None:
    cp, source, writer, _ = make(messages(3))
    stop = threading.Event()
    cp.step(stop)
    cp.revoke()
    for _ in range(4):
        cp.step(stop)
    assert writer.batches == []
    assert source.committed == {}


def test_revoke_during_an_outage_abandons_the_retry_without_commit() -> None:
    cp, source, writer, _ = make(messages(10), failures=[OUTAGE] * 5)
    original_wait = cp._wait

    def wait_then_revoke(delay: float, stop: threading.Event) -> bool:
        cp.revoke()
        return original_wait(delay, stop)

    cp._wait = wait_then_revoke  # type: ignore[method-assign]
    cp.step(threading.Event())
    assert writer.batches == []
    assert source.committed == {}
    assert source.paused is False


def test_run_flushes_the_last_batch_on_stop_and_closes_the_source() -> None:
    cp, source, writer, _ = make(messages(25))
    stop = threading.Event()
    for _ in range(3):
        cp.step(stop)
    stop.set()
    cp.run(stop)
    assert sum(len(rows) for rows, _ in writer.batches) == 25
    assert source.committed == {("t", 0): 25}
    assert source.closed


def test_batch_commits_one_past_the_last_offset_of_each_partition() -> None:
    batch = Batch()
    for m in messages(3, partition=0, start=7) + messages(2, partition=5, start=100):
        batch.add(m, [m.offset], 0.0)
    assert batch.next_offsets() == {("t", 0): 10, ("t", 5): 102}


def test_dedup_token_is_the_same_for_the_same_ranges_in_any_order() -> None:
    a, b = Batch(), Batch()
    for m in messages(3, 0) + messages(3, 1):
        a.add(m, [1], 0.0)
    for m in messages(3, 1) + messages(3, 0):
        b.add(m, [1], 5.0)
    assert a.dedup_token("db.t") == b.dedup_token("db.t")


def test_dedup_token_differs_when_a_range_differs() -> None:
    a, b = Batch(), Batch()
    for m in messages(3, 0):
        a.add(m, [1], 0.0)
    for m in messages(4, 0):
        b.add(m, [1], 0.0)
    assert a.dedup_token("db.t") != b.dedup_token("db.t")
    assert a.dedup_token("db.t") != a.dedup_token("db.other")


def test_batch_is_due_when_full_or_old_enough() -> None:
    batch = Batch()
    assert not batch.is_due(100.0, 2, 1.0)
    batch.add(messages(1)[0], None, 10.0)
    assert not batch.is_due(10.5, 2, 1.0)
    assert batch.is_due(11.0, 2, 1.0)
    batch.add(messages(1, start=1)[0], None, 10.6)
    assert batch.is_due(10.6, 2, 1.0)


def test_backoff_doubles_from_initial_and_is_capped() -> None:
    backoff = Backoff(0.5, 10.0)
    assert [backoff.delay(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


class MemoryLetters:
    """Dead letters kept in memory; every flush is an event."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.sent: list[tuple[int, str]] = []

    def send(self, message: Message, code: str, reason: str) -> None:
        self.sent.append((message.offset, code))

    def flush(self) -> None:
        self.events.append(f"letters {len(self.sent)}")


class RefusingWriter(MemoryWriter):
    """Refuses, for what they hold, any insert containing one of the ``bad`` offsets."""

    def __init__(self, events: list[str], bad: set[int]) -> None:
        super().__init__(events)
        self.bad = bad
        self.attempts = 0

    def write(self, rows: list[Any], dedup_token: str) -> None:
        self.attempts += 1
        if any(row[0] in self.bad for row in rows):
            raise REFUSED
        super().write(rows, dedup_token)


REFUSED = ClickHouseError("bad value", 53, "TYPE_MISMATCH", retryable=False, refused_rows=True)


def with_letters(cp: Checkpointer, events: list[str]) -> MemoryLetters:
    letters = MemoryLetters(events)
    cp.dead_letters = letters
    return letters


def test_retryable_failures_stop_after_max_attempts_naming_offsets_without_commit() -> None:
    cp, source, _writer, _events = make(messages(10, partition=4, start=20), failures=[OUTAGE] * 9)
    cp.max_attempts = 5
    with pytest.raises(SinkAborted) as raised:
        cp.step(threading.Event())
    text = str(raised.value)
    assert "5 writes in a row" in text and "NETWORK_ERROR" in text
    assert "t[4] offsets 20-29" in text
    assert "QUEUEWATCH_SINK_WRITE_MAX_ATTEMPTS" in text
    assert source.committed == {}


def test_fatal_error_message_names_the_partition_offsets_and_what_to_do() -> None:
    cp, source, _writer, _events = make(messages(10, partition=2, start=5), failures=[FATAL])
    with pytest.raises(SinkAborted) as raised:
        cp.step(threading.Event())
    assert "t[2] offsets 5-14" in str(raised.value)
    assert "queuewatch migrate" in str(raised.value)
    assert source.committed == {}


def test_refused_row_is_isolated_dead_lettered_and_the_rest_written_before_commit() -> None:
    events: list[str] = []
    clock = FakeClock()
    source = MemorySource(messages(16), clock, events)
    writer = RefusingWriter(events, bad={11})
    cp = Checkpointer("s", source, writer, keep_all, "db.t", batch_rows=16, clock=clock)
    letters = with_letters(cp, events)
    cp.step(threading.Event())
    written = sorted(row[0] for rows, _ in writer.batches for row in rows)
    assert written == [i for i in range(16) if i != 11]
    assert letters.sent == [(11, "clickhouse_refused")]
    assert events[-2:] == ["letters 1", "commit [(('t', 0), 16)]"]
    assert writer.attempts <= 2 * 4 + 1  # halving: about 2 log2(16) inserts, not 16
    tokens = [token for _, token in writer.batches]
    assert len(set(tokens)) == len(tokens)  # every half has a token of its own


def test_halving_gives_the_same_tokens_on_a_replay() -> None:
    def run() -> list[str]:
        events: list[str] = []
        clock = FakeClock()
        writer = RefusingWriter(events, bad={3, 6})
        cp = Checkpointer(
            "s", MemorySource(messages(8), clock, events), writer, keep_all, "db.t", 8, clock=clock
        )
        with_letters(cp, events)
        cp.step(threading.Event())
        return [token for _, token in writer.batches]

    assert run() == run()


def test_refused_row_without_a_dead_letter_topic_aborts_naming_its_offset() -> None:
    events: list[str] = []
    clock = FakeClock()
    source = MemorySource(messages(4), clock, events)
    cp = Checkpointer(
        "s", source, RefusingWriter(events, bad={2}), keep_all, "db.t", 4, clock=clock
    )
    with pytest.raises(SinkAborted, match=r"t\[0\]@2"):
        cp.step(threading.Event())
    assert source.committed == {}


def test_record_the_transform_rejects_is_dead_lettered_before_the_commit() -> None:
    def transform(message: Message) -> list[Any]:
        if message.offset == 1:
            raise RecordRejected("unknown_fingerprint", "schema 0xab is not known")
        if message.offset == 2:
            raise KeyError("a bug")
        return [message.offset]

    cp, _source, writer, events = make(messages(4), batch_rows=4, transform=transform)
    letters = with_letters(cp, events)
    cp.step(threading.Event())
    assert [rows for rows, _ in writer.batches] == [[[0], [3]]]
    assert letters.sent == [(1, "unknown_fingerprint"), (2, "transform_failed")]
    assert events == ["write 2", "letters 2", "commit [(('t', 0), 4)]"]


def test_dedup_token_differs_for_the_same_offsets_of_another_topic_incarnation() -> None:
    old, new = Batch(), Batch()
    for m in messages(3):
        old.add(Message(m.topic, 0, m.offset, 0, m.value, topic_id="id-1"), [1], 0.0)
        new.add(Message(m.topic, 0, m.offset, 0, m.value, topic_id="id-2"), [1], 0.0)
    assert old.dedup_token("db.t") != new.dedup_token("db.t")


def test_a_batch_with_more_refused_rows_than_bad_data_explains_stops_without_commit() -> None:
    events: list[str] = []
    clock = FakeClock()
    source = MemorySource(messages(40), clock, events)
    writer = RefusingWriter(events, bad=set(range(0, 40, 3)))  # 14 of 40: over the 10 allowed
    cp = Checkpointer("s", source, writer, keep_all, "db.t", batch_rows=40, clock=clock)
    letters = with_letters(cp, events)
    with pytest.raises(SinkAborted, match="refuses 11 of the 40 rows"):
        cp.step(threading.Event())
    assert source.committed == {}
    assert letters.sent == []
