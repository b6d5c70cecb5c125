"""The consensus, spread and confidence rule (aggregator/consensus.py): pure, by hand and by
property."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from queuewatch.aggregator.consensus import (
    SOURCE_TYPES,
    ConsensusRules,
    Readings,
    add_reading,
    judge,
    merge_readings,
    readings_from_obj,
    readings_to_obj,
    weighted_median,
)

MIN = 60_000
T0 = 1_663_900_000_000  # 2022-09-23, in the week of the queues
RULES = ConsensusRules()


def readings_of(*reports: tuple[str, str, int, int | None, int | None, float | None]) -> Readings:
    """(name, type, minutes after T0, wait, vehicles, km) in log order: seq is the position."""
    out: Readings = {}
    for seq, (name, kind, minute, wait, vehicles, km) in enumerate(reports, start=1):
        add_reading(out, name, kind, T0 + minute * MIN, seq, wait, vehicles, km)
    return out


def test_one_wild_crowd_value_leaves_the_consensus_at_the_official_figures() -> None:
    base = [
        ("customs", "official_feed", 0, 600, 2500, None),
        ("border-service", "official_statement", 5, 660, 2400, None),
        ("tv-rain", "journalist", 10, 720, None, 19.3),
    ]
    calm = judge(readings_of(*base), T0 + 10 * MIN, RULES)
    wild = judge(
        readings_of(*base, ("chat-123", "crowd", 12, 6000, 9000, None)), T0 + 12 * MIN, RULES
    )
    assert calm.wait_minutes == 660
    # The wild value is the largest: at most it moves the median to its neighbour, a real figure.
    assert wild.wait_minutes in {660, 720}
    assert wild.queue_vehicles == 2500
    assert (wild.source_wait_min, wild.source_wait_max) == (600, 6000)
    # It shows in the spread but does not make three agreeing officials look unsure.
    assert wild.wait_spread == (6000 - 600) / 6000
    assert wild.confidence == "high", wild.reasons


def test_whatever_a_single_crowd_value_is_it_stays_within_the_officials_range() -> None:
    rng = random.Random(7)
    for _ in range(200):
        officials = sorted(rng.randint(300, 900) for _ in range(3))
        reports = [
            (f"official-{i}", "official_feed", i, wait, None, None)
            for i, wait in enumerate(officials)
        ]
        crowd = ("someone", "crowd", 3, rng.choice([0, 1, 10_000, 20_160]), None, None)
        got = judge(readings_of(*reports, crowd), T0 + 3 * MIN, RULES)
        assert officials[0] <= got.wait_minutes <= officials[-1]  # type: ignore[operator]


def test_a_sources_second_report_replaces_its_first_metric_by_metric() -> None:
    r = readings_of(
        ("hotline", "crowd", 0, 300, 800, None),
        ("hotline", "crowd", 20, 420, None, None),
    )
    got = judge(r, T0 + 20 * MIN, RULES)
    assert got.wait_minutes == 420  # the later wait replaced the earlier one
    assert got.queue_vehicles == 800  # the later report left the count out: it is not erased
    assert got.sources_by_type == {"crowd": 1}
    assert got.confidence == "low"
    assert got.reasons == ["single crowd source"]


def test_a_report_observed_earlier_does_not_replace_a_later_one_of_the_same_source() -> None:
    r = readings_of(
        ("hotline", "crowd", 30, 400, None, None),
        ("hotline", "crowd", 10, 100, None, None),  # a late call, about an earlier moment
    )
    assert judge(r, T0 + 30 * MIN, RULES).wait_minutes == 400


def test_three_sources_including_official_that_agree_are_high_with_the_reason() -> None:
    r = readings_of(
        ("fts-customs", "official_feed", 0, 600, 2500, None),
        ("sensor-km3", "sensor", 10, 640, None, 20.0),
        ("reporter", "journalist", 20, 650, None, 19.3),
    )
    got = judge(r, T0 + 20 * MIN, RULES)
    assert got.confidence == "high"
    assert got.reasons == ["3 sources incl. official within 30 min agree within 20 %"]
    assert got.sources_by_type == {"journalist": 1, "official_feed": 1, "sensor": 1}


def test_disagreeing_sources_are_low_with_their_range() -> None:
    r = readings_of(
        ("reporter-a", "journalist", 0, 40, None, None),
        ("reporter-b", "journalist", 5, 180, None, None),
    )
    got = judge(r, T0 + 5 * MIN, RULES)
    assert got.confidence == "low"
    assert got.reasons == ["sources disagree: 40 min–3.0 h"]


def test_an_old_official_value_and_a_fresh_crowd_one_are_medium_and_say_why() -> None:
    r = readings_of(
        ("customs", "official_feed", 0, 600, None, None),
        ("chat", "crowd", 90, 640, None, None),
    )
    got = judge(r, T0 + 90 * MIN, RULES)
    assert got.confidence == "medium"
    assert "1 of 2 sources within 30 min of the newest report" in got.reasons
    assert "no official source within 30 min" in got.reasons


def test_no_values_at_all_are_low() -> None:
    got = judge(readings_of(("cam", "satellite", 0, None, None, None)), T0, RULES)
    assert (got.wait_minutes, got.confidence) == (None, "low")
    assert got.reasons == ["1 source, none gives a wait or a queue"]
    assert judge({}, None, RULES).reasons == ["no reports"]


def test_weighted_median_is_the_first_value_reaching_half_the_weight() -> None:
    assert weighted_median([(10, "a", 1.0), (20, "b", 1.0), (30, "c", 1.0)]) == 20
    assert weighted_median([(10, "a", 3.0), (20, "b", 1.0), (30, "c", 1.0)]) == 10
    assert weighted_median([(10, "a", 1.0), (30, "c", 0.0)]) == 10
    assert weighted_median([]) is None


def test_recency_halves_a_weight_every_half_life() -> None:
    assert RULES.weight("official_feed", 0) == 1.0
    assert RULES.weight("official_feed", RULES.half_life_ms) == 0.5
    assert RULES.weight("crowd", 2 * RULES.half_life_ms) == 0.2 * 0.25
    assert RULES.weight("future-kind", 0) == RULES.credibility["crowd"]


reports_st = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]),
        st.sampled_from(SOURCE_TYPES),
        st.integers(0, 180),  # minute
        st.one_of(st.none(), st.integers(0, 3000)),
        st.one_of(st.none(), st.integers(0, 5000)),
        st.one_of(st.none(), st.floats(0, 40, allow_nan=False)),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(reports_st, st.randoms(use_true_random=False))
def test_readings_are_the_same_in_any_split_and_order_of_merges(
    reports: list[tuple[str, str, int, int | None, int | None, float | None]],
    rnd: random.Random,
) -> None:
    """Panes of different partitions or workers, merged in any order, give one consensus.

    Each report keeps its seq (its place in the crossing's log); equal-time reports of
    different sources are then ordered only by the merge, which must not matter.
    """
    numbered = list(enumerate(reports, start=1))
    whole: Readings = {}
    for seq, (name, kind, minute, wait, vehicles, km) in numbered:
        add_reading(whole, name, kind, T0 + minute * MIN, seq, wait, vehicles, km)
    rnd.shuffle(numbered)
    parts: list[Readings] = [{} for _ in range(3)]
    for seq, (name, kind, minute, wait, vehicles, km) in numbered:
        add_reading(parts[rnd.randrange(3)], name, kind, T0 + minute * MIN, seq, wait, vehicles, km)
    rnd.shuffle(parts)
    merged: Readings = {}
    for part in parts:
        merge_readings(merged, part)
    assert readings_to_obj(merged) == readings_to_obj(whole)
    ref = max(T0 + minute * MIN for _, _, minute, *_ in reports)
    assert judge(merged, ref, RULES) == judge(whole, ref, RULES)
    assert readings_to_obj(readings_from_obj(readings_to_obj(whole))) == readings_to_obj(whole)


def test_a_state_written_before_readings_reads_as_none() -> None:
    assert readings_from_obj(None) == {}
