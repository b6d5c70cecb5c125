"""The sliding pass over panes gives exactly what a fresh merge of each window's panes gives."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from queuewatch.aggregator.pane import Pane, window_metrics
from queuewatch.aggregator.sliding import sliding_metrics
from queuewatch.aggregator.windows import WindowFamily

MIN = 60_000
T0 = 1_663_977_600_000  # 2022-09-24T00:00:00Z

reports_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "t": st.integers(0, 8 * 60 * MIN),
            "source": st.sampled_from(["a", "b", "c", "d"]),
            "wait": st.one_of(st.none(), st.just(0), st.integers(0, 20160)),
            "vehicles": st.one_of(st.none(), st.integers(0, 100000)),
            "km": st.one_of(st.none(), st.floats(0, 500, allow_nan=False)),
            "status": st.sampled_from(["open", "delay", "closed", "unknown"]),
        }
    ),
    min_size=1,
    max_size=120,
)
#: (size, step) in minutes: step dividing size, and not (pane = gcd smaller than the step).
families_strategy = st.sampled_from([(60, 5), (180, 15), (60, 60), (50, 20), (30, 12), (45, 45)])


def _panes(fam: WindowFamily, reports: list[dict[str, Any]]) -> dict[int, Pane]:
    panes: dict[int, Pane] = {}
    for seq, r in enumerate(reports, 1):
        t = T0 + r["t"]
        pane = panes.setdefault(fam.pane_start(t), Pane())
        pane.add(seq, t, r["source"], r["wait"], r["vehicles"], r["km"], r["status"])
    return panes


@settings(max_examples=200, deadline=None)
@given(reports_strategy, families_strategy, st.data())
def test_sliding_pass_equals_a_fresh_merge_of_every_window_key_order_included(
    reports: list[dict[str, Any]], size_step: tuple[int, int], data: st.DataObject
) -> None:
    size, step = size_step
    fam = WindowFamily("f", size * MIN, step * MIN)
    panes = _panes(fam, reports)
    # Every window holding a report, then a random subset: runs of neighbours and gaps.
    every = sorted({s for p in panes for s in fam.window_starts(p)})
    starts = sorted(data.draw(st.sets(st.sampled_from(every), min_size=1)))

    got = list(sliding_metrics(panes, starts, fam.size, fam.pane))

    assert [s for s, _, _ in got] == starts
    for s, metrics, version in got:
        present = [pane for p in fam.panes_of(s) if (pane := panes.get(p)) is not None]
        want, want_version = window_metrics(present)
        assert list(metrics.items()) == list(want.items()), s
        assert version == want_version


def test_an_extreme_leaving_the_window_is_recomputed_from_the_panes_left() -> None:
    fam = WindowFamily("f", 15 * MIN, 5 * MIN)
    reports = [
        # the oldest pane holds the max wait, the min wait, the newest report and the last status
        {"t": 1 * MIN, "source": "a", "wait": 900, "vehicles": 5, "km": 2.5, "status": "closed"},
        {"t": 6 * MIN, "source": "b", "wait": 50, "vehicles": None, "km": None, "status": "open"},
        {"t": 11 * MIN, "source": "b", "wait": 60, "vehicles": 1, "km": None, "status": "unknown"},
        {"t": 16 * MIN, "source": "c", "wait": 70, "vehicles": None, "km": 0.5, "status": "delay"},
        {"t": 0, "source": "a", "wait": 1, "vehicles": 9, "km": None, "status": "unknown"},
    ]
    panes = _panes(fam, reports)

    (_, first, v1), (_, second, v2) = sliding_metrics(panes, [T0, T0 + 5 * MIN], fam.size, fam.pane)

    assert (first["wait_minutes_max"], first["wait_minutes_min"], v1) == (900, 1, 5)
    assert (second["wait_minutes_max"], second["wait_minutes_min"], v2) == (70, 50, 4)
    assert (second["sources"], second["queue_vehicles_max"], second["status_last"]) == (
        2,
        1,
        "delay",
    )
    assert second["queue_length_km_avg"] == 0.5
