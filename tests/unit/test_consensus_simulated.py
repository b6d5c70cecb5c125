"""The simulator's September 2022 sources disagree as real ones did, and the aggregator's
consensus and confidence make sense of them (the simulator, the state and the rule together,
no broker)."""

from __future__ import annotations

import collections
from typing import Any

import pytest

from queuewatch.aggregator.state import AggregationConfig, CrossingState
from queuewatch.contract.validation import parse_json_report
from queuewatch.producers.simulator import SimulationConfig, generate

LARS = "ge-ru-verkhny-lars"
HOUR = 3_600_000


@pytest.fixture(scope="module")
def lars_rows() -> list[dict[str, Any]]:
    """Every window row the state emits for Verkhny Lars over two simulated crisis days."""
    config = AggregationConfig.from_spec("1h:1h:5m,3h:3h:15m,24h:24h:1h", "2h")
    state = CrossingState(LARS, config)
    rows: list[dict[str, Any]] = []
    offset = 0
    for sim in generate(SimulationConfig(seed=2022, count=40_000, invalid_share=0.0)):
        record = parse_json_report(sim.report, now_ms=sim.arrival_ms + HOUR)
        if record["crossing_id"] != LARS:
            continue
        state.apply(record, 0, offset)
        offset += 1
        if offset % 50 == 0:
            rows.extend(state.take_changed())
    rows.extend(state.take_changed())
    return rows


def test_the_simulated_sources_disagree_within_an_hour(lars_rows: list[dict[str, Any]]) -> None:
    judged = [r for r in lars_rows if r["window_size"] == "1h" and r["source_wait_minutes_max"]]
    assert judged, "no 1h window with waits"
    spreads = [r["wait_spread"] for r in judged if r["wait_spread"] is not None]
    assert max(spreads) > 0.5  # crowd noise and hour-rounded statements against the feed
    kinds = collections.Counter(k for r in judged for k in r["sources_by_type"])
    assert {"official_statement", "journalist", "crowd"} <= set(kinds)


def test_every_confidence_grade_occurs_with_its_reasons(lars_rows: list[dict[str, Any]]) -> None:
    by = collections.defaultdict(list)
    for r in lars_rows:
        if r["window_size"] in ("1h", "3h"):
            by[r["confidence"]].append(r)
    assert set(by) == {"high", "medium", "low"}
    assert all(r["confidence_reasons"] for rows in by.values() for r in rows)
    assert any("agree within" in r["confidence_reasons"][0] for r in by["high"])
    # 24-hour windows carry no consensus: their fields are the schema's defaults.
    day = [r for r in lars_rows if r["window_size"] == "24h"]
    assert day and all(r["confidence"] == "unknown" and not r["sources_by_type"] for r in day)


def test_the_consensus_stays_within_the_sources_latest_values(
    lars_rows: list[dict[str, Any]],
) -> None:
    for r in lars_rows:
        if r["consensus_wait_minutes"] is not None:
            lo, hi = r["source_wait_minutes_min"], r["source_wait_minutes_max"]
            assert lo <= r["consensus_wait_minutes"] <= hi
