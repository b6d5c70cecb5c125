"""Each partition's reports applied exactly in log order, without holes: pure bookkeeping.

Why: a crossing's state skips a replayed report by its offset (``applied`` in
:mod:`queuewatch.aggregator.state`), which is exact only if no report of a partition is ever
applied after a later one. The Kafka client does not promise that: around a rebalance faust
drops fetched messages (a stale generation, a paused partition), re-reads from its committed
offset, and the committed offset can pass reports that were never applied. So the aggregator
decides itself which offset comes next in every partition it owns:

* an offset below the partition's next one is a redelivery: skipped (already applied);
* the next one is applied;
* one above it is a *hole*: the partition must be sought back to the missing offset, and
  everything later is skipped until the missing offset arrives. A seek can be undone by
  messages faust is still delivering from an earlier fetch, so it is repeated every
  ``reseek_every_s`` until the hole is repaired;
* unless the offsets before it hold no record we can receive (:meth:`LogOrder.skip_gap`: the
  control records and aborted records of transactional producers, found by
  :mod:`queuewatch.aggregator.gaps`): a gap, not a hole.

This module holds no Kafka client: :class:`LogOrder` says what to do, the app does it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Verdict(Enum):
    """What to do with one message."""

    APPLY = "apply"
    REDELIVERED = "redelivered"  # below the next offset: applied before
    HOLE = "hole"  # above the next offset: a new hole, seek back now
    WAIT = "wait"  # above the next offset of a partition already being sought back
    NOT_OURS = "not_ours"  # a partition this worker does not own (any more)


@dataclass
class Hole:
    """A partition being sought back to ``offset``."""

    offset: int
    found_at: float
    sought_at: float


class LogOrder:
    """The next offset of every owned partition, and the holes being repaired."""

    def __init__(self, reseek_every_s: float = 1.0) -> None:
        self.reseek_every_s = reseek_every_s
        #: partition -> the next offset to apply
        self.next: dict[int, int] = {}
        self.holes: dict[int, Hole] = {}

    def own(self, partition: int, start: int) -> None:
        """Start owning ``partition`` at offset ``start`` (the first not durably applied)."""
        self.next[partition] = start
        self.holes.pop(partition, None)

    def disown(self, partition: int) -> None:
        """Forget a partition (revoked: its new owner reads it)."""
        self.next.pop(partition, None)
        self.holes.pop(partition, None)

    def owns(self, partition: int) -> bool:
        """True once :meth:`own` was called and until :meth:`disown`."""
        return partition in self.next

    def admit(self, partition: int, offset: int, now: float) -> Verdict:
        """Judge one message; on :data:`Verdict.APPLY` the partition moves past it."""
        want = self.next.get(partition)
        if want is None:
            return Verdict.NOT_OURS
        if offset < want:
            return Verdict.REDELIVERED
        if offset == want:
            self.next[partition] = offset + 1
            self.holes.pop(partition, None)
            return Verdict.APPLY
        hole = self.holes.get(partition)
        if hole is not None and hole.offset == want:
            return Verdict.WAIT
        self.holes[partition] = Hole(want, now, now)
        return Verdict.HOLE

    def due(self, now: float) -> dict[int, int]:
        """Partitions to seek back again (partition -> offset); marks them as sought now."""
        out = {}
        for partition, hole in self.holes.items():
            if now - hole.sought_at >= self.reseek_every_s:
                hole.sought_at = now
                out[partition] = hole.offset
        return out

    def skip_gap(self, partition: int, first: int) -> bool:
        """The partition's next record is at ``first``: the offsets before it hold none.

        Moves the next offset (and a hole being repaired) up to ``first``. True when it moved;
        False when ``first`` is not past the next offset (nothing is skipped).
        """
        want = self.next.get(partition)
        if want is None or first <= want:
            return False
        self.next[partition] = first
        hole = self.holes.get(partition)
        if hole is not None:
            hole.offset = first
        return True

    def silent(self, partition: int, now: float) -> int | None:
        """The partition has input we were never given: repair it as a hole at its next offset.

        Why: faust drops the records it fetched for a partition that was paused between the
        fetch and their delivery (a rebalance, table recovery) and keeps the fetch position
        past them. A later record then shows the hole, but when the dropped records were the
        partition's last, nothing ever arrives: the partition is silent with lag. The caller
        decides it is silent; from here on the usual repair seeks it back until the offset
        arrives. Returns the offset to seek to, or None when not owned or already a hole.
        """
        want = self.next.get(partition)
        if want is None or partition in self.holes:
            return None
        self.holes[partition] = Hole(want, now, now)
        return want

    def skip_deleted(self, partition: int, first: int) -> bool:
        """The partition's log now starts at ``first``: offsets before it are gone for good.

        Retention is the one way an offset can be missing from the reports topic; a hole
        below ``first`` is then moved up to it. True when the hole moved.
        """
        hole = self.holes.get(partition)
        if hole is None or first <= hole.offset:
            return False
        hole.offset = first
        self.next[partition] = first
        return True
