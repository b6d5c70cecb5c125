"""One pane's exact aggregate, and the merge that turns panes into a window.

Everything here is order-free under merge, so a window computed from its panes in any order
equals the window computed from its reports directly (the property tests check it):

* counts, sums, min and max are exact (integers; the float queue length is summed exactly as
  a binary fraction, so its mean is the correctly rounded true mean, whatever the order);
* ``last`` values carry ``(observed_at, seq)``, where ``seq`` is the report's position in the
  crossing's log order, and the larger pair wins: latest observation, ties to the later report;
* distinct sources are a set; percentiles use the mergeable :class:`QuantileSketch`.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate, chain
from operator import itemgetter
from typing import Any

from queuewatch.aggregator.consensus import (
    Readings,
    add_reading,
    merge_readings,
    readings_from_obj,
    readings_to_obj,
)
from queuewatch.aggregator.sketch import QuantileSketch, bin_value

#: ``(observed_at, seq, value)``: the tuple order is the "which report is last" order.
Last = tuple[int, int, Any]


class ExactSum:
    """Sum of floats without rounding: ``num / 2**shift`` (every double is such a fraction)."""

    __slots__ = ("num", "shift")

    def __init__(self, num: int = 0, shift: int = 0) -> None:
        self.num = num
        self.shift = shift

    def add(self, value: float) -> None:
        """Add one float (or int) exactly."""
        n, d = value.as_integer_ratio()
        s = d.bit_length() - 1  # d is a power of two
        if s > self.shift:
            self.num <<= s - self.shift
            self.shift = s
        self.num += n << (self.shift - s)

    def merge(self, other: ExactSum) -> None:
        """Add another exact sum."""
        if other.shift > self.shift:
            self.num <<= other.shift - self.shift
            self.shift = other.shift
        self.num += other.num << (self.shift - other.shift)

    def mean(self, count: int) -> float:
        """The correctly rounded value of sum / count (Python int division rounds exactly)."""
        return self.num / (count << self.shift)

    def canonical(self) -> tuple[int, int]:
        """The fraction in lowest terms, so equal sums compare equal."""
        num, shift = self.num, self.shift
        if num == 0:
            return 0, 0
        while shift and not num & 1:
            num >>= 1
            shift -= 1
        return num, shift


def _later(a: Last | None, b: Last | None) -> Last | None:
    if a is None:
        return b
    if b is None:
        return a
    return b if (b[0], b[1]) > (a[0], a[1]) else a


class Pane:
    """Aggregate of the reports of one lane (direction and class) in one pane of one family."""

    __slots__ = (
        "json",
        "k_last",
        "k_max",
        "k_n",
        "k_sum",
        "last_observed_at",
        "readings",
        "reports",
        "seq_max",
        "sources",
        "status_last",
        "v_last",
        "v_max",
        "v_n",
        "v_sum",
        "w_last",
        "w_max",
        "w_min",
        "w_n",
        "w_sketch",
        "w_sum",
    )

    def __init__(self) -> None:
        #: :meth:`to_obj` as JSON text, kept until the pane changes (see ``state_codec``)
        self.json: str | None = None
        self.reports = 0
        self.seq_max = 0  # seq of the newest report in the pane: the window's version
        self.sources: set[str] = set()
        self.last_observed_at: int | None = None
        self.w_n = 0
        self.w_sum = 0
        self.w_min: int | None = None
        self.w_max: int | None = None
        self.w_last: Last | None = None
        self.w_sketch = QuantileSketch()
        self.v_n = 0
        self.v_sum = 0
        self.v_max: int | None = None
        self.v_last: Last | None = None
        self.k_n = 0
        self.k_sum = ExactSum()
        self.k_max: float | None = None
        self.k_last: Last | None = None
        self.status_last: Last | None = None
        #: per source name, its type and latest values (``consensus``: how sure we are)
        self.readings: Readings = {}

    def add(
        self,
        seq: int,
        observed_at: int,
        source: str,
        wait: int | None,
        vehicles: int | None,
        length_km: float | None,
        status: str,
        source_type: str | None = "crowd",
    ) -> None:
        """Count one accepted report (``source_type`` defaults as the contract's reader does;
        None keeps no reading: the pane's family gets no consensus).

        Runs once per report and window family, so the ``last`` updates are written out:
        ``last < order`` is :func:`_later`'s rule, since a ``Last`` compares with the shorter
        ``order`` on ``(observed_at, seq)`` first and is larger when that part is equal.
        """
        order = (observed_at, seq)
        self.json = None
        self.reports += 1
        if seq > self.seq_max:
            self.seq_max = seq
        self.sources.add(source)
        newest = self.last_observed_at
        if newest is None or observed_at > newest:
            self.last_observed_at = observed_at
        if wait is not None:
            self.w_n += 1
            self.w_sum += wait
            if self.w_min is None or wait < self.w_min:
                self.w_min = wait
            if self.w_max is None or wait > self.w_max:
                self.w_max = wait
            last = self.w_last
            if last is None or last < order:
                self.w_last = (observed_at, seq, wait)
            self.w_sketch.add(wait)
        if vehicles is not None:
            self.v_n += 1
            self.v_sum += vehicles
            if self.v_max is None or vehicles > self.v_max:
                self.v_max = vehicles
            last = self.v_last
            if last is None or last < order:
                self.v_last = (observed_at, seq, vehicles)
        if length_km is not None:
            self.k_n += 1
            self.k_sum.add(length_km)
            if self.k_max is None or length_km > self.k_max:
                self.k_max = length_km
            last = self.k_last
            if last is None or last < order:
                self.k_last = (observed_at, seq, length_km)
        if status != "unknown":
            last = self.status_last
            if last is None or last < order:
                self.status_last = (observed_at, seq, status)
        if source_type is not None:
            add_reading(
                self.readings, source, source_type, observed_at, seq, wait, vehicles, length_km
            )

    def merge(self, other: Pane) -> None:
        """Fold another pane in (commutative and associative)."""
        self.json = None
        self.reports += other.reports
        self.seq_max = max(self.seq_max, other.seq_max)
        self.sources |= other.sources
        if other.last_observed_at is not None and (
            self.last_observed_at is None or other.last_observed_at > self.last_observed_at
        ):
            self.last_observed_at = other.last_observed_at
        if other.w_n:
            self.w_n += other.w_n
            self.w_sum += other.w_sum
            self.w_min = other.w_min if self.w_min is None else min(self.w_min, other.w_min)  # type: ignore[type-var]
            self.w_max = other.w_max if self.w_max is None else max(self.w_max, other.w_max)  # type: ignore[type-var]
            self.w_last = _later(self.w_last, other.w_last)
            self.w_sketch.merge(other.w_sketch)
        if other.v_n:
            self.v_n += other.v_n
            self.v_sum += other.v_sum
            self.v_max = other.v_max if self.v_max is None else max(self.v_max, other.v_max)  # type: ignore[type-var]
            self.v_last = _later(self.v_last, other.v_last)
        if other.k_n:
            self.k_n += other.k_n
            self.k_sum.merge(other.k_sum)
            self.k_max = other.k_max if self.k_max is None else max(self.k_max, other.k_max)  # type: ignore[type-var]
            self.k_last = _later(self.k_last, other.k_last)
        self.status_last = _later(self.status_last, other.status_last)
        merge_readings(self.readings, other.readings)

    def metrics(self) -> dict[str, Any]:
        """The window's metric fields (schema names); call on a merged pane."""
        return {
            "reports": self.reports,
            "sources": len(self.sources),
            "wait_minutes_min": self.w_min,
            "wait_minutes_max": self.w_max,
            "wait_minutes_avg": self.w_sum / self.w_n if self.w_n else None,
            "wait_minutes_p50": self.w_sketch.quantile(0.5),
            "wait_minutes_p90": self.w_sketch.quantile(0.9),
            "wait_minutes_last": self.w_last[2] if self.w_last else None,
            "queue_vehicles_max": self.v_max,
            "queue_vehicles_avg": self.v_sum / self.v_n if self.v_n else None,
            "queue_vehicles_last": self.v_last[2] if self.v_last else None,
            "queue_length_km_max": self.k_max,
            "queue_length_km_avg": self.k_sum.mean(self.k_n) if self.k_n else None,
            "queue_length_km_last": self.k_last[2] if self.k_last else None,
            "status_last": self.status_last[2] if self.status_last else "unknown",
            "last_observed_at": self.last_observed_at,
        }

    # --- persistence (see state_codec) ---------------------------------------------------

    def to_obj(self) -> list[Any]:
        """A JSON-able, canonical list (sets sorted, sums reduced)."""
        k_num, k_shift = self.k_sum.canonical()
        return [
            self.reports,
            self.seq_max,
            sorted(self.sources),
            self.last_observed_at,
            self.w_n,
            self.w_sum,
            self.w_min,
            self.w_max,
            list(self.w_last) if self.w_last else None,
            self.w_sketch.to_obj(),
            self.v_n,
            self.v_sum,
            self.v_max,
            list(self.v_last) if self.v_last else None,
            self.k_n,
            k_num,
            k_shift,
            self.k_max,
            list(self.k_last) if self.k_last else None,
            list(self.status_last) if self.status_last else None,
            readings_to_obj(self.readings),
        ]

    @classmethod
    def from_obj(cls, obj: list[Any]) -> Pane:
        """Inverse of :meth:`to_obj`."""
        p = cls()
        (
            p.reports,
            p.seq_max,
            sources,
            p.last_observed_at,
            p.w_n,
            p.w_sum,
            p.w_min,
            p.w_max,
            w_last,
            sketch,
            p.v_n,
            p.v_sum,
            p.v_max,
            v_last,
            p.k_n,
            k_num,
            k_shift,
            p.k_max,
            k_last,
            status_last,
            *readings,  # absent in a pane written before the readings: none known
        ) = obj
        p.sources = set(sources)
        p.w_last = tuple(w_last) if w_last else None
        p.w_sketch = QuantileSketch.from_obj(sketch)
        p.v_last = tuple(v_last) if v_last else None
        p.k_sum = ExactSum(k_num, k_shift)
        p.k_last = tuple(k_last) if k_last else None
        p.status_last = tuple(status_last) if status_last else None
        p.readings = readings_from_obj(readings[0] if readings else None)
        return p

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pane) and self.to_obj() == other.to_obj()

    __hash__ = None  # type: ignore[assignment]


