"""The bytes of a crossing's state in the changelog: versioned JSON, never pickle.

The changelog topic is the state's only durable copy, so its format is a contract with the
next release: a version number leads, the window configuration is recorded (a state built
for other windows is refused rather than misread), and only plain JSON types are used, so a
record written by anyone cannot run code here.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from queuewatch.aggregator.pane import Pane
from queuewatch.aggregator.state import (
    NO_WATERMARK,
    AggregationConfig,
    Contribution,
    Counters,
    CrossingState,
    FamilyState,
    WindowKey,
)
from queuewatch.errors import QueuewatchError

FORMAT_VERSION = 1


class StateFormatError(QueuewatchError):
    """A changelog record cannot be read as a crossing state of this configuration."""


#: ``json.dumps(obj, separators=(",", ":"), allow_nan=False)``, without rebuilding the encoder.
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _pane_json(pane: Pane) -> str:
    """The pane's JSON, cached on the pane until it changes.

    Every batch rewrites the whole state of each crossing it touches (state and log position
    in one record is what makes a restart exact), but a batch changes few of the hundreds of
    panes a crossing holds: re-serialising only those is most of the saving.
    """
    text = pane.json
    if text is None:
        text = pane.json = _dumps(pane.to_obj())
    return text


def _lanes_json(state: CrossingState) -> str:
    """``"lanes"`` of the record, assembled from cached pane JSON.

    The same text ``json.dumps`` gives for
    ``[[lane_key, [[[[p, pane.to_obj()], ...], [[p, wm], ...]], ...]], ...]`` (the tests and
    the benchmark's digest check the bytes are unchanged).
    """
    lanes = []
    for lane_key, lane in state.lanes.items():
        families = []
        for fs in lane:
            panes = ",".join([f"[{p},{_pane_json(pane)}]" for p, pane in fs.panes.items()])
            dirty = _dumps([[p, w] for p, w in fs.dirty.items()])
            families.append(f"[[{panes}],{dirty}]")
        lanes.append(f"[{_dumps(list(lane_key))},[{','.join(families)}]]")
    return f"[{','.join(lanes)}]"


class DedupJson:
    """The de-duplication list as JSON, kept between writes in chunks of consecutive entries.

    The list holds every event id of the last day or so (thousands per busy crossing) and is
    rewritten with the state after every batch, yet a batch only appends a few ids at the end
    and trims old ones at the front. So each write serialises only the new entries as one
    chunk, drops chunks trimmed away, and re-serialises at most one partly trimmed chunk.
    Chunks are merged when there are many, so memory stays about one string per crossing.
    """

    __slots__ = ("chunks", "first", "total")

    #: More chunks than this are joined into one (bounds the count; amortised linear cost).
    MAX_CHUNKS = 64

    def __init__(self, first: int) -> None:
        self.first = first  # index (counting trimmed entries) of the first entry covered
        self.total = 0  # entries covered
        self.chunks: deque[tuple[int, str]] = deque()  # (entries, JSON items without [])

    def text(self, state: CrossingState) -> str:
        """The JSON of ``[[event_id, watermark], ...]`` for the state's ``dedup`` now."""
        dedup = state.dedup
        trimmed = state.dedup_trimmed
        chunks = self.chunks
        while chunks and self.first + chunks[0][0] <= trimmed:
            count, _ = chunks.popleft()
            self.first += count
            self.total -= count
        if self.first < trimmed:
            if chunks:  # the first chunk is partly trimmed: redo what is left of it
                count, _ = chunks.popleft()
                left = self.first + count - trimmed
                items = [[k, v] for k, v in islice(dedup.items(), left)]
                chunks.appendleft((left, _dumps(items)[1:-1]))
                self.total -= count - left
            self.first = trimmed
        new = len(dedup) - self.total
        if new:
            tail = [[k, v] for k, v in islice(reversed(dedup.items()), new)]
            tail.reverse()
            chunks.append((new, _dumps(tail)[1:-1]))
            self.total += new
        if len(chunks) > self.MAX_CHUNKS:
            merged = ",".join([t for _, t in chunks])
            chunks.clear()
            chunks.append((self.total, merged))
        return f"[{','.join([t for _, t in chunks])}]"


def _dedup_json(state: CrossingState) -> str:
    cache = state.dedup_json
    if cache is None:
        cache = state.dedup_json = DedupJson(state.dedup_trimmed)
    text: str = cache.text(state)
    return text


def _snap_json(state: CrossingState) -> str:
    """``"snap"`` of the record: ``[[lane_key, index, start, row], ...]`` as JSON.

    A snapshot stays in the state until the next emission, which is up to a flush interval
    and so several batches away; its JSON is made once and reused while its row is the same
    object (rows are replaced, never changed in place).
    """
    cache = state.snap_json
    fresh: dict[WindowKey, tuple[dict[str, Any], str]] = {}
    parts = []
    for key, row in state.snapshots.items():
        hit = cache.get(key)
        if hit is None or hit[0] is not row:
            lane_key, index, start = key
            hit = (row, _dumps([list(lane_key), index, start, row]))
        fresh[key] = hit
        parts.append(hit[1])
    state.snap_json = fresh
    return f"[{','.join(parts)}]"


def encode_state(state: CrossingState) -> bytes:
    """Serialise one crossing's whole state as format 1 (compact JSON; keys in a fixed order).

    The aggregator writes format 2 now (:func:`encode_head`); this stays the reference of
    what earlier releases left in the changelog (read on upgrade by :func:`decode_state`).
    """
    c = state.counters
    head: dict[str, Any] = {
        "f": FORMAT_VERSION,
        "cfg": state.config.spec,
        "id": state.crossing_id,
        "seq": state.seq,
        "wm": state.watermark,
        "n": [c.accepted, c.duplicates, c.late, c.replayed],
        "applied": [[p, o] for p, o in state.applied.items()],
    }
    if state.sealed != NO_WATERMARK:  # absent until sealed: older records read the same
        head["sealed"] = state.sealed
    text = (
        f'{_dumps(head)[:-1]},"dedup":{_dedup_json(state)},"lanes":{_lanes_json(state)},'
        f'"snap":{_snap_json(state)}}}'
    )
    return text.encode()


def decode_state(data: bytes, config: AggregationConfig) -> CrossingState:
    """Read a state written by :func:`encode_state` for the same window configuration."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateFormatError(f"changelog record is not JSON: {exc}") from exc
    if obj.get("f") != FORMAT_VERSION:
        raise StateFormatError(
            f"changelog record has state format {obj.get('f')!r}, this aggregator reads "
            f"{FORMAT_VERSION}; run the matching release or start a new aggregator group"
        )
    if obj.get("cfg") != config.spec:
        raise StateFormatError(
            f"the state was built for windows {obj.get('cfg')!r} but the settings now say "
            f"{config.spec!r}; restore QUEUEWATCH_AGGREGATOR_WINDOWS/GRACE, or set a new "
            "QUEUEWATCH_AGGREGATOR_GROUP to rebuild every window from the log"
        )
    state = CrossingState(obj["id"], config)
    state.seq = obj["seq"]
    state.watermark = obj["wm"]
    state.counters = Counters(*obj["n"])
    state.applied = {int(p): int(o) for p, o in obj["applied"]}
    state.sealed = int(obj.get("sealed", NO_WATERMARK))
    state.dedup = {k: v for k, v in obj["dedup"]}
    for lane_key, fams in obj["lanes"]:
        lane: list[FamilyState] = []
        for panes, dirty in fams:
            lane.append(
                FamilyState(
                    panes={int(p): Pane.from_obj(po) for p, po in panes},
                    dirty={int(p): int(w) for p, w in dirty},
                )
            )
        state.lanes[(lane_key[0], lane_key[1], lane_key[2])] = lane
    for lane_key, index, start, row in obj["snap"]:
        state.snapshots[((lane_key[0], lane_key[1], lane_key[2]), index, start)] = row
    return state


# --- format 2: a small head per crossing, one record per accepted report ---------------------
#
# Format 1 rewrote the whole state (every pane, every event id of the dedup horizon) on every
# batch that touched the crossing: a busy crossing's record reached about 1 MiB, written again
# for each report. Format 2 writes what a batch changed (see ``storage``):
#
# * the *head* (key: the crossing id): counters, seq, watermark, applied offsets, sealing, the
#   dirty marks and snapshots of unsent windows; a few hundred bytes;
# * one *contribution* per accepted report still within the dedup horizon (key: crossing id,
#   NUL, event id): what the report put into the panes. The panes are not stored: they are a
#   pure function of the live contributions (``rebuild``), and the event ids are the keys.
# * after an upgrade from format 1, the old record kept as the *base* until everything in it
#   is past the horizon.

#: Format of the head records written now (format 1 records are still read).
FORMAT_V2 = 2


def encode_contribution(c: Contribution) -> bytes:
    """A contribution record's value (its event id is in the key)."""
    _, wm1, seq, t, lane, mask, source, wait, vehicles, length, status, kind = c
    return _dumps(
        [seq, wm1, t, list(lane), mask, source, wait, vehicles, length, status, kind]
    ).encode()


def _dirty_json(state: CrossingState) -> str:
    """``"dirty"``: ``[[lane_key, [[[p, wm], ...] per family]], ...]`` for lanes with marks."""
    parts = []
    for lane_key, lane in state.lanes.items():
        if any(fs.dirty for fs in lane):
            marks = [[[p, w] for p, w in fs.dirty.items()] for fs in lane]
            parts.append(_dumps([list(lane_key), marks]))
    return f"[{','.join(parts)}]"


def encode_head(state: CrossingState, batch: tuple[int, int] | None) -> bytes:
    """The head record of ``state`` (compact JSON; the keys up to ``sealed`` as in format 1).

    ``batch`` is ``(seq before, count)`` of the contributions written with this head, so a
    reader can tell that every one of them is there (see :func:`rebuild`).
    """
    c = state.counters
    head: dict[str, Any] = {
        "f": FORMAT_V2,
        "cfg": state.config.spec,
        "id": state.crossing_id,
        "seq": state.seq,
        "wm": state.watermark,
        "n": [c.accepted, c.duplicates, c.late, c.replayed],
        "applied": [[p, o] for p, o in state.applied.items()],
    }
    if state.sealed != NO_WATERMARK:
        head["sealed"] = state.sealed
    if batch is not None and batch[1]:
        head["b"] = list(batch)
    if state.base is not None:
        head["base"] = state.base
    text = f'{_dumps(head)[:-1]},"dirty":{_dirty_json(state)},"snap":{_snap_json(state)}}}'
    return text.encode()


def format_of(data: bytes) -> int | None:
    """The format version a head record (or a format-1 state record) declares."""
    if data.startswith(b'{"f":2,'):
        return FORMAT_V2
    if data.startswith(b'{"f":1,'):
        return FORMAT_VERSION
    return None


@dataclass
class Rebuilt:
    """A state rebuilt from format-2 records, and what the records held that is not state."""

    state: CrossingState
    #: event ids of contributions past the horizon or sealed: safe to delete now
    dead: list[str] = field(default_factory=list)
    #: event ids of contributions newer than the head (a batch that never became durable):
    #: delete before anything else is written (the replay writes them again)
    unfinished: list[str] = field(default_factory=list)
    #: the base record is past the horizon: delete it
    base_dead: bool = False


def _check_config(obj: dict[str, Any], config: AggregationConfig) -> None:
    if obj.get("cfg") != config.spec:
        raise StateFormatError(
            f"the state was built for windows {obj.get('cfg')!r} but the settings now say "
            f"{config.spec!r}; restore QUEUEWATCH_AGGREGATOR_WINDOWS/GRACE, or set a new "
            "QUEUEWATCH_AGGREGATOR_GROUP to rebuild every window from the log"
        )


def rebuild(
    head: bytes,
    contributions: dict[str, bytes],
    base: bytes | None,
    config: AggregationConfig,
) -> Rebuilt:
    """The crossing's state from its head, its contribution records and its base, if any.

    Exact: the panes are rebuilt by adding the live contributions in ``seq`` order, the adds
    the state made when the reports were applied; a pane or an event id the state dropped
    (past the horizon, or sealed) is dropped here by the same rule, from the watermark.
    Contributions above the head's ``seq`` come from a batch whose head never became durable:
    they are not state (the replay applies those reports again, with the same ``seq``).
    """
    try:
        obj = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateFormatError(f"changelog head record is not JSON: {exc}") from exc
    if obj.get("f") != FORMAT_V2:
        raise StateFormatError(f"changelog record has state format {obj.get('f')!r}, not 2")
    _check_config(obj, config)
    cid = obj["id"]
    state = CrossingState(cid, config)
    state.seq = seq = obj["seq"]
    state.watermark = wm = obj["wm"]
    state.counters = Counters(*obj["n"])
    state.applied = {int(p): int(o) for p, o in obj["applied"]}
    state.sealed = sealed = int(obj.get("sealed", NO_WATERMARK))
    out = Rebuilt(state)
    # Dropped by the state at this watermark: event ids at or below ``gone``; panes whose
    # last window closed (pane_horizon + grace <= wm, the rule of ``_on_watermark``).
    gone = max(sealed, wm - config.dedup_horizon)
    grace = config.grace
    families = config.layout
    lanes = state.lanes
    base_wm = obj.get("base")
    if base_wm is not None:
        if base_wm <= gone or base is None:
            out.base_dead = True
        else:
            old = decode_state(base, config)
            state.base = base_wm
            state.dedup = {k: v for k, v in old.dedup.items() if v > gone}
            for lane_key, old_lane in old.lanes.items():
                for (fam, _), fs in zip(families, old_lane, strict=True):
                    for p in [p for p in fs.panes if fam.pane_horizon(p) + grace <= wm]:
                        del fs.panes[p]
                    fs.dirty.clear()
                lanes[lane_key] = old_lane
    live = []
    for event_id, value in contributions.items():
        c = json.loads(value)
        if c[0] > seq:
            out.unfinished.append(event_id)
        elif c[1] <= gone:
            out.dead.append(event_id)
        else:
            live.append((c, event_id))
    batch = obj.get("b")
    if batch is not None and sum(1 for c, _ in live if c[0] > batch[0]) < batch[1]:
        raise StateFormatError(
            f"crossing {cid}: its head record is durable but some of the {batch[1]} report "
            "records written with it are not (a write failed after a later one succeeded); "
            "set a new QUEUEWATCH_AGGREGATOR_GROUP to rebuild every window from the log"
        )
    live.sort(key=lambda item: item[0][0])
    dedup = state.dedup
    nfam = len(families)
    for (
        cseq,
        wm1,
        t,
        lane_key,
        mask,
        source,
        wait,
        vehicles,
        length,
        status,
        *kind,
    ), event_id in live:
        # ``kind``: the source type (consensus), absent in records written before it
        source_type = kind[0] if kind else "crowd"
        dedup[event_id] = wm1
        if not config.panes:
            continue  # output ``contributions``: the state keeps no panes
        key = (lane_key[0], lane_key[1], lane_key[2])
        lane = lanes.get(key)
        if lane is None:
            lane = lanes[key] = [FamilyState() for _ in range(nfam)]
        for index, ((fam, pane_len), fs) in enumerate(zip(families, lane, strict=True)):
            if not mask & (1 << index):
                continue
            p = t - t % pane_len
            if fam.pane_horizon(p) + grace <= wm:
                continue
            pane = fs.panes.get(p)
            if pane is None:
                pane = fs.panes[p] = Pane()
            pane.add(
                cseq, t, source, wait, vehicles, length, status,
                source_type if config.judged[index] else None,
            )  # fmt: skip
    for lane_key, marks in obj["dirty"]:
        key = (lane_key[0], lane_key[1], lane_key[2])
        lane = lanes.get(key)
        if lane is None:
            lane = lanes[key] = [FamilyState() for _ in range(nfam)]
        for fs, family_marks in zip(lane, marks, strict=True):
            fs.dirty = {int(p): int(w) for p, w in family_marks}
    for lane_key, index, start, row in obj["snap"]:
        state.snapshots[((lane_key[0], lane_key[1], lane_key[2]), index, start)] = row
    return out
