"""Checks that the Quix peer computed the same windows as queuewatch's aggregator.

The peer emits a window once, when it closes (``end + grace <= the crossing's watermark``);
ours emits every changed window and its newest version replaces the older ones. So the
comparison is: every closed window of ours must be in the peer's output and vice versa, and
every field must be equal: exactly for counts, min, max, last, status and times; within
1e-9 relative for means (float summation order); within 1 % relative for p50/p90 (both use
the DDSketch mapping, so they are normally equal to the bit).
"""

from __future__ import annotations

import math
import random
from typing import Any

from benchmarks.window_output import WindowKey

HOUR_MS = 3_600_000
GRACE_MS = 2 * HOUR_MS
EXACT = [
    "window_end", "reports", "sources", "wait_minutes_min", "wait_minutes_max",
    "wait_minutes_last", "queue_vehicles_max", "queue_vehicles_last", "queue_length_km_max",
    "queue_length_km_last", "status_last", "last_observed_at",
]  # fmt: skip
MEANS = ["wait_minutes_avg", "queue_vehicles_avg", "queue_length_km_avg"]
QUANTILES = ["wait_minutes_p50", "wait_minutes_p90"]


def _close(a: Any, b: Any, rel: float) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-9)


def differences(ours: dict[str, Any], peer: dict[str, Any]) -> list[str]:
    """The fields on which two versions of one window disagree."""
    out = [f for f in EXACT if ours.get(f) != peer.get(f)]
    out += [f for f in MEANS if not _close(ours.get(f), peer.get(f), 1e-9)]
    out += [f for f in QUANTILES if not _close(ours.get(f), peer.get(f), 0.01)]
    return out


def closed_keys(windows: dict[WindowKey, dict[str, Any]]) -> set[WindowKey]:
    """Keys whose window has closed: end + grace <= the crossing's watermark.

    The watermark of a crossing is the largest observed_at among its accepted reports, which
    is the largest last_observed_at over its windows.
    """
    watermark: dict[str, int] = {}
    for key, rec in windows.items():
        c = key[0]
        watermark[c] = max(watermark.get(c, 0), rec["last_observed_at"])
    return {k for k, rec in windows.items() if rec["window_end"] + GRACE_MS <= watermark[k[0]]}


def compare(
    ours: dict[WindowKey, dict[str, Any]],
    peer: dict[WindowKey, dict[str, Any]],
    sample: int = 5000,
    seed: int = 1,
) -> dict[str, Any]:
    """Compare closed windows: key sets in full, values on a random sample of ``sample``."""
    closed = closed_keys(ours)
    peer_keys = set(peer)
    common = sorted(closed & peer_keys)
    rng = random.Random(seed)
    checked = common if len(common) <= sample else rng.sample(common, sample)
    mismatched: list[dict[str, Any]] = []
    for key in checked:
        diff = differences(ours[key], peer[key])
        if diff:
            values = {f: [ours[key].get(f), peer[key].get(f)] for f in diff}
            mismatched.append({"key": list(key), "ours_vs_peer": values})
    return {
        "closed_windows_ours": len(closed),
        "windows_peer": len(peer_keys),
        "missing_in_peer": len(closed - peer_keys),
        "missing_in_ours": len(peer_keys - closed),
        "compared": len(checked),
        "mismatched": len(mismatched),
        "examples": mismatched[:5],
        "equal": not mismatched and closed == peer_keys,
    }