#: Up to this many bins in a window's panes, sorting them all beats merging equal keys first.
_SORT_ALL = 160
_key = itemgetter(0)
_count = itemgetter(1)


def rank_quantile(zeros: int, count: int, keys: list[int], running: list[int], q: float) -> float:
    """DDSketch's rank walk over the bins of a merged sketch, by bisection of running counts.

    ``keys`` are bin keys in ascending order (a key may repeat: then its counts add up, and
    the walk stops at the same key as on the merged bins), ``running[i]`` is the count in
    ``keys[: i + 1]``; ``count > 0``. The walk stops at the first key whose running count
    exceeds the rank ``q * (count - 1)``, else at the last key.
    """
    rank = q * (count - 1)
    if rank < zeros:
        return 0.0
    rank -= zeros
    if not keys:
        return bin_value(0)
    i = bisect_right(running, rank)
    return bin_value(keys[i] if i < len(keys) else keys[-1])


def metrics_row(
    reports: int,
    sources: int,
    w_n: int,
    w_min: int | None,
    w_max: int | None,
    w_sum: int,
    zeros: int,
    keys: list[int],
    running: list[int],
    w_last: Last | None,
    v_n: int,
    v_max: int | None,
    v_sum: int,
    v_last: Last | None,
    k_n: int,
    k_max: float | None,
    k_sum: ExactSum,
    k_last: Last | None,
    status: Last | None,
    last_observed_at: int | None,
) -> dict[str, Any]:
    """A window's metric fields (schema names, schema order) from its merged aggregates.

    The one place a window row's metrics are spelled out: both ways of merging panes
    (:func:`window_metrics`, and the sliding accumulator of ``sliding``) end here, so they
    cannot disagree on a field, a null or the key order the state record's bytes depend on.
    ``keys``/``running`` are the sorted sketch bins and their running counts.
    """
    out: dict[str, Any] = {"reports": reports, "sources": sources}
    if w_n:
        out["wait_minutes_min"] = w_min
        out["wait_minutes_max"] = w_max
        out["wait_minutes_avg"] = w_sum / w_n
        out["wait_minutes_p50"] = rank_quantile(zeros, w_n, keys, running, 0.5)
        out["wait_minutes_p90"] = rank_quantile(zeros, w_n, keys, running, 0.9)
        out["wait_minutes_last"] = w_last[2]  # type: ignore[index]
    else:
        out.update(_NO_WAIT)
    if v_n:
        out["queue_vehicles_max"] = v_max
        out["queue_vehicles_avg"] = v_sum / v_n
        out["queue_vehicles_last"] = v_last[2]  # type: ignore[index]
    else:
        out.update(_NO_VEHICLES)
    if k_n:
        out["queue_length_km_max"] = k_max
        out["queue_length_km_avg"] = k_sum.mean(k_n)
        out["queue_length_km_last"] = k_last[2]  # type: ignore[index]
    else:
        out.update(_NO_LENGTH)
    out["status_last"] = status[2] if status is not None else "unknown"
    out["last_observed_at"] = last_observed_at
    return out


