"""The input's progress: reports applied in log order, and an honest exit when they stop.

Two jobs, both about the reports partitions this worker owns, both acting on faust's consumer
while :mod:`queuewatch.aggregator.ordering` and :mod:`queuewatch.platform.liveness` decide:

* **log order** (:meth:`InputProgress.in_log_order`): each partition's offsets are applied
  strictly in order from its position record. A redelivery is skipped; a hole (the client
  skipped offsets) is sought back, again every ``_RESEEK_EVERY_S`` until the missing offset
  arrives (:meth:`InputProgress.repair_holes`); offsets holding nothing we can receive
  (transaction markers, aborted records: :mod:`queuewatch.aggregator.gaps`) are a gap and
  skipped; offsets deleted by retention are skipped with a warning.
* **liveness** (:meth:`InputProgress.watch_progress`, on a timer): sample position and lag,
  repair partitions that went silent (faust dropped fetched records), write the heartbeat,
  and exit when nothing was applied for the stall timeout while there is lag.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from faust.types import TP

from queuewatch.aggregator import checkpoint
from queuewatch.aggregator.gaps import GapProbe
from queuewatch.aggregator.ordering import LogOrder, Verdict
from queuewatch.platform.liveness import (
    Heartbeat,
    LoopGuard,
    ProgressWatch,
    Stall,
    Steps,
    exit_stalled,
    watch_interval,
)

log = logging.getLogger(__name__)

#: How often a partition with a hole is sought back again until the missing offset arrives:
#: faust drops re-fetched messages below offsets it is still delivering from an earlier
#: fetch (``Consumer._read_offset``), so one seek is not always enough.
_RESEEK_EVERY_S = 1.0
#: A partition with lag that delivered nothing for this long, while the client has read past
#: what we were given, is silent: faust dropped fetched records (see LogOrder.silent).
_SILENT_AFTER_S = 10.0


class InputProgress:
    """Log order and liveness of this worker's share of the reports topic."""

    def __init__(
        self,
        topic: str,
        gaps: GapProbe,
        heartbeat: Heartbeat,
        stall_timeout_s: float,
        totals: dict[str, int],
        lock: asyncio.Lock,
    ) -> None:
        """``totals`` and ``lock`` are the aggregator's (counted into; held around seeks)."""
        self.topic = topic
        #: tells a gap (transaction markers, aborted records) from a hole (see gaps)
        self.gaps = gaps
        self.heartbeat = heartbeat
        self.stall_timeout_s = stall_timeout_s
        self.totals = totals
        self.lock = lock
        #: the faust app, set once built (its consumer is sought, sampled and resumed)
        self.app: Any = None
        #: each owned reports partition's next offset: applied in log order, without holes
        self.order = LogOrder(_RESEEK_EVERY_S)
        #: the awaits that may hang, and the progress of the input (platform.liveness)
        self.steps = Steps()
        self.watch_interval_s = watch_interval(stall_timeout_s)
        self.watch = ProgressWatch(stall_timeout_s, self.watch_interval_s)
        self.guard = LoopGuard("aggregator", stall_timeout_s, self.stalled_loop)
        #: each owned partition's last delivery (any verdict), and the end offset up to which
        #: the gap probe found nothing we can receive (transaction markers at the end)
        self.delivered_at: dict[int, float] = {}
        self.nothing_before: dict[int, int] = {}
        #: each assigned partition's lag at the last sample (read by the metrics)
        self.partition_lag: dict[int, int] = {}

    def own(self, partition: int, start: int) -> None:
        """Start applying ``partition`` at offset ``start`` (after the table's recovery)."""
        self.order.own(partition, start)
        self.delivered_at[partition] = time.monotonic()

    def disown(self, partition: int) -> None:
        """Forget a revoked partition."""
        self.order.disown(partition)
        self.delivered_at.pop(partition, None)
        self.nothing_before.pop(partition, None)

    def should_own(self, tp: TP) -> bool:
        """True when ``tp`` is assigned to us and no rebalance is under way: we must own it."""
        return not self.app.rebalancing and tp in self.app.consumer.assignment()

    async def in_log_order(self, events: list[Any]) -> list[Any]:
        """The events to apply: each partition's next offsets, in order (see ``ordering``)."""
        fresh: list[Any] = []
        seek: dict[TP, int] = {}
        order = self.order
        now = time.monotonic()
        delivered = self.delivered_at
        for event in events:
            m = event.message
            delivered[m.partition] = now
            holed = order.holes and m.partition in order.holes
            verdict = order.admit(m.partition, m.offset, now)
            if verdict is Verdict.APPLY:
                fresh.append(event)
                if holed:
                    log.info("partition %d: hole repaired at offset %d", m.partition, m.offset)
            elif verdict is Verdict.REDELIVERED:
                self.totals["redelivered"] += 1
            elif verdict is Verdict.HOLE:
                want = order.holes[m.partition].offset
                if await self.skip_gap(m.partition, want):
                    if order.admit(m.partition, m.offset, now) is Verdict.APPLY:
                        fresh.append(event)
                        continue
                    want = order.holes[m.partition].offset
                self.totals["holes"] += 1
                seek[m.tp] = want
                log.warning(
                    "partition %d: got offset %d, expected %d (the client skipped messages); "
                    "seeking back",
                    m.partition,
                    m.offset,
                    want,
                )
            elif verdict is Verdict.NOT_OURS and self.should_own(m.tp):
                # Never dropped and acked in silence: we would idle with no lag showing.
                checkpoint.die_unsafe(
                    "ordering the reports",
                    RuntimeError(
                        f"partition {m.partition} is assigned to this worker but was never "
                        "started at its position (the start after recovery failed?)"
                    ),
                )
        if seek:
            await self.seek(seek)
        return fresh

    async def skip_gap(self, partition: int, want: int) -> bool:
        """True when offsets from ``want`` on hold no record we can receive (see ``gaps``)."""
        first = await self.gaps.first_at_or_after(self.topic, partition, want)
        if first is None or not self.order.skip_gap(partition, first):
            return False
        log.info(
            "partition %d: offsets %d..%d hold no reports (transaction markers or aborted "
            "records); going on at %d",
            partition,
            want,
            first - 1,
            first,
        )
        return True

    async def seek(self, seek: dict[TP, int]) -> None:
        try:
            await self.app.consumer.seek_wait(seek)
        except Exception:
            if set(seek) & self.app.consumer.assignment():
                raise  # still ours and not sought back: unsafe to go on (exit, replay)
            log.info("partitions %s were revoked while seeking back", sorted(seek))

    async def repair_holes(self) -> None:
        """Seek partitions with a hole back again until the missing offset arrives.

        A hole is never skipped: only retention can delete an offset for good, and offsets
        that hold no record we can receive (transactional producers' markers and aborted
        records, see ``gaps``) are a gap, not a hole.
        """
        now = time.monotonic()
        due = self.order.due(now)
        if not due:
            return
        tps = {TP(self.topic, p): offset for p, offset in due.items()}
        earliest = await self.app.consumer.earliest_offsets(*tps)
        for tp, offset in list(tps.items()):
            first = int(earliest.get(tp) or 0)
            if self.order.skip_deleted(tp.partition, first):
                log.warning(
                    "partition %d: offsets %d..%d were deleted by retention; going on at %d",
                    tp.partition,
                    offset,
                    first - 1,
                    first,
                )
                tps[tp] = first
            elif await self.skip_gap(tp.partition, offset):
                tps[tp] = self.order.holes[tp.partition].offset
            hole = self.order.holes[tp.partition]
            if now - hole.found_at > 30:
                log.error(
                    "partition %d: offset %d still missing after %.0f s of seeking back",
                    tp.partition,
                    hole.offset,
                    now - hole.found_at,
                )
        await self.seek(tps)

    async def watch_progress(self) -> None:
        """Progress or an honest exit (platform.liveness): sample position and lag, judge."""
        self.guard.beat()
        self.guard.start()
        self.watch.begin()
        silent: list[tuple[TP, int, int]] = []
        try:
            position, lag, blocked = await asyncio.wait_for(
                self.sample_progress(silent), timeout=max(2 * self.watch_interval_s, 5.0)
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the broker or faust's consumer thread does not answer
            position = self.watch.position or 0
            lag = max(self.watch.lag or 1, 1)
            why = "no answer in time" if isinstance(exc, TimeoutError) else f"{exc!r}"
            blocked = f"the input's end offsets cannot be read from Kafka ({why})"
        if silent:
            try:
                await self.repair_silent(silent)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next sample finds it silent again
                log.warning("seeking back a silent partition failed (%s); retrying", exc)
        stall = self.watch.observe(position, lag, blocked)
        self.heartbeat.write(
            self.watch,
            reason=blocked,
            details={"owned": sorted(self.order.next), "holes": sorted(self.order.holes)},
        )
        if stall is not None:
            self.stalled(stall)

    async def sample_progress(
        self, silent: list[tuple[TP, int, int]]
    ) -> tuple[int, int, str | None]:
        """(position, lag, what blocks the work) of this worker's share of the reports topic.

        The position is the sum of the owned partitions' next offsets, the lag how far they
        are from the end. While a rebalance or the state's recovery runs, the restored
        changelog offsets count as position and the work as pending: a rebalance that never
        ends is a stall too. Partitions that look silent (lag, no delivery for
        ``_SILENT_AFTER_S``, the client past our next offset) are added to ``silent``.
        """
        app = self.app
        recovery = app.tables.recovery
        position = sum(self.order.next.values())
        blocked = self.steps.blocked(self.watch_interval_s)
        if app.rebalancing or recovery.in_recovery:
            restored = sum(o for o in recovery.active_offsets.values() if o and o > 0)
            pending = 1 + int(recovery.active_remaining_total())
            return (
                position + restored,
                pending,
                blocked or "a rebalance or the state's recovery from the changelog has not ended",
            )
        consumer = app.consumer
        tps = [tp for tp in consumer.assignment() if tp.topic == self.topic]
        if not tps:
            return position, 0, blocked
        ends = await consumer.highwaters(*tps)
        now = time.monotonic()
        lag = 0
        unowned = []
        lags: dict[int, int] = {}
        for tp in tps:
            end = int(ends.get(tp) or 0)
            nxt = self.order.next.get(tp.partition)
            if nxt is None:
                unowned.append(tp.partition)
                lag += end
                lags[tp.partition] = end
                continue
            behind = end - nxt
            if behind > 0 and self.nothing_before.get(tp.partition) == end:
                behind = 0  # only transaction markers or aborted records left (probed)
            quiet = now - self.delivered_at.get(tp.partition, now)
            if behind > 0 and quiet >= _SILENT_AFTER_S and tp.partition not in self.order.holes:
                fetched = await consumer.position(tp)
                if fetched is not None and fetched > nxt:
                    silent.append((tp, nxt, end))
                elif tp in consumer._paused_partitions:
                    # Paused outside a rebalance and nothing fetched: a recovery that ended
                    # early (a new generation) never resumed it.
                    log.warning("partition %d: paused with lag %d; resuming", tp.partition, behind)
                    consumer.resume_partitions({tp})
            lag += max(0, behind)
            lags[tp.partition] = max(0, behind)
        self.partition_lag = lags
        if unowned and not blocked:
            blocked = (
                f"partitions {sorted(unowned)} are assigned but were never started at their "
                "position (did the recovery callback fail? see the log above)"
            )
        return position, lag, blocked

    async def repair_silent(self, silent: list[tuple[TP, int, int]]) -> None:
        """Ask the broker what follows each silent partition's next offset, and act on it.

        Nothing we can receive: the lag is transaction markers or aborted records, so the
        partition is caught up. A record further on: the offsets before it are a gap. A record
        at the next offset (after any gap), never given to us: a silent hole, sought back
        like any hole until it arrives.
        """
        topic = self.topic
        async with self.lock:
            seek: dict[TP, int] = {}
            for tp, nxt, end in silent:
                if self.order.next.get(tp.partition) != nxt:
                    continue  # it moved meanwhile
                first = await self.gaps.first_at_or_after(topic, tp.partition, nxt)
                if first is None:
                    self.nothing_before[tp.partition] = end
                    continue
                if first > nxt and self.order.skip_gap(tp.partition, first):
                    log.info(
                        "partition %d: offsets %d..%d hold no reports (transaction markers or "
                        "aborted records); going on at %d",
                        tp.partition,
                        nxt,
                        first - 1,
                        first,
                    )
                    nxt = first
                want = self.order.silent(tp.partition, time.monotonic())
                if want is None:
                    continue
                self.totals["silent"] += 1
                seek[tp] = want
                log.warning(
                    "partition %d: lag %d and nothing delivered for %.0f s although the client "
                    "read past offset %d (faust dropped fetched records); seeking back",
                    tp.partition,
                    end - nxt,
                    time.monotonic() - self.delivered_at.get(tp.partition, 0.0),
                    want,
                )
            if seek:
                await self.seek(seek)

    def stalled(self, stall: Stall) -> None:
        self.heartbeat.write(self.watch, reason=stall.reason)
        exit_stalled(
            "aggregator",
            f"no report applied for {stall.since_progress_s:.0f} s with lag {stall.lag} "
            f"(QUEUEWATCH_STALL_TIMEOUT_S={self.stall_timeout_s:g}): {stall.reason}; "
            f"totals {self.totals}",
        )

    def stalled_loop(self, reason: str) -> None:
        exit_stalled("aggregator", f"{reason}: the event loop is blocked")
