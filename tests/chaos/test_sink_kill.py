"""SIGKILL of `queuewatch sink all` while reports stream in, then a restart: the projections
end with every accepted report exactly once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer

from tests.integration.test_sinks_harness import (
    CATCH_UP_TIMEOUT_S,
    SinkProcess,
    committed_total,
    lag,
    make_reports,
    make_windows,
    new_env,
    publish,
    query_rows,
    wait_until,
)

pytestmark = pytest.mark.chaos


def test_sigkill_mid_batch_then_restart_loses_and_doubles_no_report(
    bootstrap: str, tmp_path: Path
) -> None:
    # Small batches written every 0.3 s, so the kill lands between a write and its commit or
    # in a half-filled batch, never after everything is settled.
    env = new_env(
        bootstrap,
        tmp_path,
        QUEUEWATCH_SINK_BATCH_ROWS="200",
        QUEUEWATCH_SINK_BATCH_SECONDS="0.3",
    )
    reports = make_reports(4000, seed=11)
    windows, reference = make_windows(keys=30, versions=4, seed=11)
    half = len(reports.messages) // 2
    publish(bootstrap, env.reports_topic, reports.messages[:half])
    publish(bootstrap, env.windows_topic, windows)

    first = SinkProcess(env, tmp_path / "first.log")
    first.wait_serving()

    # Keep reports flowing while the sink works, then kill it in the middle of that.
    def feed() -> None:
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        try:
            for i, (key, value) in enumerate(reports.messages[half:]):
                producer.send(env.reports_topic, key=key, value=value)
                if i % 100 == 99:
                    producer.flush()
                    time.sleep(0.02)
            producer.flush()
        finally:
            producer.close()

    feeder = threading.Thread(target=feed)
    feeder.start()
    wait_until(
        lambda: committed_total(bootstrap, env.raw_group, env.reports_topic) > 0,
        CATCH_UP_TIMEOUT_S,
        "the first commit",
        first,
    )
    first.kill()
    killed_with_uncommitted = lag(bootstrap, env.raw_group, env.reports_topic)
    feeder.join()
    assert killed_with_uncommitted > 0, "the kill should leave records uncommitted"

    second = SinkProcess(env, tmp_path / "second.log")
    try:
        second.wait_serving()
        wait_until(
            lambda: (
                lag(bootstrap, env.raw_group, env.reports_topic) == 0
                and lag(bootstrap, env.window_group, env.windows_topic) == 0
            ),
            CATCH_UP_TIMEOUT_S,
            "the restarted sinks to catch up",
            second,
        )
        rows = query_rows(
            env, "SELECT crossing_id, event_id, wait_minutes FROM queue_reports FINAL"
        )
        got = {(r["crossing_id"], r["event_id"]): r["wait_minutes"] for r in rows}
        assert len(rows) == len(got), "a report appears twice in FINAL"
        assert got == reports.expected
        window_rows = query_rows(
            env, "SELECT count() AS n, max(version) AS v FROM crossing_windows FINAL"
        )
        assert window_rows[0]["n"] == len(reference)
    finally:
        assert second.stop() == 0
