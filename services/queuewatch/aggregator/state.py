"""One crossing's aggregation state: pure, deterministic, driven by the crossing's log order.

What a report does (:meth:`CrossingState.apply`):

1. A position ``(partition, offset)`` at or below the last one applied is a replay after a
   restart: skipped, so nothing is counted twice (the position is stored in the same state
   record as its effect, so both are written or neither is).
2. A known ``event_id`` is a duplicate: ignored everywhere, whatever its content; the first
   arrival wins. Event ids are remembered for ``dedup_horizon`` ms of watermark time.
3. A report for which every window containing it, in every family, is closed
   (``window_end + grace <= watermark`` before it) is *too late*: it changes no window, so it
   changes nothing but the ``late`` counter. It gets no ``seq`` and its ``event_id`` is not
   remembered (a re-send of it is too late again, so nothing needs it): this is what keeps a
   backfill of history for a live crossing from growing the state without bound (300k
   historical reports made a 15.7 MiB record, 16 MiB is the most a record may hold).
4. Otherwise the report is accepted and gets the next ``seq`` (1, 2, ...). Per window family
   it goes into its pane unless every window containing it is closed; a window closed for it
   does not count it, and the report is counted as late. Then the watermark becomes
   ``max(watermark, observed_at)``.

A crossing's own watermark cannot move while it is quiet, so its windows would stay open and
its panes and event ids kept for ever. So a crossing whose partition's clock (the newest
``observed_at`` of any report applied in the partition, in log order) is ``dedup_horizon`` or
more past its watermark is *sealed* (:meth:`CrossingState.seal_if_idle`): every window that
started at or before its watermark is final (as if closed: a later report counts in it
nowhere and is late), its unsent windows are kept as snapshots, and its panes and event ids
are dropped. ``seq``, the watermark, the counters and the applied offsets stay, so versions
keep growing and a replay stays exact. The rule depends only on the log's order, so whether
the app seals a quiet crossing from its timer (to free it) or the crossing's next report
does, the result is the same.

Windows are produced on demand (:meth:`CrossingState.take_changed`) from *dirty* panes. A
window is only ever computed from its panes while it is open (every report in its panes then
arrived while it was open, so the merge is exact). A changed window that closes before it is
emitted is materialised at that moment (a *snapshot*), because later late reports may still
land in its panes for the benefit of newer windows.

``version`` of a window = ``seq`` of the newest report it counts: it grows with every change
and is the same after a replay, a restart or on another partition count.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from queuewatch.aggregator.consensus import (
    UNJUDGED,
    ConsensusRules,
    Readings,
    consensus_rules,
    judge,
    merge_readings,
)
from queuewatch.aggregator.pane import Pane
from queuewatch.aggregator.sliding import sliding_metrics
from queuewatch.aggregator.windows import WindowFamily, parse_duration_ms, parse_families

if TYPE_CHECKING:
    from queuewatch.settings import AggregatorSettings

#: (from_country, to_country, traffic_class)
LaneKey = tuple[str, str, str]
#: (lane, family index, window start)
WindowKey = tuple[LaneKey, int, int]
#: What an accepted report put into the panes, all a pane needs to be rebuilt (state_codec):
#: ``(event_id, watermark after it, seq, observed_at, lane, family mask, source, wait,
#: vehicles, length, status, source type)``; bit ``i`` of the mask is set when family ``i``
#: counted it.
Contribution = tuple[str, int, int, int, LaneKey, int, str, Any, Any, Any, str, str]

NO_WATERMARK = -(2**62)


class Outcome(Enum):
    """What :meth:`CrossingState.apply` did with a report."""

    ACCEPTED = "accepted"
    LATE = "late"  # accepted, but too late for at least one window containing it
    TOO_LATE = "too_late"  # too late for every window: counted as late, nothing else changes
    DUPLICATE = "duplicate"
    REPLAYED = "replayed"  # its log position was applied before (at-least-once redelivery)


@dataclass(frozen=True)
class AggregationConfig:
    """The parameters every crossing state shares; part of the state's identity."""

    families: tuple[WindowFamily, ...]
    grace: int
    dedup_horizon: int
    spec: str = ""
    #: how sure we are (``consensus``): not part of the state's identity, since it is computed
    #: from the panes at emission; a change applies to the windows emitted from then on
    consensus: ConsensusRules = field(default_factory=ConsensusRules, compare=False)
    #: families no longer than this get a consensus (the "now" windows: 1 h and 3 h)
    consensus_max_size: int = field(default=3 * 3_600_000, compare=False)
    #: keep panes and produce windows (output ``windows``); False when the aggregator emits
    #: contributions and ClickHouse assembles the windows: then a report changes only the
    #: watermark, the event ids and the counters (part of ``spec``, so of the state's identity)
    panes: bool = True
    #: ``(family, pane length)`` per family: read for every report, so computed once
    layout: tuple[tuple[WindowFamily, int], ...] = field(init=False, repr=False, compare=False)
    #: the largest window size
    largest: int = field(init=False, repr=False, compare=False)
    #: per family, whether its windows get a consensus (its panes keep source readings)
    judged: tuple[bool, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layout", tuple((f, f.pane) for f in self.families))
        object.__setattr__(self, "largest", max(f.size for f in self.families))
        object.__setattr__(
            self, "judged", tuple(f.size <= self.consensus_max_size for f in self.families)
        )

    @classmethod
    def from_settings(
        cls, settings: AggregatorSettings, panes: bool | None = None
    ) -> AggregationConfig:
        """The configuration the settings describe. ``panes`` defaults to what the output
        needs: output ``windows`` keeps panes, output ``contributions`` does not."""
        return cls.from_spec(
            settings.aggregator_windows,
            settings.aggregator_grace,
            settings.aggregator_dedup_horizon,
            consensus_rules(settings),
            panes=settings.aggregator_output == "windows" if panes is None else panes,
        )

    @classmethod
    def from_spec(
        cls,
        windows: str,
        grace: str,
        dedup_horizon: str = "",
        consensus: ConsensusRules | None = None,
        panes: bool = True,
    ) -> AggregationConfig:
        """Build from the settings' strings (``"1h:1h:5m,..."``, ``"2h"``).

        ``panes=False`` (output ``contributions``) adds ``;out=contributions`` to the spec, so
        a state built for the other output is refused at load (its windows or contributions
        were never emitted for the reports it holds): the other output needs a new group.
        """
        families = parse_families(windows)
        grace_ms = parse_duration_ms(grace)
        largest = max(f.size for f in families)
        horizon = parse_duration_ms(dedup_horizon) if dedup_horizon else largest + grace_ms
        # Shorter would let a re-send count again inside a window that is still open.
        horizon = max(horizon, largest + grace_ms)
        spec = f"{','.join(f'{f.name}:{f.size}:{f.step}' for f in families)};grace={grace_ms}"
        if not panes:
            spec += ";out=contributions"
        return cls(families, grace_ms, horizon, spec, consensus or ConsensusRules(), panes=panes)


@dataclass
class FamilyState:
    """One lane's panes in one family, and which of them changed since the last emission."""

    panes: dict[int, Pane] = field(default_factory=dict)
    #: pane start -> watermark before its first change since the last emission
    dirty: dict[int, int] = field(default_factory=dict)


@dataclass
class Counters:
    """Per-crossing totals, kept in the state so they survive restarts exactly."""

    accepted: int = 0
    duplicates: int = 0
    #: accepted reports late for some window, and too-late reports (every delivery of one)
    late: int = 0
    replayed: int = 0


class CrossingState:
    """Everything the aggregator knows about one crossing."""

    __slots__ = (
        "added",
        "applied",
        "base",
        "config",
        "counters",
        "crossing_id",
        "dedup",
        "dedup_json",
        "dedup_order",
        "dedup_trimmed",
        "lanes",
        "removed",
        "sealed",
        "seq",
        "snap_json",
        "snapshots",
        "watermark",
    )

    def __init__(self, crossing_id: str, config: AggregationConfig) -> None:
        self.crossing_id = crossing_id
        self.config = config
        self.seq = 0
        self.watermark = NO_WATERMARK
        #: windows starting at or before this are final (see the module doc: sealing)
        self.sealed = NO_WATERMARK
        self.counters = Counters()
        #: partition -> last offset applied (replays at or below it are skipped)
        self.applied: dict[int, int] = {}
        #: event_id -> watermark when accepted; insertion order = nondecreasing value. Only
        #: ever appended to at the end and trimmed at the front (``dedup_json`` relies on it).
        self.dedup: dict[str, int] = {}
        #: entries ever trimmed from the front of ``dedup`` (not persisted)
        self.dedup_trimmed = 0
        #: the keys of ``dedup`` in order, built when first trimmed (not persisted): finding
        #: a dict's first key after deletions at the front scans the deleted slots, which
        #: cost ~7 µs per report once a day's worth of ids was being trimmed
        self.dedup_order: deque[str] | None = None
        #: the state codec's cache of ``dedup`` as JSON (see ``state_codec``; not persisted)
        self.dedup_json: Any = None
        self.lanes: dict[LaneKey, list[FamilyState]] = {}
        #: changed windows that closed before being emitted, materialised at closing; a row
        #: here is never changed in place (``snap_json`` relies on it)
        self.snapshots: dict[WindowKey, dict[str, Any]] = {}
        #: the state codec's cache of each snapshot's JSON, with its row (not persisted)
        self.snap_json: dict[WindowKey, tuple[dict[str, Any], str]] = {}
        #: accepted reports and forgotten event ids since the last write (``storage`` writes
        #: what changed, not the whole state; not persisted as such)
        self.added: list[Contribution] = []
        self.removed: list[str] = []
        #: the watermark of a format-1 record this state was upgraded from and still draws on
        #: (``state_codec``: the base), None when there is none
        self.base: int | None = None

    # --- applying reports ----------------------------------------------------------------

    def apply(self, record: dict[str, Any], partition: int, offset: int) -> Outcome:
        """Apply one valid report at log position ``(partition, offset)``."""
        last = self.applied.get(partition)
        if last is not None and offset <= last:
            self.counters.replayed += 1
            return Outcome.REPLAYED
        self.applied[partition] = offset
        event_id = record["event_id"]
        if event_id in self.dedup:
            self.counters.duplicates += 1
            return Outcome.DUPLICATE

        t: int = record["observed_at"]
        wm0 = self.watermark
        grace = self.config.grace
        # Every window containing t ends after t, so none is closed while t + grace >= wm0
        # (the usual case): the lateness tests below are needed only for older reports.
        sealed = self.sealed
        maybe_late = t + grace < wm0 or t < sealed + self.config.largest
        if maybe_late and self._too_late(t, wm0):
            self.counters.late += 1
            return Outcome.TOO_LATE
        self.seq += 1
        seq = self.seq
        lane_key = (record["from_country"], record["to_country"], record["traffic_class"])
        keep_panes = self.config.panes
        lane = self.lanes.get(lane_key)
        if lane is None and keep_panes:
            lane = self.lanes[lane_key] = [FamilyState() for _ in self.config.families]
        source = record["source"]["name"]
        source_type = record["source"]["type"]
        wait = record.get("wait_minutes")
        vehicles = record.get("queue_vehicles")
        length = record.get("queue_length_km")
        status = record.get("status") or "unknown"
        late = False
        mask = 0  # the families that count it (bit i: family i)
        for index, (fam, pane_len) in enumerate(self.config.layout):
            if maybe_late and (
                fam.first_window_start(t) + fam.size + grace <= wm0
                or fam.first_window_start(t) <= sealed
            ):
                late = True  # the oldest window containing t is closed
                last = fam.last_window_start(t)
                if last + fam.size + grace <= wm0 or last <= sealed:
                    continue  # every window containing t is closed: the pane is not needed
            mask |= 1 << index
            if not keep_panes:
                continue
            fstate = lane[index]  # type: ignore[index]
            p = t - t % pane_len
            pane = fstate.panes.get(p)
            if pane is None:
                pane = fstate.panes[p] = Pane()
            # Readings only where a consensus is computed: the 24 h panes would keep them for
            # nothing, once per report.
            pane.add(
                seq, t, source, wait, vehicles, length, status,
                source_type if self.config.judged[index] else None,
            )  # fmt: skip
            fstate.dirty.setdefault(p, wm0)
        self.counters.accepted += 1
        if late:
            self.counters.late += 1
        wm1 = t if t > wm0 else wm0
        self.dedup[event_id] = wm1
        self.added.append(
            (
                event_id,
                wm1,
                seq,
                t,
                lane_key,
                mask,
                source,
                wait,
                vehicles,
                length,
                status,
                source_type,
            )
        )
        if self.dedup_order is not None:
            self.dedup_order.append(event_id)
        if wm1 > wm0:
            self.watermark = wm1
            if wm0 != NO_WATERMARK:
                self._on_watermark(wm0, wm1)
        return Outcome.LATE if late else Outcome.ACCEPTED

    def _too_late(self, t: int, wm: int) -> bool:
        """True when the newest window containing ``t`` of every family is closed at ``wm``."""
        grace = self.config.grace
        sealed = self.sealed
        for fam, _ in self.config.layout:
            last = fam.last_window_start(t)
            if last + fam.size + grace > wm and last > sealed:
                return False
        return True

    def seal_if_idle(self, clock: int) -> bool:
        """Seal the crossing if ``clock`` is ``dedup_horizon`` past its watermark (module doc).

        ``clock`` is the newest ``observed_at`` applied in the crossing's partition before now.
        Unsent windows become snapshots (still emitted); panes and event ids are dropped.
        True when it sealed now; False when not idle long enough or sealed already.
        """
        wm = self.watermark
        if wm == NO_WATERMARK or wm == self.sealed or clock - wm < self.config.dedup_horizon:
            return False
        for key, row in self._changed_rows():
            self.snapshots[key] = row
        self.lanes = {}
        self.removed.extend(self.dedup)
        self.dedup = {}
        self.dedup_order = None
        self.dedup_trimmed = 0
        self.dedup_json = None
        self.sealed = wm
        return True

    def _on_watermark(self, wm0: int, wm1: int) -> None:
        """Snapshot changed windows that just closed; evict what no window needs any more."""
        grace = self.config.grace
        for index, (fam, pane_len) in enumerate(self.config.layout):
            # Does some window end e (e = s + size, s aligned) satisfy wm0 < e + grace <= wm1?
            closes = (wm1 - grace - fam.size) // fam.step > (wm0 - grace - fam.size) // fam.step
            # Panes become unused when wm - grace crosses a pane boundary.
            evicts = (wm1 - grace) // pane_len != (wm0 - grace) // pane_len
            if not (closes or evicts):
                continue
            # pane_horizon(p) + grace <= wm1, i.e. p - p % step <= wm1 - grace - size, holds
            # exactly for the panes before ``cut`` (p - p % step grows with p).
            cut = ((wm1 - grace - fam.size) // fam.step + 1) * fam.step
            for lane_key, lane in self.lanes.items():
                fstate = lane[index]
                if closes and fstate.dirty:
                    self._snapshot_closing(lane_key, index, fam, fstate, wm0, wm1)
                if evicts:
                    panes = fstate.panes
                    for p in [p for p in panes if p < cut]:
                        del panes[p]
        self._trim_dedup(wm1)

    def _trim_dedup(self, wm1: int) -> None:
        """Forget the event ids accepted more than ``dedup_horizon`` of watermark ago."""
        dedup = self.dedup
        order = self.dedup_order
        if order is None or len(order) != len(dedup):  # first trim, or ``dedup`` was replaced
            order = self.dedup_order = deque(dedup)
        limit = wm1 - self.config.dedup_horizon
        trimmed = 0
        removed = self.removed
        while order and dedup[order[0]] <= limit:
            event_id = order.popleft()
            del dedup[event_id]
            removed.append(event_id)
            trimmed += 1
        self.dedup_trimmed += trimmed

    def _snapshot_closing(
        self,
        lane_key: LaneKey,
        index: int,
        fam: WindowFamily,
        fstate: FamilyState,
        wm0: int,
        wm1: int,
    ) -> None:
        """Materialise the changed windows whose end + grace falls in (wm0, wm1]."""
        grace = self.config.grace
        # Window ends e with wm0 < e + grace <= wm1, e = s + size, s aligned to step.
        lo_end = wm0 - grace + 1
        hi_end = wm1 - grace
        first_s = lo_end - fam.size
        first_s += (-first_s) % fam.step
        last_s = hi_end - fam.size
        last_s -= last_s % fam.step
        if first_s > last_s:
            return
        count = (last_s - first_s) // fam.step + 1
        dirty = fstate.dirty
        if count <= 2 * len(dirty):
            candidates: Any = range(first_s, last_s + 1, fam.step)
        else:  # a long jump of the watermark: look only at windows around dirty panes
            candidates = sorted(
                {s for p in dirty for s in fam.window_starts(p) if first_s <= s <= last_s}
            )
        # A window changed since the last emission if a pane of it changed while it was open:
        # ``dirty[p] < end + grace``. Every dirty value is a watermark before a change, so at
        # most wm0, and every window here has end + grace > wm0: any dirty pane will do.
        dirty_panes = dirty.keys()
        sealed = self.sealed
        changed = [
            s for s in candidates if s > sealed and not dirty_panes.isdisjoint(fam.panes_of(s))
        ]
        if not changed:
            return
        for row in self._window_rows(lane_key, index, fam, changed):
            self.snapshots[(lane_key, index, row["window_start"])] = row

    # --- producing windows ----------------------------------------------------------------

    def _window_rows(
        self, lane_key: LaneKey, index: int, fam: WindowFamily, starts: list[int]
    ) -> list[dict[str, Any]]:
        """Rows of the windows at ``starts`` (ascending), computed in one sliding pass."""
        panes = self.lanes[lane_key][index].panes
        rows = []
        rules = self.config.consensus
        judged = self.config.judged[index]
        for start, metrics, version in sliding_metrics(panes, starts, fam.size, fam.pane):
            row: dict[str, Any] = {
                "crossing_id": self.crossing_id,
                "from_country": lane_key[0],
                "to_country": lane_key[1],
                "traffic_class": lane_key[2],
                "window_size": fam.name,
                "window_start": start,
                "window_end": start + fam.size,
            }
            row.update(metrics)
            if judged:
                readings: Readings = {}
                for p in range(start, start + fam.size, fam.pane):
                    pane = panes.get(p)
                    if pane is not None:
                        merge_readings(readings, pane.readings)
                row.update(judge(readings, metrics["last_observed_at"], rules).row())
            else:
                row.update(UNJUDGED)
            row["version"] = version
            rows.append(row)
        return rows

    def has_changes(self) -> bool:
        """True when some window changed since the last :meth:`take_changed`."""
        if self.snapshots:
            return True
        return any(fs.dirty for lane in self.lanes.values() for fs in lane)

    def take_changed(self) -> list[dict[str, Any]]:
        """Every window changed since the last call, newest state, then forget the changes.

        Rows lack ``updated_at`` (wall clock, set by whoever sends them).
        """
        rows = list(self.snapshots.values())
        self.snapshots.clear()
        self.snap_json.clear()  # the cache must not outlive its rows (memory)
        rows.extend(row for _, row in self._changed_rows())
        return rows

    def take_snapshots(self) -> list[dict[str, Any]]:
        """The changed windows that closed since the last take (final), then forget them.

        A closed window changes no more, so emitting it early costs no extra message; the
        open ones wait for :meth:`take_changed`, coalesced.
        """
        rows = list(self.snapshots.values())
        self.snapshots.clear()
        self.snap_json.clear()
        return rows

    def _changed_rows(self) -> list[tuple[WindowKey, dict[str, Any]]]:
        """The open windows changed since the last emission, keyed; clears the dirty marks."""
        out: list[tuple[WindowKey, dict[str, Any]]] = []
        grace = self.config.grace
        wm = self.watermark
        sealed = self.sealed
        for lane_key, lane in self.lanes.items():
            for index, (fam, fstate) in enumerate(zip(self.config.families, lane, strict=True)):
                if not fstate.dirty:
                    continue
                starts: set[int] = set()
                for p, first_wm in fstate.dirty.items():
                    for s in fam.window_starts(p):
                        end = s + fam.size
                        # open now (else it was snapshotted when it closed, if it changed),
                        # and open for the first change of this pane (else not changed by it)
                        if end + grace > wm and end + grace > first_wm and s > sealed:
                            starts.add(s)
                fstate.dirty.clear()
                for row in self._window_rows(lane_key, index, fam, sorted(starts)):
                    out.append(((lane_key, index, row["window_start"]), row))
        return out
