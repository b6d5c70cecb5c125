"""Where the aggregator's state lives: the records of its changelog-backed table.

The table (faust's plain ``Table`` on the memory store, its changelog topic the only durable
copy) holds two kinds of records, both written to the changelog partition of the reports
partition they come from:

* a **state record** per crossing (key: the crossing id), the bytes of
  :mod:`queuewatch.aggregator.state_codec`, led by a *changed mark* when the state holds
  windows not emitted yet, so a restart finds them without parsing every record;
* a **position record** per reports partition (key ``\\0position/<partition>``, see
  :mod:`queuewatch.aggregator.checkpoint`): the first offset not durably applied, and the
  partition's clock there.

This module knows the keys and the bytes; *when* records are written is the caller's (the
checkpoint protocol in :mod:`queuewatch.aggregator.app`, the emission policy in
:mod:`queuewatch.aggregator.emission`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from queuewatch.aggregator import checkpoint
from queuewatch.aggregator.state import AggregationConfig, CrossingState
from queuewatch.aggregator.state_codec import decode_state, encode_state
from queuewatch.kafka.topics import MAX_RECORD_BYTES

TABLE_NAME = "crossing-state"
#: Largest state record (and so producer request) the aggregator writes: 16 MiB.
STATE_RECORD_MAX_BYTES = MAX_RECORD_BYTES
#: Written first in every state record, so a restart finds states with unsent windows
#: without parsing them all.
CHANGED_MARK = b'{"f":1,"chg":1,'
#: Table key of a reports partition's position record (see :mod:`checkpoint`); the NUL
#: keeps it apart from every crossing id.
POSITION_KEY = b"\x00position/%d"
#: A state record's head: watermark, one applied partition, and whether sealed (state_codec
#: writes these keys in this order), read without decoding the whole record.
_HEAD = re.compile(
    rb'"wm":(-?\d+),"n":\[[-\d,]*\],"applied":\[\[(\d+),-?\d+\]\](?:,"sealed":(-?\d+))?'
)


def encode(state: CrossingState, changed: bool) -> bytes:
    """The state record of ``state``; ``changed`` when it holds windows not emitted yet."""
    data = encode_state(state)
    # Mark states holding unsent windows (see CHANGED_MARK); '{"f":1,' is the prefix.
    return CHANGED_MARK + data[7:] if changed else data


class StateStore:
    """The table's records, read and written as crossing states and partition positions."""

    def __init__(self, table: Any, config: AggregationConfig) -> None:
        """``table`` is the faust ``Table`` (its ``data`` and ``send_changelog`` are used)."""
        self.table = table
        self.config = config

    # --- crossing states ----------------------------------------------------------------------

    def load(self, cid: str) -> CrossingState | None:
        """The durable state of crossing ``cid``, None when it has none."""
        data = self.table.data.get(cid.encode())
        return decode_state(data, self.config) if data else None

    def load_or_new(self, cid: str) -> CrossingState:
        """The durable state of crossing ``cid``, or a new one."""
        return self.load(cid) or CrossingState(cid, self.config)

    def size(self, state: CrossingState) -> int:
        """Bytes of the record ``state`` would be written as (for the bound)."""
        return len(encode(state, state.has_changes()))

    def put(self, partition: int, cid: str, data: bytes) -> Any:
        """Write a state record (:func:`encode`); returns the write to wait for (checkpoint)."""
        key = cid.encode()
        self.table.data[key] = data
        return self.table.send_changelog(partition, key, data, "raw", "raw")

    def write_if_changed(self, partition: int, state: CrossingState) -> Any | None:
        """Write ``state``'s unmarked record unless the table holds those bytes already."""
        key = state.crossing_id.encode()
        data = encode(state, False)
        if self.table.data.get(key) == data:
            return None
        self.table.data[key] = data
        return self.table.send_changelog(partition, key, data, "raw", "raw")

    def unsent(self, partitions: set[int], skip: Iterable[str]) -> Iterator[CrossingState]:
        """States of ``partitions`` whose records are marked changed, except crossings ``skip``."""
        skipped = set(skip)
        for key, data in list(self.table.data.items()):
            if not data or not data.startswith(CHANGED_MARK):
                continue
            cid = key.decode()
            if cid in skipped:
                continue
            state = decode_state(data, self.config)
            if set(state.applied) & partitions:
                yield state

    def quiet(self, clock_of: Any, owns: Any) -> Iterator[tuple[str, bytes, int]]:
        """``(crossing, record, partition)`` of unmarked, unsealed states idle for the horizon.

        ``clock_of(partition)`` is the partition's clock, ``owns(partition)`` whether this
        worker owns it; only the record's head is parsed.
        """
        horizon = self.config.dedup_horizon
        for key, data in list(self.table.data.items()):
            if not data or key.startswith(b"\x00") or data.startswith(CHANGED_MARK):
                continue  # positions; states with unsent windows (emitted first)
            head = _HEAD.search(data, 0, 4096)
            if head is None:
                continue  # offsets of several partitions (keyed wrongly once): kept
            watermark, partition = int(head[1]), int(head[2])
            if head[3] is not None and int(head[3]) == watermark:
                continue  # sealed already
            if not owns(partition):
                continue
            if clock_of(partition) - watermark < horizon:
                continue
            yield key.decode(), data, partition

    def decode(self, data: bytes) -> CrossingState:
        """A state from record bytes :meth:`quiet` returned."""
        return decode_state(data, self.config)

    # --- positions ----------------------------------------------------------------------------

    def position(self, partition: int) -> int | None:
        """The partition's durable position (first offset not applied), None if it has none."""
        data = self.table.data.get(POSITION_KEY % partition)
        return checkpoint.decode_position(data) if data else None

    def clock(self, partition: int) -> int | None:
        """The partition's clock in its position record, None if unknown."""
        data = self.table.data.get(POSITION_KEY % partition)
        return checkpoint.decode_clock(data) if data else None

    def write_position(self, partition: int, offset: int, clock: int | None) -> Any:
        """Write a position record; returns the write to wait for."""
        key = POSITION_KEY % partition
        data = checkpoint.encode_position(offset, clock)
        self.table.data[key] = data
        return self.table.send_changelog(partition, key, data, "raw", "raw")
