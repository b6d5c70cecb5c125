"""The pure window logic: pane algebra, duplicates, the lateness rule, state round trips."""

from __future__ import annotations

import random
from typing import Any

import pytest
from ddsketch import DDSketch
from hypothesis import given, settings
from hypothesis import strategies as st

from queuewatch.aggregator.pane import Pane, window_metrics
from queuewatch.aggregator.sketch import QuantileSketch
from queuewatch.aggregator.state import AggregationConfig, CrossingState, Outcome
from queuewatch.aggregator.state_codec import StateFormatError, decode_state, encode_state
from queuewatch.aggregator.windows import parse_duration_ms, parse_families
from queuewatch.errors import ConfigurationError

HOUR = 3_600_000
MIN = 60_000
T0 = 1_663_977_600_000  # 2022-09-24T00:00:00Z
CONFIG = AggregationConfig.from_spec("1h:1h:5m,3h:3h:15m,24h:24h:1h", "2h")

values = st.fixed_dictionaries(
    {
        "t": st.integers(0, 6 * HOUR),
        "source": st.sampled_from(["a", "b", "c"]),
        "wait": st.one_of(st.none(), st.integers(0, 20160)),
        "vehicles": st.one_of(st.none(), st.integers(0, 100000)),
        "km": st.one_of(st.none(), st.floats(0, 500, allow_nan=False)),
        "status": st.sampled_from(["open", "delay", "closed", "unknown"]),
    }
)


def _add(pane: Pane, seq: int, v: dict[str, Any]) -> None:
    pane.add(seq, T0 + v["t"], v["source"], v["wait"], v["vehicles"], v["km"], v["status"])


def record(t: int, event_id: str, lane: str = "car", **kw: Any) -> dict[str, Any]:
    rec = {
        "event_id": event_id,
        "crossing_id": "x",
        "from_country": "RU",
        "to_country": "GE",
        "traffic_class": lane,
        "observed_at": t,
        "source": {"type": "crowd", "name": kw.pop("source", "s"), "url": None},
        "wait_minutes": kw.pop("wait", 10),
        "queue_vehicles": None,
        "queue_length_km": None,
        "status": "open",
    }
    rec.update(kw)
    return rec


def newest(rows: list[dict[str, Any]], into: dict[tuple, dict[str, Any]]) -> None:
    for row in rows:
        key = (row["traffic_class"], row["window_size"], row["window_start"])
        if key not in into or into[key]["version"] <= row["version"]:
            into[key] = row


# --- pane algebra -----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.lists(values, min_size=1, max_size=40), st.integers(1, 6), st.randoms())
def test_merging_panes_in_any_order_equals_aggregating_the_reports_directly(
    reports: list[dict[str, Any]], n_panes: int, rnd: random.Random
) -> None:
    direct = Pane()
    panes = [Pane() for _ in range(n_panes)]
    for seq, v in enumerate(reports, 1):
        _add(direct, seq, v)
        _add(panes[rnd.randrange(n_panes)], seq, v)
    rnd.shuffle(panes)
    merged = Pane()
    for p in panes:
        merged.merge(p)
    assert merged == direct
    assert merged.metrics() == direct.metrics()
    non_empty = [p for p in panes if p.reports]
    rnd.shuffle(non_empty)
    metrics, version = window_metrics(non_empty)
    assert metrics == direct.metrics()
    assert version == len(reports)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.integers(8, 24))
