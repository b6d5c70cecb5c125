"""Prometheus metrics of the real aggregator and `sink all`, scraped while reports flow.

The values must follow the reports: every message counted once by outcome, the lag back to
0, the rows written equal to the rows in ClickHouse, the latency histograms filled.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from queuewatch.platform.broker import free_port
from queuewatch.platform.metrics import scrape
from queuewatch.settings import CommonSettings
from tests.integration.test_aggregator_harness import AggregatorProcess, make_scenario
from tests.integration.test_sinks_harness import (
    SinkProcess,
    committed_total,
    lag,
    new_env,
    publish,
    query_rows,
    wait_until,
)

pytestmark = pytest.mark.integration


def total(samples: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in samples.items() if k.startswith(prefix))


def test_metrics_count_every_report_and_row_as_they_flow(bootstrap: str, tmp_path: Path) -> None:
    agg_port, sink_port = free_port(), free_port()
    env = new_env(bootstrap, tmp_path, QUEUEWATCH_SINK_METRICS_PORT=str(sink_port))
    settings = CommonSettings(
        kafka_bootstrap=bootstrap,
        reports_topic=env.reports_topic,
        dlq_topic=env.dlq_topic,
        windows_topic=env.windows_topic,
    )
    aggregator = AggregatorProcess(
        settings,
        tmp_path,
        f"agg-{env.suffix}",
        QUEUEWATCH_AGGREGATOR_METRICS_PORT=str(agg_port),
    )
    aggregator.start()
    sinks = SinkProcess(env, tmp_path / "sink.log")
    scenario = make_scenario(seed=3, crossings=3, per_crossing=80)
    half = len(scenario.messages) // 2
    try:
        sinks.wait_serving()

        def agg() -> dict[str, float]:
            assert aggregator.alive(), aggregator.logs()
            try:
                return scrape("127.0.0.1", agg_port)
            except OSError:
                return {}

        wait_until(lambda: "queuewatch_aggregator_messages_total" in agg(), 90, "metrics", sinks)
        before = agg()
        assert before["queuewatch_aggregator_messages_total"] == 0
        publish(bootstrap, env.reports_topic, scenario.messages[:half])
        wait_until(
            lambda: agg().get("queuewatch_aggregator_messages_total") == half,
            90,
            "the first half counted",
            sinks,
        )
        publish(bootstrap, env.reports_topic, scenario.messages[half:])
        n = len(scenario.messages)
        wait_until(
            lambda: (
                agg().get("queuewatch_aggregator_messages_total") == n
                and total(agg(), "queuewatch_aggregator_consumer_lag") == 0
            ),
            90,
            "every message counted and no lag",
            sinks,
        )
        figures = agg()
        by_outcome = {
            k.split('"')[1]: v
            for k, v in figures.items()
            if k.startswith("queuewatch_aggregator_reports_total{")
        }
        assert by_outcome["dead"] == len(scenario.invalid)
        assert sum(by_outcome.values()) == n  # each message has exactly one outcome
        valid = n - len(scenario.invalid)
        assert sum(v for k, v in by_outcome.items() if k != "dead") == valid
        assert by_outcome["duplicate"] > 0 and by_outcome["late"] > 0  # the scenario has both
        assert figures["queuewatch_aggregator_crossings"] == 3
        assert figures["queuewatch_aggregator_batch_seconds_count"] >= 2
        assert len([k for k in figures if k.startswith("queuewatch_crossing_freshness")]) == 3

        # Every valid message is a raw row, every window message a windows row, once each
        # (ClickHouse may have merged versions away since: FINAL counts are at most that).
        def written() -> tuple[float, float]:
            s = scrape("127.0.0.1", sink_port)
            return (
                s.get('queuewatch_sink_rows_written_total{sink="raw-sink"}', -1),
                s.get('queuewatch_sink_rows_written_total{sink="windows-sink"}', -1),
            )

        seen: list[object] = []

        def settled() -> bool:
            want = (valid, committed_total(bootstrap, env.window_group, env.windows_topic))
            seen[:] = [written(), want, lag(bootstrap, env.window_group, env.windows_topic)]
            # The aggregator counts a message before its windows are produced, so an empty
            # windows topic is "not yet", never "settled".
            return want[1] > 0 and seen[2] == 0 and seen[0] == want

        try:
            wait_until(settled, 120, "rows written to equal the rows sent", sinks)
        except AssertionError as exc:
            raise AssertionError(f"written, wanted, lag: {seen}") from exc
        in_table = query_rows(env, "SELECT count() AS n FROM queue_reports FINAL")[0]["n"]
        assert int(in_table) == by_outcome["accepted"] + by_outcome["late"] + by_outcome.get(
            "too_late", 0
        )  # one row per distinct report: re-sends collapse under FINAL
        s = scrape("127.0.0.1", sink_port)
        assert s["queuewatch_sink_flush_seconds_count"] >= 2
        assert s['queuewatch_sink_paused{sink="raw-sink"}'] == 0
        assert s['queuewatch_sink_last_commit_age_seconds{sink="raw-sink"}'] >= 0
    finally:
        aggregator.stop()
        if sinks.alive():
            sinks.stop()
