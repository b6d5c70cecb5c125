"""Consecutive windows of one family in one sliding pass over their panes.

A dirty pane dirties every window containing it (12 to 24 per family with the defaults), and
those windows overlap in all but one pane. Computing each from its up to 24 panes
(:func:`~queuewatch.aggregator.pane.window_metrics`) made emission the aggregator's hot spot;
here the next window is the previous one plus the panes entering minus the panes leaving:

* counts, integer sums, the exact float sum (:class:`ExactSum` is an integer fraction), the
  sketch's bin counts and the multiset of source names subtract exactly, so the result is the
  same number, bit for bit, as a fresh merge (Python divides ints with correct rounding);
* min, max, ``last`` (``(observed_at, seq, value)``), the version and ``last_observed_at`` do
  not subtract: each is kept as the current extreme and recomputed from the window's panes only
  when the pane leaving held it (rare for the time-ordered ones: the leaving pane is the oldest).

The output equals :func:`window_metrics` on the same panes, dict key order included (snapshots
are stored in the state record, whose bytes must not change); the property tests check it.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator, Sequence
from itertools import accumulate
from typing import Any

from queuewatch.aggregator.pane import ExactSum, Pane, metrics_row, window_metrics

#: Pane attributes whose window value is the largest over the panes (None = absent).
_MAX_FIELDS = (
    "seq_max",
    "last_observed_at",
    "w_max",
    "w_last",
    "v_max",
    "v_last",
    "k_max",
    "k_last",
    "status_last",
)


class _Accumulator:
    """The running merge of the panes currently in the window."""

    __slots__ = (
        "bins",
        "ext",
        "k_n",
        "k_sum",
        "keys",
        "members",
        "reports",
        "sources",
        "stale",
        "v_n",
        "v_sum",
        "w_min",
        "w_min_stale",
        "w_n",
        "w_sum",
        "zeros",
    )

    def __init__(self) -> None:
        self.members: dict[int, Pane] = {}  # pane start -> pane, ascending
        self.reports = 0
        self.sources: dict[str, int] = {}  # name -> number of member panes holding it
        self.w_n = 0
        self.w_sum = 0
        self.zeros = 0
        self.bins: dict[int, int] = {}
        self.keys: list[int] = []  # the keys of ``bins``, sorted: the quantile walk's order
        self.v_n = 0
        self.v_sum = 0
        self.k_n = 0
        self.k_sum = ExactSum()
        self.ext: dict[str, Any] = dict.fromkeys(_MAX_FIELDS)
        self.stale: set[str] = set()
        self.w_min: int | None = None
        self.w_min_stale = False

    def add(self, start: int, pane: Pane) -> None:
        """Let a pane enter the window."""
        self.members[start] = pane
        self.reports += pane.reports
        sources = self.sources
        for name in pane.sources:
            sources[name] = sources.get(name, 0) + 1
        ext = self.ext
        if pane.w_n:
            self.w_n += pane.w_n
            self.w_sum += pane.w_sum
            sk = pane.w_sketch
            self.zeros += sk.zeros
            bins = self.bins
            for key, n in sk.bins.items():
                have = bins.get(key)
                if have is None:
                    bins[key] = n
                    insort(self.keys, key)
                else:
                    bins[key] = have + n
            if self.w_min is None or pane.w_min < self.w_min:  # type: ignore[operator]
                self.w_min = pane.w_min
            # A stale extreme is updated too: harmless, _refresh recomputes it from members.
            if (cur := ext["w_max"]) is None or pane.w_max > cur:
                ext["w_max"] = pane.w_max
            if (cur := ext["w_last"]) is None or pane.w_last > cur:
                ext["w_last"] = pane.w_last
        if pane.v_n:
            self.v_n += pane.v_n
            self.v_sum += pane.v_sum
            if (cur := ext["v_max"]) is None or pane.v_max > cur:
                ext["v_max"] = pane.v_max
            if (cur := ext["v_last"]) is None or pane.v_last > cur:
                ext["v_last"] = pane.v_last
        if pane.k_n:
            self.k_n += pane.k_n
            self.k_sum.merge(pane.k_sum)
            if (cur := ext["k_max"]) is None or pane.k_max > cur:
                ext["k_max"] = pane.k_max
            if (cur := ext["k_last"]) is None or pane.k_last > cur:
                ext["k_last"] = pane.k_last
        if pane.status_last is not None and (
            (cur := ext["status_last"]) is None or pane.status_last > cur
        ):
            ext["status_last"] = pane.status_last
        if (cur := ext["seq_max"]) is None or pane.seq_max > cur:
            ext["seq_max"] = pane.seq_max
        if (cur := ext["last_observed_at"]) is None or pane.last_observed_at > cur:
            ext["last_observed_at"] = pane.last_observed_at

    def remove(self, start: int) -> None:
        """Let a pane leave the window (it must be a member)."""
        pane = self.members.pop(start)
        self.reports -= pane.reports
        sources = self.sources
        for name in pane.sources:
            left = sources[name] - 1
            if left:
                sources[name] = left
            else:
                del sources[name]
        if pane.w_n:
            self.w_n -= pane.w_n
            self.w_sum -= pane.w_sum
            sk = pane.w_sketch
            self.zeros -= sk.zeros
            bins = self.bins
            for key, n in sk.bins.items():
                left = bins[key] - n
                if left:
                    bins[key] = left
                else:
                    del bins[key]
                    keys = self.keys
                    del keys[bisect_left(keys, key)]
            if pane.w_min == self.w_min:
                self.w_min_stale = True
        self.v_n -= pane.v_n
        self.v_sum -= pane.v_sum
        if pane.k_n:
            self.k_n -= pane.k_n
            self.k_sum.num -= pane.k_sum.num << (self.k_sum.shift - pane.k_sum.shift)
        ext = self.ext
        for name in _MAX_FIELDS:
            value = getattr(pane, name)
            if value is not None and value == ext[name]:
                self.stale.add(name)

    def _refresh(self) -> None:
        """Recompute the extremes whose holder left the window."""
        panes = self.members.values()
        for name in self.stale:
            values = [v for p in panes if (v := getattr(p, name)) is not None]
            self.ext[name] = max(values) if values else None
        self.stale.clear()
        if self.w_min_stale:
            mins = [p.w_min for p in panes if p.w_n]
            self.w_min = min(mins) if mins else None  # type: ignore[type-var]
            self.w_min_stale = False

    def metrics(self) -> tuple[dict[str, Any], int]:
        """The window's metrics and version, exactly as :func:`window_metrics` gives them."""
        if self.stale or self.w_min_stale:
            self._refresh()
        ext = self.ext
        keys = self.keys
        running = list(accumulate(map(self.bins.__getitem__, keys))) if self.w_n else []
        out = metrics_row(
            self.reports, len(self.sources),
            self.w_n, self.w_min, ext["w_max"], self.w_sum, self.zeros, keys, running,
            ext["w_last"],
            self.v_n, ext["v_max"], self.v_sum, ext["v_last"],
            self.k_n, ext["k_max"], self.k_sum, ext["k_last"],
            ext["status_last"], ext["last_observed_at"],
        )  # fmt: skip
        return out, ext["seq_max"]


