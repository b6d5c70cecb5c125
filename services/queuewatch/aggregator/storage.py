"""Where the aggregator's state lives: the records of its changelog-backed table.

The table (faust's plain ``Table`` on the memory store, its changelog topic the only durable
copy) holds, all in the changelog partition of the reports partition they come from:

* a **head** per crossing (key: the crossing id; :func:`state_codec.encode_head`): counters,
  ``seq``, watermark, applied offsets, sealing, the unsent windows' marks and snapshots. It is
  led by a *changed mark* when the state holds windows not emitted yet, so a restart finds
  them without parsing every record;
* a **contribution** per accepted report within the dedup horizon (key: crossing id, NUL,
  event id): what it put into the panes. Panes are rebuilt from these on load
  (:func:`state_codec.rebuild`) and never stored;
* the **base** of a crossing upgraded from format 1 (key ``\0base/<crossing>``): its old
  whole-state record, until all of it is past the horizon;
* a **position record** per reports partition (key ``\0position/<partition>``, see
  :mod:`queuewatch.aggregator.checkpoint`): the first offset not durably applied, and the
  partition's clock there.

A batch writes what it changed (:meth:`StateStore.write`): the contributions of the reports
it accepted, then the head, in this order, in one partition; records it made obsolete
(event ids past the horizon, a sealed crossing's) are deleted only once the head that
forgets them is durable (:meth:`StateStore.commit`), with the next writes. Why a crash
between any two of these writes changes nothing is in docs/architecture.md (atomicity).

This module knows the keys and the bytes; *when* records are written is the caller's (the
checkpoint protocol in :mod:`queuewatch.aggregator.app`, the emission policy in
:mod:`queuewatch.aggregator.emission`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from queuewatch.aggregator import checkpoint
from queuewatch.aggregator.state import AggregationConfig, CrossingState
from queuewatch.aggregator.state_codec import (
    FORMAT_VERSION,
    decode_state,
    encode_contribution,
    encode_head,
    format_of,
    rebuild,
)
from queuewatch.kafka.topics import MAX_RECORD_BYTES

TABLE_NAME = "crossing-state"
#: Largest state record (and so producer request) the aggregator writes: 16 MiB.
STATE_RECORD_MAX_BYTES = MAX_RECORD_BYTES
#: Written first in every head, so a restart finds states with unsent windows without
#: parsing them all (the format-1 mark is still recognised, for an upgrade).
CHANGED_MARK = b'{"f":2,"chg":1,'
_CHANGED_MARK_V1 = b'{"f":1,"chg":1,'
#: Table key of a reports partition's position record (see :mod:`checkpoint`); the NUL
#: keeps it apart from every crossing id.
POSITION_KEY = b"\x00position/%d"
#: Key prefix of a format-1 record kept as a crossing's base after an upgrade.
BASE_KEY = b"\x00base/"
#: Between a crossing id (a slug: no NUL) and an event id in a contribution's key.
SEP = b"\x00"
#: A head's watermark, one applied partition, and whether sealed (state_codec writes these
#: keys in this order in both formats), read without decoding the whole record.
_HEAD = re.compile(
    rb'"wm":(-?\d+),"n":\[[-\d,]*\],"applied":\[\[(\d+),-?\d+\]\](?:,"sealed":(-?\d+))?'
)


def encode(state: CrossingState, changed: bool, batch: tuple[int, int] | None = None) -> bytes:
    """The head record of ``state``; ``changed`` when it holds windows not emitted yet."""
    data = encode_head(state, batch)
    # Mark states holding unsent windows (see CHANGED_MARK); '{"f":2,' is the prefix.
    return CHANGED_MARK + data[7:] if changed else data


class StateStore:
    """The table's records, read and written as crossing states and partition positions."""

    def __init__(self, table: Any, config: AggregationConfig) -> None:
        """``table`` is the faust ``Table`` (its ``data``; records to send go to ``outbox``)."""
        self.table = table
        self.config = config
        #: changelog records ``(partition, key, value or None for a delete)`` to send, in
        #: order; the caller sends them (:meth:`take`) and waits for them (checkpoint)
        self.outbox: list[tuple[int, bytes, bytes | None]] = []
        #: crossing id -> keys of its contributions, built from the table on first use after
        #: a recovery (:meth:`invalidate`), kept up to date by our own writes
        self._index: dict[str, set[bytes]] | None = None
        #: per partition, records to delete before anything else is written there: obsolete
        #: under a durable head, or written by a batch whose head never became durable
        self._due: dict[int, list[bytes]] = {}
        #: per partition, records obsolete under heads being written (due once durable)
        self._staged: dict[int, list[bytes]] = {}
        #: format-1 records read, to keep as the crossing's base at its first write
        self._upgrading: dict[str, tuple[bytes, int]] = {}

    # --- the index ----------------------------------------------------------------------------

    def invalidate(self) -> None:
        """The table was restored from the changelog (a recovery): rebuild the index."""
        self._index = None

    @property
    def index(self) -> dict[str, set[bytes]]:
        """Crossing id -> its contribution keys, for every crossing with a head or one."""
        index = self._index
        if index is None:
            index = self._index = {}
            for key in list(self.table.data):
                if key.startswith(SEP):
                    continue  # positions, bases
                at = key.find(SEP)
                if at < 0:
                    index.setdefault(key.decode(), set())
                else:
                    index.setdefault(key[:at].decode(), set()).add(key)
        return index

    # --- crossing states ----------------------------------------------------------------------

    def load(self, cid: str) -> CrossingState | None:
        """The durable state of crossing ``cid``, None when it has none."""
        data = self.table.data.get(cid.encode())
        return self.decode(cid, data) if data else None

    def load_or_new(self, cid: str) -> CrossingState:
        """The durable state of crossing ``cid``, or a new one."""
        return self.load(cid) or CrossingState(cid, self.config)

    def decode(self, cid: str, data: bytes) -> CrossingState:
        """The state whose head (or format-1 record) is ``data``, from the table's records."""
        if format_of(data) == FORMAT_VERSION:
            state = decode_state(data, self.config)
            if state.dedup or state.lanes:
                self._upgrading[cid] = (data, state.watermark)
            return state
        tdata = self.table.data
        keys = self.index.get(cid, set())
        cut = len(cid) + 1
        contributions = {key[cut:].decode(): tdata[key] for key in keys if key in tdata}
        base = tdata.get(BASE_KEY + cid.encode())
        out = rebuild(data, contributions, base, self.config)
        state = out.state
        if len(state.applied) == 1 and (out.dead or out.unfinished or out.base_dead):
            (partition,) = state.applied
            prefix = cid.encode() + SEP
            # Unfinished ones go before any write (the replay rewrites them); dead ones are
            # dead under this durable head: deleting them now is safe too.
            due = self._due.setdefault(partition, [])
            for event_id in out.unfinished + out.dead:
                key = prefix + event_id.encode()
                due.append(key)
                self._forget(cid, key)
            if out.base_dead:
                key = BASE_KEY + cid.encode()
                due.append(key)
                tdata.pop(key, None)
        return state

    def _forget(self, cid: str, key: bytes) -> None:
        self.table.data.pop(key, None)
        keys = self.index.get(cid)
        if keys is not None:
            keys.discard(key)

    def size(self, state: CrossingState) -> int:
        """Bytes of the head ``state`` would be written as (for the bound)."""
        return len(encode(state, state.has_changes()))

    def take(self) -> list[tuple[int, bytes, bytes | None]]:
        """The records written since the last call, in the order they must be sent."""
        out, self.outbox = self.outbox, []
        return out

    def write(self, partition: int, state: CrossingState, changed: bool) -> None:
        """Write what changed in ``state`` since its last write (to :attr:`outbox`).

        In order: records due for deletion in the partition, the base (the first write after
        an upgrade), the contributions of the reports accepted since, the head. Records the
        new head makes obsolete are staged for deletion (:meth:`commit`).
        """
        cid = state.crossing_id
        ckey = cid.encode()
        tdata = self.table.data
        out = self.outbox
        self.send_due(partition)
        upgrade = self._upgrading.pop(cid, None)
        if upgrade is not None and state.base is None:
            old, state.base = upgrade
            base_key = BASE_KEY + ckey
            tdata[base_key] = old
            out.append((partition, base_key, old))
        keys = self.index.setdefault(cid, set())
        prefix = ckey + SEP
        dedup = state.dedup
        written: dict[str, bytes] = {}
        first = state.seq
        for c in state.added:
            event_id = c[0]
            if dedup.get(event_id) != c[1]:
                continue  # forgotten again in the same batch (or re-accepted later in it)
            key = prefix + event_id.encode()
            data = encode_contribution(c)
            written[event_id] = key
            tdata[key] = data
            keys.add(key)
            first = min(first, c[2] - 1)
            out.append((partition, key, data))
        state.added = []
        staged = self._staged.setdefault(partition, [])
        for event_id in state.removed:
            if event_id in written:
                continue  # written again above: the new value replaces the old
            key = prefix + event_id.encode()
            if key in tdata:  # else never written (a format-1 base's id, or added and gone)
                staged.append(key)
                tdata.pop(key, None)
                keys.discard(key)
        state.removed = []
        if state.base is not None and state.base <= max(
            state.sealed, state.watermark - self.config.dedup_horizon
        ):
            state.base = None  # everything in the base is past the horizon now
            staged.append(BASE_KEY + ckey)
            tdata.pop(BASE_KEY + ckey, None)
        head = encode(state, changed, (first, len(written)))
        tdata[ckey] = head
        out.append((partition, ckey, head))

    def write_if_changed(self, partition: int, state: CrossingState) -> bool:
        """Write ``state``'s unmarked head (and what changed) unless nothing would change."""
        data = encode(state, False)
        if (
            self.table.data.get(state.crossing_id.encode()) == data
            and not state.added
            and not state.removed
        ):
            return False
        self.write(partition, state, False)
        return True

    def commit(self) -> None:
        """The writes made so far are durable: their obsolete records may now be deleted."""
        for partition, keys in self._staged.items():
            if keys:
                self._due.setdefault(partition, []).extend(keys)
        self._staged = {}

    def has_due(self) -> bool:
        """True when records are waiting to be deleted."""
        return any(self._due.values())

    def abandon(self) -> None:
        """The writes made since the last :meth:`commit` failed: delete nothing for them.

        Their obsolete records stay in the changelog until a load finds them dead.
        """
        self._staged = {}

    def send_due(self, partition: int | None = None) -> None:
        """Delete the records due for deletion (in ``partition``, or everywhere)."""
        if partition is None:
            parts = list(self._due)
        else:
            parts = [partition] if self._due.get(partition) else []
        out = self.outbox
        for p in parts:
            out.extend((p, key, None) for key in self._due.pop(p, []))

    def forget_partitions(self, partitions: set[int]) -> None:
        """Revoked partitions: their new owner deletes what is obsolete (it finds it on load)."""
        for partition in partitions:
            self._due.pop(partition, None)
            self._staged.pop(partition, None)

    def unsent(self, partitions: set[int], skip: Iterable[str]) -> Iterator[CrossingState]:
        """States of ``partitions`` whose heads are marked changed, except crossings ``skip``."""
        skipped = set(skip)
        tdata = self.table.data
        for cid in list(self.index):
            if cid in skipped:
                continue
            data = tdata.get(cid.encode())
            if not data or not data.startswith((CHANGED_MARK, _CHANGED_MARK_V1)):
                continue
            head = _HEAD.search(data, 0, 4096)
            if head is not None and int(head[2]) not in partitions:
                continue
            state = self.decode(cid, data)
            if set(state.applied) & partitions:
                yield state

    def quiet(
        self, clock_of: Callable[[int], int], owns: Callable[[int], bool]
    ) -> Iterator[tuple[str, bytes, int]]:
        """``(crossing, head, partition)`` of unmarked, unsealed states idle for the horizon.

        ``clock_of(partition)`` is the partition's clock, ``owns(partition)`` whether this
        worker owns it; only the head's first keys are parsed.
        """
        horizon = self.config.dedup_horizon
        tdata = self.table.data
        for cid in list(self.index):
            data = tdata.get(cid.encode())
            if not data or data.startswith((CHANGED_MARK, _CHANGED_MARK_V1)):
                continue  # no head (contributions only, being deleted); unsent windows first
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
            yield cid, data, partition

    # --- positions ----------------------------------------------------------------------------

    def position(self, partition: int) -> int | None:
        """The partition's durable position (first offset not applied), None if it has none."""
        data = self.table.data.get(POSITION_KEY % partition)
        return checkpoint.decode_position(data) if data else None

    def clock(self, partition: int) -> int | None:
        """The partition's clock in its position record, None if unknown."""
        data = self.table.data.get(POSITION_KEY % partition)
        return checkpoint.decode_clock(data) if data else None

    def write_position(self, partition: int, offset: int, clock: int | None) -> None:
        """Write a position record (to :attr:`outbox`)."""
        key = POSITION_KEY % partition
        data = checkpoint.encode_position(offset, clock)
        self.table.data[key] = data
        self.outbox.append((partition, key, data))
