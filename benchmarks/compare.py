"""Checks that a peer (Quix Streams, Bytewax) computed the same windows as our aggregator.

A peer emits a window once, when it closes (``end + grace <= the crossing's watermark``);
ours emits every changed window and its newest version replaces the older ones. So the
comparison is: every closed window of ours must be in the peer's output and vice versa, and
every field must be equal: exactly for counts, min, max, last, status and times; within
1e-9 relative for means (float summation order); within 1 % relative for p50/p90 (both use
the DDSketch mapping, so they are normally equal to the bit).

Bytewax decides lateness per report rather than per window (its module docstring says how):
a report later than the grace is in none of its windows there, while ours counts it in the
windows that still take it. :func:`beyond_grace` finds those windows exactly from the log,
and :func:`compare` checks them apart: each must hold exactly that many reports fewer in the
peer (and be absent when none are left); their other fields legitimately differ.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from typing import Any

from benchmarks.peers.window_values import GRACE_MS, WINDOWS
from benchmarks.window_output import WindowKey

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


def beyond_grace(reports: Iterable[dict[str, Any]]) -> dict[WindowKey, int]:
    """Window key -> reports later than the grace that our aggregator counts in that window.

    ``reports`` in log order. Per crossing: a re-sent event_id is dropped; the watermark is
    the largest observed_at so far; a report with ``observed_at < watermark - grace`` is late
    for Bytewax in every window, and ours still counts it in each of its windows with
    ``window_end + grace > watermark``.
    """
    seen: dict[str, set[str]] = {}
    watermark: dict[str, int] = {}
    out: dict[WindowKey, int] = {}
    for r in reports:
        crossing, ts = r["crossing_id"], r["observed_at"]
        ids = seen.setdefault(crossing, set())
        if r["event_id"] in ids:
            continue
        ids.add(r["event_id"])
        before = watermark.get(crossing)
        watermark[crossing] = ts if before is None else max(before, ts)
        if before is None or ts >= before - GRACE_MS:
            continue
        for name, (size, step) in WINDOWS.items():
            start = (ts - size) // step * step + step  # the first start with start + size > ts
            while start <= ts:
                if start + size + GRACE_MS > before:
                    key = (crossing, r["from_country"], r["to_country"], r["traffic_class"])
                    wkey = (*key, name, start)
                    out[wkey] = out.get(wkey, 0) + 1
                start += step
    return out


def compare(
    ours: dict[WindowKey, dict[str, Any]],
    peer: dict[WindowKey, dict[str, Any]],
    sample: int = 5000,
    seed: int = 1,
    late_in_ours: dict[WindowKey, int] | None = None,
) -> dict[str, Any]:
    """Compare closed windows: key sets in full, values on a random sample of ``sample``.

    ``late_in_ours`` (from :func:`beyond_grace`) names the windows where the peer, by its
    stated semantics, holds fewer reports than ours; those are checked on their report count
    only, and count as equal when it is exactly the expected one.
    """
    late = late_in_ours or {}
    closed = closed_keys(ours)
    tolerated = {k for k in closed if k in late}
    absent = {k for k in tolerated if ours[k]["reports"] == late[k]}
    expected = closed - absent
    peer_keys = set(peer)
    common = sorted((expected - tolerated) & peer_keys)
    rng = random.Random(seed)
    checked = common if len(common) <= sample else rng.sample(common, sample)
    mismatched: list[dict[str, Any]] = []
    for key in checked:
        diff = differences(ours[key], peer[key])
        if diff:
            values = {f: [ours[key].get(f), peer[key].get(f)] for f in diff}
            mismatched.append({"key": list(key), "ours_vs_peer": values})
    for key in sorted(tolerated - absent):
        want = ours[key]["reports"] - late[key]
        got = peer[key]["reports"] if key in peer else None
        if got != want:
            mismatched.append({"key": list(key), "reports_expected_vs_peer": [want, got]})
    return {
        "closed_windows_ours": len(closed),
        "windows_peer": len(peer_keys),
        "missing_in_peer": len(expected - peer_keys),
        "missing_in_ours": len(peer_keys - expected),
        "compared": len(checked),
        "beyond_grace_windows": len(tolerated),
        "mismatched": len(mismatched),
        "examples": mismatched[:5],
        "equal": not mismatched and expected == peer_keys,
    }
