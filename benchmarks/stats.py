"""Small statistics helpers: medians of runs and percentiles of latencies."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) by linear interpolation between closest ranks; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median_of_runs(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per numeric field, the median over runs (fields missing or None in a run are skipped)."""
    keys: list[str] = []
    for run in runs:
        keys.extend(k for k in run if k not in keys)
    out: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
        values = [v for v in values if not isinstance(v, bool)]
        if values:
            out[key] = round(statistics.median(values), 3)
    return out
