"""Late reports, end to end: what ClickHouse shows after a report arrives after its window ended.

The rule (``aggregator/windows.py``): a window takes a report while
``window_end + grace > watermark``, the watermark being the crossing's newest event time seen
before the report. Here grace is 30 min and the reports of one lane arrive in this order (one
key, so one partition, so this order):

1. A at 10:10 (wait 100) and B at 11:20: the 1 h window [10:00, 11:00) has ended (the
   watermark is 11:20) but is still within its grace;
2. C at 10:40 (wait 300), late but within grace: ClickHouse's row of [10:00, 11:00) is
   corrected from 1 report to 2, max 100 to 300;
3. D at 12:00, then E at 10:50 (wait 999), later than the grace for windows that ended by
   11:30: E lands in exactly the windows with ``end > 11:30`` of every family and in none of
   the others, and [10:00, 11:00) keeps A and C.
"""

from __future__ import annotations

import time
from pathlib import Path
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
GRACE = 30 * MIN
LANE = ("ge-ru-verkhny-lars", "RU", "GE")
#: (name, size, step) of the default families.
FAMILIES = [("1h", HOUR, 5 * MIN), ("3h", 3 * HOUR, 15 * MIN), ("24h", 24 * HOUR, HOUR)]


def windows(env: SinkEnv) -> dict[tuple[str, int], dict[str, Any]]:
    rows = query_rows(
        env,
        "SELECT window_size, toUnixTimestamp64Milli(window_start) AS start, reports, "
        "wait_minutes_max FROM crossing_windows FINAL "
        f"WHERE crossing_id = '{LANE[0]}' AND traffic_class = 'car'",
    )
    return {(r["window_size"], int(r["start"])): r for r in rows}


def containing(at: int) -> list[tuple[str, int, int]]:
    """(family, start, end) of every window of the default families that holds ``at``."""
    out = []
    for name, size, step in FAMILIES:
        start = at - at % step
        while start > at - size:
            out.append((name, start, start + size))
            start -= step
    return out


@pytest.mark.parametrize("output", ["windows", "contributions"])
def test_a_late_report_within_grace_corrects_an_ended_window_and_a_later_one_only_open_windows(
    bootstrap: str, tmp_path: Path, output: str
) -> None:
    """Both outputs: the windows emitted by the aggregator, or assembled in ClickHouse from
    its contributions (``QUEUEWATCH_AGGREGATOR_OUTPUT``), give the same rows."""
    env = new_env(bootstrap, tmp_path, QUEUEWATCH_AGGREGATOR_OUTPUT=output)
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
        QUEUEWATCH_AGGREGATOR_GRACE="30m",
        QUEUEWATCH_AGGREGATOR_OUTPUT=output,
        QUEUEWATCH_CONTRIBUTIONS_TOPIC=env.contributions_topic,
    )
    now = int(time.time() * 1000)
    ten = now - now % (24 * HOUR) - 2 * 24 * HOUR + 10 * HOUR  # 10:00 UTC two days ago

    def send(at: int, wait: int | None = None) -> None:
        publish(
            bootstrap,
            env.reports_topic,
            [report_message(*LANE, at, "official_feed", "fts-customs", wait_minutes=wait)],
        )

    aggregator.start()
    sinks = SinkProcess(env, tmp_path / "sink.log")
    try:
        sinks.wait_serving()
        hour = ("1h", ten)
        send(ten + 10 * MIN, 100)  # A
        send(ten + 80 * MIN, 20)  # B: the watermark is 11:20, [10:00, 11:00) has ended
        wait_until(
            lambda: (
                ("1h", ten + 80 * MIN) in windows(env)
                and windows(env).get(hour, {}).get("wait_minutes_max") == 100
            ),
            120,
            "A and B in ClickHouse",
            sinks,
        )
        assert windows(env)[hour]["reports"] == 1

        send(ten + 40 * MIN, 300)  # C: late by 40 min, within the 30 min grace of 11:00
        wait_until(
            lambda: windows(env)[hour]["reports"] == 2, 120, "C to correct the ended window", sinks
        )
        assert windows(env)[hour]["wait_minutes_max"] == 300

        send(ten + 2 * HOUR, 20)  # D: the watermark is 12:00
        e_at = ten + 50 * MIN
        send(e_at, 999)  # E: too late for every window that ended by 11:30
        accepting = [(n, s) for n, s, end in containing(e_at) if end + GRACE > ten + 2 * HOUR]
        refusing = [(n, s) for n, s, end in containing(e_at) if end + GRACE <= ten + 2 * HOUR]
        wait_until(
            lambda: all(windows(env).get(k, {}).get("wait_minutes_max") == 999 for k in accepting),
            120,
            "E in the windows that still accept it",
            sinks,
        )
        got = windows(env)
        # 1 h: the windows starting 10:35 to 10:50; 3 h: 08:45 to 10:45; 24 h: all but one.
        assert {n for n, _ in accepting} == {"1h", "3h", "24h"}
        assert len([k for k in accepting if k[0] == "1h"]) == 4
        assert refusing, "some windows must have closed for the test to mean anything"
        for key in refusing:
            assert key in got, key  # A or C made them
            assert got[key]["wait_minutes_max"] != 999, key
        assert got[hour]["reports"] == 2 and got[hour]["wait_minutes_max"] == 300
        # where the rows came from: five contributions, or none
        (stored,) = query_rows(env, "SELECT count() AS n FROM crossing_contributions FINAL")
        assert int(stored["n"]) == (5 if output == "contributions" else 0)
    finally:
        aggregator.stop()
        if sinks.alive():
            sinks.stop()