def test_window_of_panes_with_many_sketch_bins_equals_one_pane_of_all_its_reports(
    seed: int, n_panes: int
) -> None:
    rng = random.Random(seed)
    direct = Pane()
    panes = [Pane() for _ in range(n_panes)]
    for seq in range(1, 801):
        v = {
            "t": rng.randrange(6 * HOUR),
            "source": rng.choice("abc"),
            "wait": rng.choice([None, 0, *[rng.randrange(20160)] * 8]),
            "vehicles": rng.choice([None, rng.randrange(100000)]),
            "km": rng.choice([None, rng.random() * 500]),
            "status": rng.choice(["open", "delay", "unknown"]),
        }
        _add(direct, seq, v)
        _add(panes[rng.randrange(n_panes)], seq, v)
    non_empty = [p for p in panes if p.reports]
    assert sum(len(p.w_sketch.bins) for p in non_empty) > 160  # bins are merged before sorting

    metrics, version = window_metrics(non_empty)

    assert list(metrics.items()) == list(direct.metrics().items())  # key order included
    assert version == 800


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 500, allow_nan=False), min_size=1, max_size=30), st.randoms())
def test_float_mean_is_exact_whatever_the_merge_order(xs: list[float], rnd: random.Random) -> None:
    from fractions import Fraction

    panes = [Pane() for _ in xs]
    for seq, (p, x) in enumerate(zip(panes, xs, strict=True), 1):
        p.add(seq, T0, "s", None, None, x, "unknown")
    rnd.shuffle(panes)
    metrics, _ = window_metrics(panes)
    assert metrics["queue_length_km_avg"] == float(sum(map(Fraction, xs)) / len(xs))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 20160), min_size=1, max_size=200))
def test_sketch_quantiles_equal_ddsketch_and_stay_within_one_percent_of_the_rank_quantile(
    waits: list[int],
) -> None:
    ours, theirs = QuantileSketch(), DDSketch(0.01)
    for w in waits:
        ours.add(w)
        theirs.add(w)
    ordered = sorted(waits)
    for q in (0.5, 0.9):
        assert ours.quantile(q) == theirs.get_quantile_value(q)
        exact = ordered[int(q * (len(ordered) - 1))]
        assert abs(ours.quantile(q) - exact) <= 0.01 * exact + 1e-9  # type: ignore[operator]


# --- duplicates and replays -------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    # within the de-duplication horizon (largest window + grace = 26 h)
    st.lists(st.tuples(st.integers(0, 20 * HOUR), st.integers(0, 300)), min_size=1, max_size=60),
    st.data(),
)
def test_feeding_a_duplicate_changes_nothing(
    reports: list[tuple[int, int]], data: st.DataObject
) -> None:
    state = CrossingState("x", CONFIG)
    for i, (t, wait) in enumerate(reports):
        state.apply(record(T0 + t, f"e{i}", wait=wait), 0, i)
    before = encode_state(state)
    i = data.draw(st.integers(0, len(reports) - 1))
    conflicting = record(T0 + data.draw(st.integers(0, 30 * HOUR)), f"e{i}", wait=9, lane="bus")
    assert state.apply(conflicting, 0, len(reports)) is Outcome.DUPLICATE
    # Only the position and the duplicate counter moved.
    restored = decode_state(before, CONFIG)
    restored.applied[0] = len(reports)
    restored.counters.duplicates += 1
    assert encode_state(state) == encode_state(restored)
    assert state.take_changed() == decode_state(before, CONFIG).take_changed()


def test_a_replayed_log_position_is_skipped_exactly() -> None:
    state = CrossingState("x", CONFIG)
    assert state.apply(record(T0, "a"), 3, 10) is Outcome.ACCEPTED
    assert state.apply(record(T0 + MIN, "b"), 3, 11) is Outcome.ACCEPTED
    snapshot = encode_state(state)
    assert state.apply(record(T0 + MIN, "b"), 3, 11) is Outcome.REPLAYED
    assert state.apply(record(T0 + 2 * MIN, "c"), 3, 9) is Outcome.REPLAYED
    assert state.counters.replayed == 2
    state.counters.replayed = 0
    assert encode_state(state) == snapshot


# --- the lateness rule ------------------------------------------------------------------------


