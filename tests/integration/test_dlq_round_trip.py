"""`queuewatch dlq` against a real broker, a real aggregator and a real chdb sink (issue 14).

A report sent by a producer whose clock ran two hours behind is dead-lettered (its
observed_at looks 90 minutes in the future); once "fixed" (re-published now, with the
broker's current time) it must count once, however often it is re-published.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer

from queuewatch.aggregator.intake import INVALID_REPORT
from queuewatch.contract.codec import encode
from queuewatch.contract.schemas import QUEUE_REPORT, default_registry
from queuewatch.kafka.security import KafkaSecurity
from queuewatch.operations.dlq import H_REPUBLISHED_FROM, read_letters
from queuewatch.settings import CommonSettings
from tests.integration.test_aggregator_harness import (
    HOUR,
    MINUTE,
    AggregatorProcess,
    WindowReader,
    _report,
    read_all,
    reference_windows,
)
from tests.integration.test_sinks_harness import (
    CATCH_UP_TIMEOUT_S,
    SinkEnv,
    SinkProcess,
    new_env,
    query_rows,
    wait_until,
)

pytestmark = pytest.mark.integration

CROSSING = "test-crossing-dlq"


def dlq(env: SinkEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "queuewatch", "dlq", *args],
        env=env.environ(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_fixed_letter_republished_twice_counts_once_in_windows_and_raw_table(
    bootstrap: str, tmp_path: Path
) -> None:
    env = new_env(bootstrap, tmp_path)
    schema = default_registry().latest(QUEUE_REPORT)
    rng = random.Random(14)
    now = int(time.time() * 1000)
    good = [_report(rng, CROSSING, now - 3 * HOUR + i * 5 * MINUTE) for i in range(20)]
    late_clock = _report(rng, CROSSING, now - 30 * MINUTE)
    late_clock["wait_minutes"] = 42
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for rec in good:
        producer.send(env.reports_topic, key=CROSSING.encode(), value=encode(rec, schema))
    producer.send(
        env.reports_topic,
        key=CROSSING.encode(),
        value=encode(late_clock, schema),
        timestamp_ms=now - 2 * HOUR,  # the producer's clock, two hours behind
    )
    producer.flush(timeout=60)
    producer.close()

    common = CommonSettings(
        kafka_bootstrap=bootstrap,
        reports_topic=env.reports_topic,
        dlq_topic=env.dlq_topic,
        windows_topic=env.windows_topic,
    )
    agg = AggregatorProcess(common, tmp_path, f"agg-{env.suffix}")
    agg.start()
    sink = SinkProcess(env, tmp_path / "sink.log")
    try:
        security = KafkaSecurity()
        wait_until(
            lambda: len(read_letters(bootstrap, env.dlq_topic, security)) == 1,
            CATCH_UP_TIMEOUT_S,
            "the dead letter",
        )
        listed = dlq(env, "list", "--reason", INVALID_REPORT)
        assert listed.returncode == 0, listed.stderr
        assert f"{env.reports_topic}[" in listed.stdout and INVALID_REPORT in listed.stdout
        shown = dlq(env, "show", "1")
        assert shown.returncode == 0, shown.stderr
        assert "in the future" in shown.stdout and late_clock["event_id"] in shown.stdout

        first = dlq(env, "republish", "1")
        assert first.returncode == 0, first.stderr
        second = dlq(env, "republish", "--reason", INVALID_REPORT)
        assert second.returncode == 1
        assert "already re-published" in second.stderr

        copies = [
            m
            for m in read_all(bootstrap, env.reports_topic, len(good) + 2, 30)
            if any(name == H_REPUBLISHED_FROM for name, _ in m.headers)
        ]
        assert len(copies) == 1
        assert copies[0].key == CROSSING.encode()
        assert dict(copies[0].headers)[H_REPUBLISHED_FROM] == f"{env.dlq_topic}/0/0".encode()

        expected = reference_windows({CROSSING: [*good, late_clock]})
        reader = WindowReader(bootstrap, env.windows_topic)
        try:
            assert reader.wait_for(expected, CATCH_UP_TIMEOUT_S) == [], agg.logs()
        finally:
            reader.close()
        sink.wait_serving()
        sql = (
            "SELECT count() AS n, countIf(event_id = '{e}') AS fixed, "
            "anyIf(wait_minutes, event_id = '{e}') AS wait FROM queue_reports FINAL"
        ).format(e=late_clock["event_id"])
        wait_until(
            lambda: query_rows(env, sql)[0]["n"] == len(good) + 1,
            CATCH_UP_TIMEOUT_S,
            "the raw sink to write the re-published report",
            sink,
        )
        assert query_rows(env, sql)[0] == {"n": len(good) + 1, "fixed": 1, "wait": 42}
    finally:
        agg.stop()
        if sink.alive():
            sink.stop()
