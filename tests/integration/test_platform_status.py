"""`queuewatch status` against the real broker and a real embedded ClickHouse folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

pytestmark = pytest.mark.integration


@pytest.fixture
def env(bootstrap: str, unique: str, tmp_path: Path) -> dict[str, str]:
    values = dict(os.environ)
    values.update(
        {
            "QUEUEWATCH_HOME": str(tmp_path),
            "QUEUEWATCH_KAFKA_BOOTSTRAP": bootstrap,
            "QUEUEWATCH_CLICKHOUSE_URL": f"chdb://{tmp_path / 'clickhouse'}",
            "QUEUEWATCH_REPORTS_TOPIC": f"reports-{unique}",
            "QUEUEWATCH_DLQ_TOPIC": f"dlq-{unique}",
            "QUEUEWATCH_WINDOWS_TOPIC": f"windows-{unique}",
            "QUEUEWATCH_REPORTS_PARTITIONS": "3",
            "QUEUEWATCH_AGGREGATOR_GROUP": f"agg-{unique}",
            "QUEUEWATCH_RAW_SINK_GROUP": f"raw-{unique}",
            "QUEUEWATCH_WINDOW_SINK_GROUP": f"win-{unique}",
        }
    )
    return values


def queuewatch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "queuewatch", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def status(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    result = queuewatch(env, "status", "--json")
    return result.returncode, json.loads(result.stdout)


def commit_to_end(bootstrap: str, group: str, topic: str, partitions: list[int]) -> None:
    """Commit ``group`` at the end of ``partitions`` (as a processor that read them all)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(tps)
    consumer.seek_to_end(*tps)
    for tp in tps:
        consumer.position(tp)  # resolves the lazy seek before the commit
    consumer.commit()
    consumer.close()


def test_status_reports_each_groups_lag_and_lag_nobody_consumes_is_stalled_until_read(
    env: dict[str, str], bootstrap: str, unique: str
) -> None:
    assert queuewatch(env, "topics").returncode == 0
    assert queuewatch(env, "migrate").returncode == 0
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(5):
        producer.send(f"reports-{unique}", value=b"x%d" % i, partition=i % 3)
    producer.flush(30)
    producer.close()

    # The raw sink's group has read and committed partition 0 (two events) only.
    commit_to_end(bootstrap, f"raw-{unique}", f"reports-{unique}", [0])

    code, report = status(env)
    assert report["topics"] == {f"reports-{unique}": 3, f"dlq-{unique}": 3, f"windows-{unique}": 3}
    lags = {g["group"]: g["lag"] for g in report["groups"]}
    assert lags == {f"agg-{unique}": 5, f"raw-{unique}": 3, f"win-{unique}": 0}
    assert report["clickhouse_reachable"] is True
    assert report["row_counts"] == {"queue_reports": 0, "crossing_windows": 0}
    # No processor runs: that lag stands still, and status must not call it healthy.
    assert code == 1
    assert report["healthy"] is False
    assert sorted(report["stalled"]) == [f"agg-{unique}", f"raw-{unique}"]
    assert any(
        f"STALLED: group raw-{unique} has lag 3 on reports-{unique} and no member" in p
        for p in report["problems"]
    ), report["problems"]

    # Once the groups have read everything, the same pipeline is healthy.
    commit_to_end(bootstrap, f"agg-{unique}", f"reports-{unique}", [0, 1, 2])
    commit_to_end(bootstrap, f"raw-{unique}", f"reports-{unique}", [0, 1, 2])
    code, report = status(env)
    assert code == 0, report["problems"]
    assert report["healthy"] is True
    assert report["stalled"] == []


def test_status_with_a_missing_topic_is_unhealthy_and_names_it(
    env: dict[str, str], unique: str
) -> None:
    assert queuewatch(env, "topics").returncode == 0
    assert queuewatch(env, "migrate").returncode == 0
    env["QUEUEWATCH_WINDOWS_TOPIC"] = f"never-created-{unique}"
    code, report = status(env)
    assert code == 1
    assert report["topics"][f"never-created-{unique}"] is None
    assert any(f"topic never-created-{unique} is missing" in p for p in report["problems"])


def test_status_without_migrated_tables_is_unhealthy(env: dict[str, str]) -> None:
    assert queuewatch(env, "topics").returncode == 0
    code, report = status(env)
    assert code == 1
    assert report["broker_reachable"] is True
    assert report["clickhouse_reachable"] is False
    assert report["clickhouse_error"]