def _open_windows(t: int, watermark: int | None) -> set[tuple[str, int]]:
    """Brute force: every window containing t whose end + grace exceeds the watermark."""
    out = set()
    for name, size, step in (
        ("1h", HOUR, 5 * MIN),
        ("3h", 3 * HOUR, 15 * MIN),
        ("24h", 24 * HOUR, HOUR),
    ):
        start = t - t % step
        while start + size > t:
            if watermark is None or start + size + 2 * HOUR > watermark:
                out.add((name, start))
            start -= step
    return out


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 48 * HOUR), st.integers(-30 * HOUR, 10 * HOUR))
def test_a_late_report_counts_exactly_in_the_windows_still_open_before_it(
    first: int, offset: int
) -> None:
    state = CrossingState("x", CONFIG)
    state.apply(record(T0 + first, "first", lane="truck"), 0, 0)
    state.take_changed()
    t = T0 + first + offset
    outcome = state.apply(record(t, "late"), 0, 1)
    rows = [r for r in state.take_changed() if r["traffic_class"] == "car"]
    got = {(r["window_size"], r["window_start"]) for r in rows}
    expected = _open_windows(t, T0 + first)
    assert got == expected
    all_windows = _open_windows(t, None)
    if not expected:  # too late for every window: only the late counter moves
        assert outcome is Outcome.TOO_LATE
        assert state.counters.late == 1 and state.counters.accepted == 1 and state.seq == 1
        return
    assert (outcome is Outcome.LATE) == (expected != all_windows)
    assert state.counters.late == (1 if expected != all_windows else 0)
    assert state.counters.accepted == 2


def test_window_end_plus_grace_equal_to_the_watermark_is_closed() -> None:
    state = CrossingState("x", CONFIG)
    # Window 1h [T0, T0+1h) closes when the watermark reaches T0 + 1h + 2h.
    state.apply(record(T0 + 3 * HOUR, "w", lane="truck"), 0, 0)
    state.take_changed()
    state.apply(record(T0 + 10 * MIN, "r"), 0, 1)
    starts = {r["window_start"] for r in state.take_changed() if r["window_size"] == "1h"}
    assert T0 not in starts
    assert T0 + 5 * MIN in starts


def test_a_changed_window_that_closes_before_emission_keeps_its_content() -> None:
    state = CrossingState("x", CONFIG)
    state.apply(record(T0 + 1 * MIN, "a", wait=10), 0, 0)  # into 1h window [T0, T0+1h)
    state.apply(record(T0 + 3 * HOUR + 1, "b", lane="truck"), 0, 1)  # closes it
    state.apply(record(T0 + 2 * MIN, "c", wait=500), 0, 2)  # same pane, too late for it
    rows = {
        (r["traffic_class"], r["window_size"], r["window_start"]): r for r in state.take_changed()
    }
    closed = rows[("car", "1h", T0)]
    assert closed["reports"] == 1 and closed["wait_minutes_max"] == 10
    still_open = rows[("car", "3h", T0)]  # [T0, T0+3h) is open until T0+5h: it takes c
    assert still_open["reports"] == 2 and still_open["wait_minutes_max"] == 500


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40 * HOUR), st.booleans()), min_size=1, max_size=80),
    st.randoms(),
)
def test_windows_do_not_depend_on_when_they_are_emitted(
    reports: list[tuple[int, bool]], rnd: random.Random
) -> None:
    """Emitting after every report or once at the end gives the same newest windows."""
    eager, lazy = CrossingState("x", CONFIG), CrossingState("x", CONFIG)
    seen_eager: dict[tuple, dict[str, Any]] = {}
    seen_lazy: dict[tuple, dict[str, Any]] = {}
    for i, (t, dup) in enumerate(reports):
        rec = record(
            T0 + t, f"e{i // 2 if dup else i}", wait=t % 997, status=rnd.choice(["open", "unknown"])
        )
        eager.apply(rec, 0, i)
        lazy.apply(rec, 0, i)
        newest(eager.take_changed(), seen_eager)
        if rnd.random() < 0.2:
            newest(lazy.take_changed(), seen_lazy)
    newest(lazy.take_changed(), seen_lazy)
    assert seen_eager == seen_lazy


# --- state and settings -----------------------------------------------------------------------


def test_state_round_trips_through_its_changelog_bytes() -> None:
    state = CrossingState("x", CONFIG)
    for i in range(300):
        state.apply(record(T0 + i * 7 * MIN, f"e{i}", wait=i, queue_length_km=i / 7), 0, i)
        if i % 50 == 0:
            state.take_changed()
    data = encode_state(state)
    assert encode_state(decode_state(data, CONFIG)) == data