_NO_WAIT = dict.fromkeys(
    ("wait_minutes_" + m for m in ("min", "max", "avg", "p50", "p90", "last")), None
)
_NO_VEHICLES = dict.fromkeys(("queue_vehicles_" + m for m in ("max", "avg", "last")), None)
_NO_LENGTH = dict.fromkeys(("queue_length_km_" + m for m in ("max", "avg", "last")), None)


def window_metrics(panes: list[Pane]) -> tuple[dict[str, Any], int]:
    """The metrics of the window made of ``panes`` and its version (the newest seq in it).

    Equal to ``merge`` of every pane followed by ``metrics()`` (the unit tests check it), in
    one pass over the panes: this runs for every window that closes with changes. Extremes
    keep the first of equal values, as ``min``/``max`` do; when there are few, the sketches'
    bins are not merged into a dict but sorted together (see :func:`rank_quantile`).
    """
    if not panes:
        raise ValueError("a window needs at least one pane")
    reports = 0
    version = panes[0].seq_max
    sources: set[str] = set()
    last_observed_at: int | None = None
    w_n = w_sum = zeros = 0
    w_min: int | None = None
    w_max: int | None = None
    w_last: Last | None = None
    bins: list[dict[int, int]] = []
    v_n = v_sum = 0
    v_max: int | None = None
    v_last: Last | None = None
    k_n = 0
    k_sum = ExactSum()
    k_max: float | None = None
    k_last: Last | None = None
    status: Last | None = None
    for p in panes:
        reports += p.reports
        if p.seq_max > version:
            version = p.seq_max
        sources |= p.sources
        t = p.last_observed_at
        if t is not None and (last_observed_at is None or t > last_observed_at):
            last_observed_at = t
        if p.w_n:
            w_n += p.w_n
            w_sum += p.w_sum
            zeros += p.w_sketch.zeros
            bins.append(p.w_sketch.bins)
            if w_min is None or p.w_min < w_min:  # type: ignore[operator]
                w_min = p.w_min
            if w_max is None or p.w_max > w_max:  # type: ignore[operator]
                w_max = p.w_max
            if w_last is None or p.w_last > w_last:  # type: ignore[operator]
                w_last = p.w_last
        if p.v_n:
            v_n += p.v_n
            v_sum += p.v_sum
            if v_max is None or p.v_max > v_max:  # type: ignore[operator]
                v_max = p.v_max
            if v_last is None or p.v_last > v_last:  # type: ignore[operator]
                v_last = p.v_last
        if p.k_n:
            k_n += p.k_n
            k_sum.merge(p.k_sum)
            if k_max is None or p.k_max > k_max:  # type: ignore[operator]
                k_max = p.k_max
            if k_last is None or p.k_last > k_last:  # type: ignore[operator]
                k_last = p.k_last
        st = p.status_last
        if st is not None and (status is None or st > status):
            status = st
    keys: list[int] = []
    running: list[int] = []
    if w_n:
        if sum(map(len, bins)) <= _SORT_ALL:  # one C sort of every (key, count) pair
            items = sorted(chain.from_iterable(b.items() for b in bins))
        else:  # many bins: merging counts first leaves far fewer pairs to sort
            merged: dict[int, int] = {}
            for b in bins:
                for key, n in b.items():
                    merged[key] = merged.get(key, 0) + n
            items = sorted(merged.items())
        keys = list(map(_key, items))
        running = list(accumulate(map(_count, items)))
    out = metrics_row(
        reports, len(sources),
        w_n, w_min, w_max, w_sum, zeros, keys, running, w_last,
        v_n, v_max, v_sum, v_last,
        k_n, k_max, k_sum, k_last,
        status, last_observed_at,
    )  # fmt: skip
    return out, version
