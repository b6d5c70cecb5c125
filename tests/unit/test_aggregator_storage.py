"""The state written incrementally (format 2) reads back exactly, after any crash (storage).

The reference is a crossing state that never leaves memory; the subject is written after
every batch and read back from the table's records. They must agree on everything windows
are made of (panes, event ids, dirty marks, snapshots, counters, watermark, sealing), also
when a crash keeps only part of a batch's writes, and when the table held a format-1 record.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queuewatch.aggregator.state import AggregationConfig, CrossingState
from queuewatch.aggregator.state_codec import StateFormatError, encode_state
from queuewatch.aggregator.storage import BASE_KEY, SEP, StateStore

HOUR = 3_600_000
MINUTE = 60_000
T0 = 1_663_977_600_000  # 2022-09-24T00:00:00Z
CONFIG = AggregationConfig.from_spec("1h:1h:5m,3h:3h:15m,24h:24h:1h", "2h")
CID = "ge-ru-verkhny-lars"


class Table:
    """faust's table as the store uses it (``data``), and the changelog records sent."""

    def __init__(self, data: dict[bytes, bytes] | None = None) -> None:
        self.data: dict[bytes, bytes] = dict(data or {})
        self.sent: list[tuple[int, bytes, bytes | None]] = []

    def ship(self, store: StateStore) -> None:
        """Send the store's outbox, as the app does after every write."""
        self.sent += store.take()


def restored(sent: list[tuple[int, bytes, bytes | None]]) -> dict[bytes, bytes]:
    """What a recovery from these changelog records puts in the table (tombstones delete)."""
    data: dict[bytes, bytes] = {}
    for _, key, value in sent:
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def report(rng: random.Random, t: int, n: int) -> dict[str, Any]:
    return {
        "event_id": f"e{n}" if rng.random() > 0.05 else f"e{rng.randrange(n + 1)}",
        "crossing_id": CID,
        "from_country": "RU",
        "to_country": "GE",
        "traffic_class": rng.choice(["car", "truck"]),
        "observed_at": t,
        "source": {"type": "crowd", "name": f"s{rng.randrange(4)}", "url": None},
        "wait_minutes": rng.choice([None, 0, rng.randrange(3000)]),
        "queue_vehicles": rng.choice([None, rng.randrange(500)]),
        "queue_length_km": rng.choice([None, rng.random() * 9]),
        "status": rng.choice(["open", "unknown", "closed"]),
    }


#: A silence of the crossing while its partition goes on: it is sealed, then wakes up.
SILENCE = 30 * HOUR


def stream(rng: random.Random, count: int, minutes_per_report: int) -> list[dict[str, Any]]:
    """Reports a little out of order, some late (some past the grace), some re-sent, and
    the :data:`SILENCE` in the middle (see :func:`apply`)."""
    out = []
    t = T0
    for n in range(count):
        t += minutes_per_report * MINUTE
        if n == count // 2:
            t += SILENCE
        out.append(report(rng, t - rng.randrange(3 * HOUR), n))
    return out


def view(state: CrossingState) -> dict[str, Any]:
    """Everything windows are made of; lanes without panes or marks are nothing."""
    lanes = {}
    for lane_key, lane in state.lanes.items():
        fams = [
            (sorted((p, pane.to_obj()) for p, pane in fs.panes.items()), sorted(fs.dirty.items()))
            for fs in lane
        ]
        if any(panes or dirty for panes, dirty in fams):
            lanes[lane_key] = fams
    c = state.counters
    return {
        "seq": state.seq,
        "wm": state.watermark,
        "sealed": state.sealed,
        "applied": state.applied,
        "n": (c.accepted, c.duplicates, c.late),  # replays are counted where they happen
        "dedup": list(state.dedup.items()),
        "lanes": lanes,
        "snap": state.snapshots,
    }


def windows(state: CrossingState) -> list[dict[str, Any]]:
    """The changed windows, in key order (which lane comes first carries no meaning)."""
    rows = state.take_changed()
    return sorted(rows, key=lambda r: (r["traffic_class"], r["window_size"], r["window_start"]))


def apply(state: CrossingState, records: list[dict[str, Any]], offsets: range, clock: int) -> int:
    """Apply like the app does (seal when idle first); returns the partition clock after.

    Other crossings of the partition move its clock on through the silence.
    """
    for record, offset in zip(records, offsets, strict=True):
        if record["observed_at"] - clock > SILENCE // 2:
            clock = record["observed_at"] - 1
        if offset > state.applied.get(0, -1):
            state.seal_if_idle(clock)
        state.apply(record, 0, offset)
        clock = max(clock, record["observed_at"])
    return clock