def test_state_for_other_windows_is_refused_with_a_way_out() -> None:
    data = encode_state(CrossingState("x", CONFIG))
    other = AggregationConfig.from_spec("1h:1h:10m", "2h")
    with pytest.raises(StateFormatError, match="QUEUEWATCH_AGGREGATOR_GROUP"):
        decode_state(data, other)


def test_state_stays_bounded_as_event_time_moves_on() -> None:
    state = CrossingState("x", CONFIG)
    for i in range(3000):  # 3000 reports, one every 2 minutes: 100 hours
        state.apply(record(T0 + i * 2 * MIN, f"e{i}"), 0, i)
    assert len(state.dedup) <= (26 * HOUR) // (2 * MIN) + 1
    panes = state.lanes[("RU", "GE", "car")]
    assert len(panes[0].panes) <= (3 * HOUR) // (5 * MIN) + 1
    assert len(panes[2].panes) <= 26 + 1


def test_window_spec_errors_say_what_is_expected() -> None:
    assert parse_duration_ms("5m") == 300_000
    assert [f.pane for f in parse_families("1h:1h:5m,90m:90m:20m")] == [300_000, 600_000]
    with pytest.raises(ConfigurationError, match="name:size:step"):
        parse_families("1h:1h")
    with pytest.raises(ConfigurationError, match="unit"):
        parse_duration_ms("5 minutes")


# --- too-late reports and the size of a state -------------------------------------------------


def test_a_report_too_late_for_every_window_changes_only_the_late_counter() -> None:
    state = CrossingState("x", CONFIG)
    state.apply(record(T0 + 30 * HOUR, "live"), 0, 0)
    state.take_changed()
    before = encode_state(state)
    # 24h [T0, T0+24h) is the newest window holding T0 + 10 min; it closed at T0 + 26h.
    assert state.apply(record(T0 + 10 * MIN, "old"), 0, 1) is Outcome.TOO_LATE
    assert state.counters.late == 1 and state.seq == 1 and "old" not in state.dedup
    assert state.take_changed() == []
    after = decode_state(encode_state(state), CONFIG)
    assert (after.counters.late, after.applied) == (1, {0: 1})
    assert (
        encode_state(state)
        .replace(b'"n":[1,0,1,0]', b'"n":[1,0,0,0]')
        .replace(b"[[0,1]]", b"[[0,0]]")
        == before
    )
    # A re-send of it is too late again: nothing remembers it, nothing needs to.
    assert state.apply(record(T0 + 10 * MIN, "old"), 0, 2) is Outcome.TOO_LATE
    assert state.counters.late == 2 and state.seq == 1


def test_a_report_one_ms_inside_the_newest_window_grace_is_still_counted() -> None:
    state = CrossingState("x", CONFIG)
    state.apply(record(T0 + 26 * HOUR - 1, "live", lane="truck"), 0, 0)
    assert state.apply(record(T0 + 10 * MIN, "old"), 0, 1) is Outcome.LATE
    assert state.seq == 2 and "old" in state.dedup


def test_a_backfill_of_300k_historical_reports_for_a_live_crossing_keeps_its_state_small() -> None:
    """Before: every historical event id was kept until the watermark moved (15.7 MiB here)."""
    state = CrossingState("x", CONFIG)
    live = T0 + 400 * 24 * HOUR
    state.apply(record(live, "live"), 0, 0)
    state.take_changed()
    small = len(encode_state(state))
    for i in range(300_000):  # a year of history, one report every 105 s
        outcome = state.apply(record(T0 + i * 105_000, f"backfill-{i:06d}"), 0, i + 1)
        assert outcome is Outcome.TOO_LATE
    assert len(state.dedup) == 1
    assert len(encode_state(state)) <= small + 16  # the counters' digits, nothing per report


# --- sealing quiet crossings ------------------------------------------------------------------

HORIZON = CONFIG.dedup_horizon  # 26 h: the largest window plus the grace


