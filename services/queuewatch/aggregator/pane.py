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

from collections.abc import Iterable
from itertools import chain
from typing import Any

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

    def add(
        self,
        seq: int,
        observed_at: int,
        source: str,
        wait: int | None,
        vehicles: int | None,
        length_km: float | None,
        status: str,
    ) -> None:
        """Count one accepted report."""
        self.json = None
        self.reports += 1
        if seq > self.seq_max:
            self.seq_max = seq
        self.sources.add(source)
        if self.last_observed_at is None or observed_at > self.last_observed_at:
            self.last_observed_at = observed_at
        if wait is not None:
            self.w_n += 1
            self.w_sum += wait
            if self.w_min is None or wait < self.w_min:
                self.w_min = wait
            if self.w_max is None or wait > self.w_max:
                self.w_max = wait
            self.w_last = _later(self.w_last, (observed_at, seq, wait))
            self.w_sketch.add(wait)
        if vehicles is not None:
            self.v_n += 1
            self.v_sum += vehicles
            if self.v_max is None or vehicles > self.v_max:
                self.v_max = vehicles
            self.v_last = _later(self.v_last, (observed_at, seq, vehicles))
        if length_km is not None:
            self.k_n += 1
            self.k_sum.add(length_km)
            if self.k_max is None or length_km > self.k_max:
                self.k_max = length_km
            self.k_last = _later(self.k_last, (observed_at, seq, length_km))
        if status != "unknown":
            self.status_last = _later(self.status_last, (observed_at, seq, status))

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
        ) = obj
        p.sources = set(sources)
        p.w_last = tuple(w_last) if w_last else None
        p.w_sketch = QuantileSketch.from_obj(sketch)
        p.v_last = tuple(v_last) if v_last else None
        p.k_sum = ExactSum(k_num, k_shift)
        p.k_last = tuple(k_last) if k_last else None
        p.status_last = tuple(status_last) if status_last else None
        return p

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pane) and self.to_obj() == other.to_obj()

    __hash__ = None  # type: ignore[assignment]


def _newest(lasts: Iterable[Last | None]) -> Any:
    """Value of the latest ``(observed_at, seq, value)``; seq is unique, so values never compare."""
    return max(last for last in lasts if last is not None)[2]


def _quantile(zeros: int, count: int, items: list[tuple[int, int]], q: float) -> float | None:
    """DDSketch's rank walk over bins gathered from several panes (same as merging first)."""
    if count == 0:
        return None
    rank = q * (count - 1)
    if rank < zeros:
        return 0.0
    rank -= zeros
    running = 0
    key = 0
    for key, n in items:
        running += n
        if running > rank:
            return bin_value(key)
    return bin_value(key)


def window_metrics(panes: list[Pane]) -> tuple[dict[str, Any], int]:
    """The metrics of the window made of ``panes`` and its version (the newest seq in it).

    Equal to ``merge`` of every pane followed by ``metrics()`` (the unit tests check it), in
    one pass of builtins: this runs once per emitted window and is the aggregator's hot spot.
    """
    reports = sum(p.reports for p in panes)
    version = max(p.seq_max for p in panes)
    sources = len(set().union(*(p.sources for p in panes)))
    last_observed_at = max(p.last_observed_at for p in panes if p.last_observed_at is not None)
    w = [p for p in panes if p.w_n]
    v = [p for p in panes if p.v_n]
    k = [p for p in panes if p.k_n]
    st = [p.status_last for p in panes if p.status_last is not None]
    out: dict[str, Any] = {"reports": reports, "sources": sources}
    if w:
        w_n = sum(p.w_n for p in w)
        zeros = sum(p.w_sketch.zeros for p in w)
        if len(w) == 1:
            items = sorted(w[0].w_sketch.bins.items())
        else:
            merged: dict[int, int] = {}
            for key, n in chain.from_iterable(p.w_sketch.bins.items() for p in w):
                merged[key] = merged.get(key, 0) + n
            items = sorted(merged.items())
        out["wait_minutes_min"] = min(p.w_min for p in w)  # type: ignore[type-var]
        out["wait_minutes_max"] = max(p.w_max for p in w)  # type: ignore[type-var]
        out["wait_minutes_avg"] = sum(p.w_sum for p in w) / w_n
        out["wait_minutes_p50"] = _quantile(zeros, w_n, items, 0.5)
        out["wait_minutes_p90"] = _quantile(zeros, w_n, items, 0.9)
        out["wait_minutes_last"] = _newest(p.w_last for p in w)
    else:
        out.update(
            wait_minutes_min=None,
            wait_minutes_max=None,
            wait_minutes_avg=None,
            wait_minutes_p50=None,
            wait_minutes_p90=None,
            wait_minutes_last=None,
        )
    if v:
        out["queue_vehicles_max"] = max(p.v_max for p in v)  # type: ignore[type-var]
        out["queue_vehicles_avg"] = sum(p.v_sum for p in v) / sum(p.v_n for p in v)
        out["queue_vehicles_last"] = _newest(p.v_last for p in v)
    else:
        out.update(queue_vehicles_max=None, queue_vehicles_avg=None, queue_vehicles_last=None)
    if k:
        total = ExactSum()
        for p in k:
            total.merge(p.k_sum)
        out["queue_length_km_max"] = max(p.k_max for p in k)  # type: ignore[type-var]
        out["queue_length_km_avg"] = total.mean(sum(p.k_n for p in k))
        out["queue_length_km_last"] = _newest(p.k_last for p in k)
    else:
        out.update(queue_length_km_max=None, queue_length_km_avg=None, queue_length_km_last=None)
    out["status_last"] = max(st)[2] if st else "unknown"
    out["last_observed_at"] = last_observed_at
    return out, version
