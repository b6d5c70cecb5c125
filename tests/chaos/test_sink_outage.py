"""A ClickHouse that fails every write for 30 s: the sinks pause, commit nothing meanwhile,
retry with backoff and catch up afterwards with nothing lost and nothing doubled.

The failure is injected by wrapping the real writer (the sink code is otherwise unchanged):
once the trigger file exists, every write raises ClickHouse's NETWORK_ERROR for 30 s.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.integration.test_sinks_harness import (
    CATCH_UP_TIMEOUT_S,
    SinkProcess,
    committed_total,
    lag,
    make_reports,
    new_env,
    publish,
    query_rows,
    wait_until,
)

pytestmark = pytest.mark.chaos

OUTAGE_S = 30.0

FLAKY_SINK = """
import os, sys, time
from pathlib import Path
from queuewatch.cli.app import setup_logging
from queuewatch.clickhouse.exceptions import ClickHouseError
from queuewatch.sinks.runner import default_writer, run_sinks

TRIGGER = Path(os.environ["TEST_OUTAGE_TRIGGER"])
OUTAGE_S = float(os.environ["TEST_OUTAGE_S"])
started = []

class FailingClickHouse:
    '''The real writer, except that writes fail for OUTAGE_S once TRIGGER exists.'''

    def __init__(self, inner):
        self.inner = inner

    def write(self, rows, token):
        if TRIGGER.exists():
            if not started:
                started.append(time.monotonic())
            if time.monotonic() - started[0] < OUTAGE_S:
                raise ClickHouseError("injected outage", 210, "NETWORK_ERROR", retryable=True)
            Path(str(TRIGGER) + ".over").touch()
        self.inner.write(rows, token)

setup_logging("INFO")
run_sinks(["raw", "windows"], writer_factory=lambda c, s: FailingClickHouse(default_writer(c, s)))
"""


def test_thirty_second_clickhouse_failure_pauses_commits_nothing_then_catches_up(
    bootstrap: str, tmp_path: Path
) -> None:
    trigger = tmp_path / "outage"
    env = new_env(
        bootstrap,
        tmp_path,
        QUEUEWATCH_SINK_BATCH_ROWS="250",
        QUEUEWATCH_SINK_RETRY_INITIAL_S="0.5",
        QUEUEWATCH_SINK_RETRY_MAX_S="4",
        TEST_OUTAGE_TRIGGER=str(trigger),
        TEST_OUTAGE_S=str(OUTAGE_S),
    )
    before = make_reports(1000, seed=21)
    during = make_reports(2000, seed=22)
    publish(bootstrap, env.reports_topic, before.messages)
    sink = SinkProcess(env, tmp_path / "sink.log", ["-c", FLAKY_SINK])
    try:
        sink.wait_serving()
        wait_until(
            lambda: lag(bootstrap, env.raw_group, env.reports_topic) == 0,
            CATCH_UP_TIMEOUT_S,
            "the first wave",
            sink,
        )
        trigger.touch()
        publish(bootstrap, env.reports_topic, during.messages)
        wait_until(
            lambda: "ClickHouse write failed" in sink.output(), 60, "the outage to bite", sink
        )
        committed_at_failure = committed_total(bootstrap, env.raw_group, env.reports_topic)
        time.sleep(5)  # the outage lasts 30 s from the first failure
        committed_later = committed_total(bootstrap, env.raw_group, env.reports_topic)
        outage_still_on = not Path(f"{trigger}.over").exists()
        if outage_still_on:
            assert committed_later == committed_at_failure, "committed during the outage"
            assert lag(bootstrap, env.raw_group, env.reports_topic) > 0
        # Only the batch in hand is held while paused: memory stays bounded.
        held = [int(n) for n in re.findall(r"(\d+) rows held", sink.output())]
        assert held and max(held) <= 250

        wait_until(
            lambda: lag(bootstrap, env.raw_group, env.reports_topic) == 0,
            OUTAGE_S + CATCH_UP_TIMEOUT_S,
            "the catch-up after the outage",
            sink,
        )
        assert "resuming consumption" in sink.output()
        rows = query_rows(
            env, "SELECT crossing_id, event_id, wait_minutes FROM queue_reports FINAL"
        )
        got = {(r["crossing_id"], r["event_id"]): r["wait_minutes"] for r in rows}
        assert len(rows) == len(got)
        assert got == before.expected | during.expected
    finally:
        code = sink.stop()
    assert code == 0