def write(store: StateStore, state: CrossingState) -> None:
    store.write(0, state, state.has_changes())
    store.table.ship(store)
    store.commit()


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 30), st.integers(2, 45))
def test_a_state_written_after_every_batch_reads_back_exactly(
    seed: int, batch: int, minutes_per_report: int
) -> None:
    rng = random.Random(seed)
    records = stream(rng, 400, minutes_per_report)
    reference = CrossingState(CID, CONFIG)
    table = Table()
    store = StateStore(table, CONFIG)
    state = CrossingState(CID, CONFIG)
    clock = ref_clock = -(2**62)
    for start in range(0, len(records), batch):
        chunk = records[start : start + batch]
        offsets = range(start, start + len(chunk))
        ref_clock = apply(reference, chunk, offsets, ref_clock)
        clock = apply(state, chunk, offsets, clock)
        write(store, state)
        if rng.random() < 0.3:  # windows emitted, then the unmarked head written again
            assert windows(state) == windows(reference)
            store.write_if_changed(0, state)
            table.ship(store)
            store.commit()
        if rng.random() < 0.2:  # a restart: recovery restores the table from the changelog
            log = table.sent
            table = Table(restored(log))
            table.sent = log  # the changelog goes on
            store = StateStore(table, CONFIG)
        state = store.load_or_new(CID)  # every batch starts from the records
        assert view(state) == view(reference), start
    assert reference.sealed != -(2**62)  # the silence sealed it, and it woke up again
    store.send_due()  # what the flush timer does when traffic stops
    table.ship(store)
    deleted = sum(value is None for _, _, value in table.sent)
    assert deleted > 0  # event ids past the horizon were deleted from the changelog
    live = [k for k in restored(table.sent) if SEP in k and not k.startswith(SEP)]
    assert len(live) == len(reference.dedup)  # and no record of a forgotten id is left


@pytest.mark.parametrize("seed", range(4))
def test_a_crash_between_any_two_writes_of_a_batch_replays_to_the_same_state(seed: int) -> None:
    """Each prefix of a batch's writes is what a crash may leave; the replay repairs it."""
    rng = random.Random(seed)
    records = stream(rng, 120, 7)
    table = Table()
    store = StateStore(table, CONFIG)
    state = CrossingState(CID, CONFIG)
    clock = apply(state, records[:80], range(80), -(2**62))
    write(store, state)
    durable = list(table.sent)
    reference = store.load_or_new(CID)
    apply(reference, records[80:], range(80, 120), clock)
    apply(state, records[80:], range(80, 120), clock)  # the batch that crashes
    store.write(0, state, state.has_changes())
    table.ship(store)
    batch = table.sent[len(durable) :]
    assert len(batch) > 3
    for cut in range(len(batch) + 1):
        crashed = Table(restored(durable + batch[:cut]))
        again = StateStore(crashed, CONFIG).load_or_new(CID)
        apply(again, records[80:], range(80, 120), clock)  # from the position record
        assert view(again) == view(reference), cut


def test_a_head_durable_without_a_report_record_of_its_batch_is_refused() -> None:
    """Only a write failing after a later one succeeded leaves this; say so, do not guess."""
    rng = random.Random(3)
    table = Table()
    store = StateStore(table, CONFIG)
    state = CrossingState(CID, CONFIG)
    apply(state, stream(rng, 10, 5), range(10), -(2**62))
    write(store, state)
    data = restored(table.sent)
    del data[next(k for k in data if SEP in k and not k.startswith(SEP))]
    with pytest.raises(StateFormatError, match="QUEUEWATCH_AGGREGATOR_GROUP"):
        StateStore(Table(data), CONFIG).load(CID)


def test_a_format_1_record_is_read_on_upgrade_and_kept_as_base_until_past_the_horizon() -> None:
    rng = random.Random(5)
    records = stream(rng, 300, 4)
    reference = CrossingState(CID, CONFIG)
    clock = apply(reference, records[:100], range(100), -(2**62))
    old = encode_state(reference)  # what the previous release left in the table
    table = Table({CID.encode(): old})
    store = StateStore(table, CONFIG)
    state = store.load_or_new(CID)
    assert view(state) == view(reference)
    ref_clock = clock
    for start in range(100, 300, 10):
        offsets = range(start, start + 10)
        ref_clock = apply(reference, records[start : start + 10], offsets, ref_clock)
        clock = apply(state, records[start : start + 10], offsets, clock)
        write(store, state)
        if start == 100:
            assert table.data[BASE_KEY + CID.encode()] == old
        state = StateStore(Table(restored(table.sent)), CONFIG).load_or_new(CID)
        assert view(state) == view(reference), start
    assert reference.watermark - 100 * 4 * MINUTE > CONFIG.dedup_horizon  # base all past it
    assert (0, BASE_KEY + CID.encode(), None) in table.sent  # and so it was deleted


def test_a_busy_crossing_writes_under_a_kilobyte_per_report() -> None:
    """10 reports a minute for 30 h, one per batch: format 1 rewrote about 1 MiB each time."""
    rng = random.Random(11)
    table = Table()
    store = StateStore(table, CONFIG)
    state = CrossingState(CID, CONFIG)
    clock = -(2**62)
    count = 30 * 60 * 10
    for n in range(count):
        record = report(rng, T0 + n * 6_000, n)
        record["event_id"] = f"{rng.getrandbits(128):032x}"  # UUID-sized ids
        clock = apply(state, [record], range(n, n + 1), clock)
        write(store, state)
        if n % 10 == 0:  # the flush interval: windows emitted, head unmarked
            state.take_changed()
            store.write_if_changed(0, state)
            table.ship(store)
            store.commit()
    written = sum(len(k) + len(v or b"") for _, k, v in table.sent)
    assert written / count < 1024, written / count
