"""How sure we are, end to end: September 2022's sources through the real aggregator, the
window sink and chdb, read from ``crossing_status`` and checked against values worked out by
hand below (the rule: ``aggregator/consensus.py``, docs/consumers.md).

The reports are the shapes of that week, moved to the last hours so that freshness, which is
the wall clock's, means something: a customs count of cars at Verkhny Lars, the Georgian
ministry's rounded statement an hour late, a journalist's "12-mile line", relocation-chat
waits of which the latest is wild, a traveller phoning about a 20-mile queue at Syrym
(Uralsk) two hours after he saw it, two reporters at Taskala who disagree, and a crossing
whose feed went silent a day ago.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from queuewatch.settings import CommonSettings
from tests.integration.test_aggregator_harness import AggregatorProcess
from tests.integration.test_sinks_harness import (
    SinkEnv,
    SinkProcess,
    new_env,
    publish,
    query_rows,
    report_message,
    wait_until,
)

pytestmark = pytest.mark.integration

MIN = 60_000
HOUR = 60 * MIN
#: 12 and 20 miles, as the reporters said them, in kilometres (rounded as the simulator does).
TWELVE_MILES_KM = 19.3
TWENTY_MILES_KM = 32.2


def report(
    crossing: str, to: str, at: int, kind: str, name: str, **values: Any
) -> tuple[bytes, bytes]:
    return report_message(crossing, "RU", to, at, kind, name, **values)


@dataclass
class Pipeline:
    env: SinkEnv
    latest: int  # the newest report at Verkhny Lars, UTC ms
    rows: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def pipeline(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    home = tmp_path_factory.mktemp("consensus-home")
    env = new_env(bootstrap, home)
    now = int(time.time() * 1000)
    latest = now - now % (5 * MIN) - 3 * MIN  # between two 5-minute window starts
    lars, syrym, taskala, silent = (
        "ge-ru-verkhny-lars",
        "kz-ru-syrym",
        "kz-ru-taskala",
        "fi-ru-vaalimaa",
    )
    messages = [
        # A feed that went silent a day ago: six hourly counts, then nothing.
        *(
            report(silent, "FI", now - (31 - h) * HOUR, "official_feed", "fi-border",
                   wait_minutes=90)
            for h in range(6)
        ),
        report(lars, "GE", latest - 55 * MIN, "official_statement", "ge-mia", queue_vehicles=2300),
        report(
            lars, "GE", latest - 25 * MIN, "journalist", "tv-rain",
            wait_minutes=3000, queue_length_km=TWELVE_MILES_KM,
        ),
        report(
            lars, "GE", latest - 15 * MIN, "official_feed", "fts-customs",
            wait_minutes=2880, queue_vehicles=2500,
        ),
        report(lars, "GE", latest - 5 * MIN, "crowd", "chat-relocation", wait_minutes=2700),
        report(lars, "GE", latest, "crowd", "chat-relocation", wait_minutes=600),  # wild
        report(taskala, "KZ", latest - 20 * MIN, "journalist", "orda", wait_minutes=40),
        report(taskala, "KZ", latest - 10 * MIN, "journalist", "vlast", wait_minutes=180),
        # The hot-line call, published last: seen two hours before it was phoned in.
        report(
            syrym, "KZ", latest - 2 * HOUR, "crowd", "hotline-uralsk",
            wait_minutes=720, queue_length_km=TWENTY_MILES_KM,
        ),
    ]  # fmt: skip
    publish(bootstrap, env.reports_topic, messages)
    settings = CommonSettings(
        kafka_bootstrap=bootstrap,
        reports_topic=env.reports_topic,
        dlq_topic=env.dlq_topic,
        windows_topic=env.windows_topic,
    )
    aggregator = AggregatorProcess(settings, home, f"agg-{env.suffix}")
    aggregator.start()
    sinks = SinkProcess(env, home / "sink.log")
    try:
        sinks.wait_serving()

        def status() -> dict[str, dict[str, Any]]:
            return {r["crossing_id"]: r for r in query_rows(env, "SELECT * FROM crossing_status")}

        def complete() -> bool:
            assert aggregator.alive(), aggregator.logs()
            rows = status()
            return (
                len(rows) == 4
                and rows[lars]["reports_3h"] == 5
                and rows[syrym]["reports_3h"] == 1
                and rows[taskala]["reports_3h"] == 2
                and rows[silent]["reports_24h"] == 6
            )

        wait_until(complete, 120, "crossing_status to show every report", sinks)
        yield Pipeline(env, latest, status())
    finally:
        aggregator.stop()
        if sinks.alive():
            sinks.stop()


def test_three_agreeing_sources_with_customs_give_high_and_the_wild_chat_value_is_outvoted(
    pipeline: Pipeline,
) -> None:
    row = pipeline.rows["ge-ru-verkhny-lars"]
    # Weights (credibility x 0.5 ** (age / 30 min), ages to the newest report):
    #   wait: chat 600 (0.2 x 1), customs 2880 (1.0 x 0.5**0.5 = 0.707), tv-rain 3000
    #   (0.4 x 0.5**(25/30) = 0.224); half of 1.131 is reached at 2880.
    assert row["consensus_wait_minutes"] == 2880
    #   vehicles: ministry 2300 (0.8 x 0.5**(55/30) = 0.224), customs 2500 (0.707) -> 2500.
    assert row["consensus_queue_vehicles"] == 2500
    assert row["consensus_queue_length_km"] == TWELVE_MILES_KM  # the journalist alone
    assert (row["source_wait_minutes_min"], row["source_wait_minutes_max"]) == (600, 3000)
    assert row["wait_spread"] == pytest.approx(0.8)  # the wild value shows in the spread
    # The chat's first report (2700) was replaced by its second; last value says 600.
    assert row["wait_minutes"] == 600
    assert row["sources_by_type"] == {
        "crowd": 1,
        "journalist": 1,
        "official_feed": 1,
        "official_statement": 1,
    }
    # customs, tv-rain and the chat are within 30 min; among the credible ones (chat's 0.2 is
    # below a quarter of customs' 1.0) the waits differ by 4 %: high.
    assert row["confidence"] == "high"
    assert row["confidence_reasons"] == ["3 sources incl. official within 30 min agree within 20 %"]
    assert row["stale"] == 0


def test_a_single_late_hotline_call_is_low_and_says_why(pipeline: Pipeline) -> None:
    row = pipeline.rows["kz-ru-syrym"]
    assert row["consensus_wait_minutes"] == 720
    assert row["consensus_queue_length_km"] == TWENTY_MILES_KM
    assert row["confidence"] == "low"
    assert row["confidence_reasons"] == ["single crowd source"]
    assert row["freshness_s"] >= 2 * 3600  # observed two hours ago
    # One report in its day: it usually reports once a day, so two hours is not stale yet.
    assert row["usual_interval_s"] == 86400
    assert row["stale"] == 0


def test_two_reporters_far_apart_are_low_with_their_range(pipeline: Pipeline) -> None:
    row = pipeline.rows["kz-ru-taskala"]
    assert row["confidence"] == "low"
    assert row["confidence_reasons"] == ["sources disagree: 40 min–3.0 h"]
    # Equal credibility; the later one weighs more (0.4 against 0.4 x 0.5**(10/30)): 180.
    assert row["consensus_wait_minutes"] == 180


def test_a_lane_that_went_silent_stays_visible_as_stale_and_low(pipeline: Pipeline) -> None:
    row = pipeline.rows["fi-ru-vaalimaa"]
    assert row["usual_interval_s"] == 4 * 3600  # six reports in its last day
    assert row["freshness_s"] >= 26 * 3600
    assert row["stale"] == 1
    assert row["confidence"] == "low"
    assert row["confidence_event_time"] == "medium"  # one official feed, nothing recent besides
    reason = row["confidence_reasons"][0]
    assert reason.startswith("no report for 2") and reason.endswith("(stale: usually every 4 h)")


def test_old_window_rows_without_consensus_read_their_defaults(pipeline: Pipeline) -> None:
    rows = query_rows(
        pipeline.env,
        "SELECT window_size, confidence, confidence_reasons, sources_by_type "
        "FROM crossing_windows FINAL WHERE crossing_id = 'ge-ru-verkhny-lars' "
        "AND window_size = '24h' LIMIT 1",
    )
    assert rows == [
        {
            "window_size": "24h",
            "confidence": "unknown",
            "confidence_reasons": [],
            "sources_by_type": {},
        }
    ]
