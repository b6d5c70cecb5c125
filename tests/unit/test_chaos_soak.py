"""The chaos soak's pure parts: its seeded plan, its comparisons and its verdict (no broker)."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.support import soak_plan as p
from tests.support.soak_oracle import compare_raw, compare_windows
from tests.support.soak_pipeline import GroupLag
from tests.support.soak_run import SoakResult, wait_caught_up

KEY_FIELDS = ("crossing_id", "from_country", "to_country", "traffic_class", "window_size")
ROW = {
    "crossing_id": "ge-ru-verkhny-lars",
    "from_country": "RU",
    "to_country": "GE",
    "traffic_class": "car",
    "window_size": "1h",
    "window_start": 1_663_545_600_000,
    "window_end": 1_663_549_200_000,
    "reports": 3,
    "sources": 2,
    "wait_minutes_min": 10,
    "wait_minutes_max": 90,
    "wait_minutes_avg": 43.333333333333336,
    "wait_minutes_p50": 30.0,
    "wait_minutes_p90": 90.0,
    "wait_minutes_last": 90,
    "queue_vehicles_max": None,
    "queue_vehicles_avg": None,
    "queue_vehicles_last": None,
    "queue_length_km_max": 2.5,
    "queue_length_km_avg": 2.5,
    "queue_length_km_last": 2.5,
    "status_last": "delay",
    "last_observed_at": 1_663_547_000_000,
    "version": 7,
}


def test_a_plan_is_the_same_for_the_same_seed_and_differs_for_another() -> None:
    config = p.PlanConfig.for_minutes(10)
    assert p.make_plan(config, 5) == p.make_plan(config, 5)
    assert p.make_plan(config, 5) != p.make_plan(config, 6)


@pytest.mark.parametrize("seed", range(20))
def test_ci_plan_has_every_fault_each_ended_and_all_inside_the_run(seed: int) -> None:
    config = p.PlanConfig.ci()
    plan = p.make_plan(config, seed)
    counts = Counter(a.what for a in plan)
    assert counts[p.KILL_AGGREGATOR] == 2
    assert counts[p.KILL_SINK] == 2
    assert counts[p.KILL_BROKER] == counts[p.START_BROKER] == 1
    assert counts[p.BURST] == counts[p.KILL_AGGREGATOR_AGAIN] == 1
    assert counts[p.FREEZE_SINK] == counts[p.THAW_SINK] == 1
    assert counts[p.SCALE_UP] == counts[p.SCALE_DOWN] == 1
    assert plan == sorted(plan)
    assert all(config.lead_in_s <= a.at_s <= config.duration_s - config.lead_out_s for a in plan)


@pytest.mark.parametrize("seed", range(20))
def test_every_fault_ends_after_it_starts_and_a_burst_kills_again_seconds_later(
    seed: int,
) -> None:
    config = p.PlanConfig.for_minutes(30)
    plan = p.make_plan(config, seed)
    pairs = [
        (p.KILL_BROKER, p.START_BROKER),
        (p.FREEZE_SINK, p.THAW_SINK),
        (p.BURST, p.KILL_AGGREGATOR_AGAIN),
    ]
    for start, end in pairs:
        starts = [a.at_s for a in plan if a.what == start]
        ends = [a.at_s for a in plan if a.what == end]
        assert len(starts) == len(ends) > 0
        assert all(e >= s for s, e in zip(starts, ends, strict=True))
    burst = [a.at_s for a in plan if a.what in (p.BURST, p.KILL_AGGREGATOR_AGAIN)]
    gap = config.burst_gap_s[1]
    assert all(0 < b - a <= gap for a, b in zip(burst[::2], burst[1::2], strict=True))
    downs = [a.what for a in plan if a.what in (p.SCALE_DOWN, p.SCALE_DOWN_KILL)]
    assert downs[:2] == [p.SCALE_DOWN, p.SCALE_DOWN_KILL]  # a clean leave, then a killed one


def test_the_full_plan_grows_with_the_minutes() -> None:
    ten, thirty = p.PlanConfig.for_minutes(10), p.PlanConfig.for_minutes(30)
    assert (ten.aggregator_kills, ten.broker_kills, ten.outages) == (6, 2, 1)
    assert (thirty.aggregator_kills, thirty.broker_kills, thirty.outages) == (18, 6, 3)


def test_windows_equal_to_the_replay_show_no_difference() -> None:
    key = (*[ROW[k] for k in KEY_FIELDS], ROW["window_start"])
    diff = compare_windows({key: ROW}, [dict(ROW)])  # type: ignore[dict-item]
    assert (diff.wrong, diff.over_counted, diff.examples) == (0, 0, [])


def test_a_window_counting_a_report_twice_is_wrong_and_over_counted() -> None:
    key = (*[ROW[k] for k in KEY_FIELDS], ROW["window_start"])
    doubled = dict(ROW, reports=4)
    diff = compare_windows({key: ROW}, [doubled])  # type: ignore[dict-item]
    assert (diff.different, diff.over_counted) == (1, 1)
    assert "reports 3 != 4" in diff.examples[0]


def test_missing_unexpected_and_old_version_windows_are_each_counted() -> None:
    key = (*[ROW[k] for k in KEY_FIELDS], ROW["window_start"])
    other = dict(ROW, window_start=ROW["window_start"] + 300_000)  # type: ignore[operator]
    older = dict(ROW, version=6)
    assert compare_windows({key: ROW}, []).missing == 1  # type: ignore[dict-item]
    assert compare_windows({key: ROW}, [ROW, other]).unexpected == 1  # type: ignore[dict-item]
    assert compare_windows({key: ROW}, [older]).different == 1  # type: ignore[dict-item]


def test_raw_rows_lost_doubled_unexpected_and_wrong_copy_are_told_apart() -> None:
    expected = {("c", "a"): (0, 1), ("c", "b"): (0, 2), ("c", "d"): (1, 7)}
    rows = [
        {"crossing_id": "c", "event_id": "a", "kafka_partition": 0, "kafka_offset": 1},
        {"crossing_id": "c", "event_id": "a", "kafka_partition": 0, "kafka_offset": 1},
        {"crossing_id": "c", "event_id": "d", "kafka_partition": 1, "kafka_offset": 9},
        {"crossing_id": "c", "event_id": "z", "kafka_partition": 1, "kafka_offset": 3},
    ]
    diff = compare_raw(expected, rows)
    assert (diff.lost, diff.doubled, diff.unexpected, diff.wrong_copy) == (1, 1, 1, 1)
    assert diff.wrong == 4
    assert compare_raw(expected, rows[:1] + rows[2:3]).lost == 1


class FakeLags:
    """Lag readings in turn (the last one repeats)."""

    def __init__(self, *readings: dict[str, int]) -> None:
        self.readings = list(readings)

    def lags(self) -> list[GroupLag]:
        reading = self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]
        return [GroupLag(g, "t", lag, {0: -lag}) for g, lag in reading.items()]


def test_lag_at_zero_twice_in_a_row_is_caught_up() -> None:
    result = SoakResult(seed=1, minutes=1)
    lags = FakeLags({"agg": 5, "sink": 0}, {"agg": 0, "sink": 0}, {"agg": 0, "sink": 0})
    wait_caught_up(lags, 5.0, result, lambda _: None, check_every_s=0.01)
    assert not result.stalled and result.catch_up_s is not None


def test_a_group_whose_lag_does_not_move_is_a_stall_with_its_lag() -> None:
    result = SoakResult(seed=1, minutes=1)
    said: list[str] = []
    lags = FakeLags({"agg": 0, "sink": 0}, {"agg": 3416, "sink": 0})
    wait_caught_up(lags, 0.3, result, said.append, check_every_s=0.01)
    assert result.stalled and not result.ok
    assert [(g["group"], g["lag"]) for g in result.lags] == [("agg", 3416), ("sink", 0)]
    assert result.lags[0]["last_progress_s_ago"] > 0.1
    assert "STALLED" in said[-1] and "STALLED" in result.summary()