def test_a_crossing_is_sealed_only_once_its_partition_clock_is_the_dedup_horizon_past_it() -> None:
    state = CrossingState("x", CONFIG)
    for i in range(50):
        state.apply(record(T0 + i * 10 * MIN, f"e{i}", wait=i), 0, i)
    state.take_changed()
    wm = state.watermark
    big = len(encode_state(state))
    assert not state.seal_if_idle(wm + HORIZON - 1)
    assert state.seal_if_idle(wm + HORIZON)
    assert not state.seal_if_idle(wm + 10 * HORIZON)  # sealed already
    data = encode_state(state)
    assert len(data) < 300 < big
    again = decode_state(data, CONFIG)
    assert (again.sealed, again.seq, again.watermark, again.applied) == (wm, 50, wm, {0: 49})
    assert encode_state(again) == data


def test_sealing_keeps_the_unsent_windows_for_emission() -> None:
    plain, sealed = CrossingState("x", CONFIG), CrossingState("x", CONFIG)
    for i in range(20):
        for state in (plain, sealed):
            state.apply(record(T0 + i * 7 * MIN, f"e{i}", wait=3 * i), 0, i)
    assert sealed.seal_if_idle(sealed.watermark + HORIZON)
    assert sealed.lanes == {} and sealed.dedup == {}
    key = lambda r: (r["window_size"], r["window_start"])  # noqa: E731
    assert sorted(sealed.take_changed(), key=key) == sorted(plain.take_changed(), key=key)


def test_after_sealing_windows_that_started_by_the_watermark_take_nothing_and_seq_goes_on() -> None:
    state = CrossingState("x", CONFIG)
    state.apply(record(T0 + 10 * HOUR + 2 * MIN, "a"), 0, 0)
    state.take_changed()
    wm = state.watermark
    state.seal_if_idle(wm + HORIZON)
    # Older than the watermark: every window holding it started before: too late.
    assert state.apply(record(wm - 30 * MIN, "b"), 0, 1) is Outcome.TOO_LATE
    # A re-send of the sealed report's id is new (ids are forgotten) but too late as well.
    assert state.apply(record(wm, "a"), 0, 2) is Outcome.TOO_LATE
    # Just after the watermark: only windows starting after it count it.
    t = wm + 3 * MIN  # 10:05 -> 1h windows start at 10:05 (open), 3h at 10:00 and before (sealed)
    assert state.apply(record(t, "c"), 0, 3) is Outcome.LATE
    rows = state.take_changed()
    assert rows and all(r["window_start"] > wm for r in rows)
    assert {r["window_size"] for r in rows} == {"1h"}
    assert {r["version"] for r in rows} == {2} and state.seq == 2
    # Past the largest window: a fresh start, every window counts it.
    assert state.apply(record(wm + 25 * HOUR, "d"), 0, 4) is Outcome.ACCEPTED
    assert {r["window_size"] for r in state.take_changed()} == {"1h", "3h", "24h"}


# --- the last resort: a record that would not fit --------------------------------------------


def test_a_flooded_crossing_keeps_the_longest_prefix_of_its_reports_that_fits() -> None:
    from queuewatch.aggregator.bound import Step, apply_steps, fit_prefix

    steps = [Step(record(T0 + i * 1000, f"flood-{i:05d}"), 0, i, T0) for i in range(200)]
    sizes = [
        len(encode_state(apply_steps(CrossingState("x", CONFIG), steps[:k]))) for k in range(201)
    ]
    assert sizes == sorted(sizes)  # each report adds an event id here
    limit = sizes[137] + 1

    def restore() -> CrossingState:
        return CrossingState("x", CONFIG)

    state, kept = fit_prefix(restore, steps, lambda s: len(encode_state(s)), limit)
    assert kept == 137 and len(encode_state(state)) == sizes[137]
    assert state.applied == {0: 136}
    whole, kept = fit_prefix(restore, steps, lambda s: len(encode_state(s)), sizes[200])
    assert kept == 200 and encode_state(whole) == encode_state(apply_steps(restore(), steps))