def sliding_metrics(
    panes: dict[int, Pane], starts: Sequence[int], size: int, pane_len: int
) -> Iterator[tuple[int, dict[str, Any], int]]:
    """``(start, metrics, version)`` of the windows at ``starts`` (ascending), in order.

    ``panes`` maps pane start -> pane; a window ``[s, s + size)`` covers the panes present at
    ``s, s + pane_len, ...``. Overlapping consecutive windows share the accumulator; a gap of
    ``size`` or more starts a fresh one. A window overlapping neither neighbour is merged
    directly (:func:`window_metrics`), which is cheaper when nothing is reused.
    """
    acc: _Accumulator | None = None
    prev = 0
    last = len(starts) - 1
    for i, s in enumerate(starts):
        end = s + size
        if acc is None or s - prev >= size:
            if i == last or starts[i + 1] - s >= size:  # isolated: nothing to slide over
                present = list(filter(None, map(panes.get, range(s, end, pane_len))))
                metrics, version = window_metrics(present)
                acc = None
                yield s, metrics, version
                continue
            acc = _Accumulator()
            lo = s
        else:
            for p in range(prev, s, pane_len):
                if p in acc.members:
                    acc.remove(p)
            lo = prev + size
        for p in range(lo, end, pane_len):
            pane = panes.get(p)
            if pane is not None:
                acc.add(p, pane)
        prev = s
        metrics, version = acc.metrics()
        yield s, metrics, version
