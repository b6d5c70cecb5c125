"""A sparse, mergeable DDSketch for the wait percentiles.

The bins are DDSketch's (``ddsketch.LogarithmicMapping``, relative accuracy 1%), and the
quantile walk is DDSketch's (rank ``q * (n - 1)``, lower bin), so the answers equal those of
``ddsketch.DDSketch`` on the same values; the tests check that. Only the store differs: a
dict of the few bins a pane uses instead of a dense array per pane, because a crossing keeps
hundreds of panes and the state is written to the changelog on every batch. Counts are ints,
so merging is exact and order-free.
"""

from __future__ import annotations

from functools import lru_cache

from ddsketch.mapping import LogarithmicMapping

#: 1% relative accuracy: the contract promises p50/p90 within 1% of the true rank quantile.
RELATIVE_ACCURACY = 0.01
_MAPPING = LogarithmicMapping(RELATIVE_ACCURACY)
_MIN_POSITIVE = _MAPPING.min_possible


@lru_cache(maxsize=65536)
def bin_key(value: float) -> int:
    """DDSketch bin of a positive value (cached: waits are small integers)."""
    return int(_MAPPING.key(value))


@lru_cache(maxsize=65536)
def bin_value(key: int) -> float:
    """The value DDSketch reports for a bin."""
    return float(_MAPPING.value(key))


class QuantileSketch:
    """Counts per DDSketch bin plus a count of zeros (values too small for a bin)."""

    __slots__ = ("bins", "count", "zeros")

    def __init__(self) -> None:
        self.zeros = 0
        self.count = 0
        self.bins: dict[int, int] = {}

    def add(self, value: float) -> None:
        """Count one non-negative value."""
        self.count += 1
        if value > _MIN_POSITIVE:
            key = bin_key(value)
            bins = self.bins
            bins[key] = bins.get(key, 0) + 1
        else:
            self.zeros += 1

    def merge(self, other: QuantileSketch) -> None:
        """Add every value counted by ``other`` (exact: integer counts)."""
        self.count += other.count
        self.zeros += other.zeros
        bins = self.bins
        for key, n in other.bins.items():
            bins[key] = bins.get(key, 0) + n

    def quantile(self, q: float) -> float | None:
        """DDSketch's quantile: the bin value of the item at rank ``q * (count - 1)``."""
        if self.count == 0:
            return None
        rank = q * (self.count - 1)
        if rank < self.zeros:
            return 0.0
        rank -= self.zeros
        running = 0
        key = 0
        for key in sorted(self.bins):
            running += self.bins[key]
            if running > rank:
                return bin_value(key)
        return bin_value(key)

    def to_obj(self) -> list[int]:
        """``[zeros, key, count, key, count, ...]`` with keys sorted (canonical)."""
        out = [self.zeros]
        for key in sorted(self.bins):
            out.append(key)
            out.append(self.bins[key])
        return out

    @classmethod
    def from_obj(cls, obj: list[int]) -> QuantileSketch:
        """Inverse of :meth:`to_obj`."""
        sketch = cls()
        sketch.zeros = int(obj[0])
        it = iter(obj[1:])
        sketch.bins = {int(k): int(n) for k, n in zip(it, it, strict=True)}
        sketch.count = sketch.zeros + sum(sketch.bins.values())
        return sketch


def wait_bin(wait: int | None) -> float | None:
    """The value the sketch reports for the bin holding ``wait`` (0.0 for zero; None for none).

    What a window assembled from contributions sorts to pick a percentile
    (``clickhouse/assembly``): the walk of :meth:`QuantileSketch.quantile` over unit counts.
    """
    if wait is None:
        return None
    if wait <= _MIN_POSITIVE:
        return 0.0
    return bin_value(bin_key(wait))
