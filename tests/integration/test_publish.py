"""Publishing to a real broker: the SDK and `queuewatch publish` put exactly the valid reports
on the log, keyed by crossing, in order per crossing."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer

from queuewatch.contract.codec import decode
from queuewatch.contract.report import QueueReport
from queuewatch.contract.schemas import QUEUE_REPORT, default_registry
from queuewatch.contract.validation import ReportInvalid, parse_json_report
from queuewatch.kafka.producer import PublishError, ReportProducer
from queuewatch.kafka.topics import TopicSpec, ensure_topics
from queuewatch.producers.simulator import SimulationConfig, generate

pytestmark = pytest.mark.integration

SCHEMA = default_registry().latest(QUEUE_REPORT)


def read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 120.0) -> list[Any]:
    """Every message of ``topic`` from the start, waiting until ``expected`` have arrived."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    messages: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=1000).values():
                messages.extend(batch)
        # A moment more to catch anything beyond what was expected (there must be none).
        for batch in consumer.poll(timeout_ms=1000).values():
            messages.extend(batch)
    finally:
        consumer.close()
    return messages


def test_sdk_publishes_10000_simulated_reports_keyed_and_in_order(
    bootstrap: str, unique: str
) -> None:
    topic = f"reports-sdk-{unique}"
    ensure_topics(bootstrap, [TopicSpec(topic, 6)])
    items = list(generate(SimulationConfig(seed=11, count=10_000, invalid_share=0.0)))
    with ReportProducer(bootstrap, topic) as producer:
        for item in items:
            producer.publish(item.report)
    assert producer.published == 10_000

    messages = read_all(bootstrap, topic, 10_000)
    assert len(messages) == 10_000
    sent_by_crossing: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for item in items:
        sent_by_crossing[item.report["crossing_id"]].append(parse_json_report(item.report))
    got_by_crossing: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    partitions: dict[str, set[int]] = collections.defaultdict(set)
    for message in sorted(messages, key=lambda m: (m.partition, m.offset)):
        record = decode(message.value, SCHEMA)
        assert message.key == record["crossing_id"].encode()
        got_by_crossing[record["crossing_id"]].append(record)
        partitions[record["crossing_id"]].add(message.partition)
    assert all(len(p) == 1 for p in partitions.values())  # one crossing, one partition
    assert got_by_crossing == sent_by_crossing  # same content, same order per crossing


def test_sdk_refuses_invalid_reports_before_sending(bootstrap: str, unique: str) -> None:
    topic = f"reports-refuse-{unique}"
    ensure_topics(bootstrap, [TopicSpec(topic, 1)])
    items = list(generate(SimulationConfig(seed=5, count=2000, invalid_share=0.05)))
    refused = 0
    with ReportProducer(bootstrap, topic) as producer:
        for item in items:
            try:
                producer.publish(item.report)
            except ReportInvalid:
                refused += 1
    invalid = sum(1 for item in items if item.intentionally_invalid)
    assert invalid > 0 and refused == invalid
    assert len(read_all(bootstrap, topic, len(items) - invalid)) == len(items) - invalid


def test_sdk_accepts_an_already_parsed_record(bootstrap: str, unique: str) -> None:
    topic = f"reports-record-{unique}"
    ensure_topics(bootstrap, [TopicSpec(topic, 1)])
    item = next(s for s in generate(SimulationConfig(seed=2)) if s.valid)
    record = parse_json_report(item.report)
    with ReportProducer(bootstrap, topic) as producer:
        producer.publish(record)
        with pytest.raises(ReportInvalid):
            producer.publish({**record, "wait_minutes": 30000})
    [message] = read_all(bootstrap, topic, 1)
    assert decode(message.value, SCHEMA) == record


def test_sdk_publishes_a_typed_report_as_its_record(bootstrap: str, unique: str) -> None:
    topic = f"reports-typed-{unique}"
    ensure_topics(bootstrap, [TopicSpec(topic, 1)])
    item = next(s for s in generate(SimulationConfig(seed=3)) if s.valid)
    record = parse_json_report(item.report)
    report = QueueReport.from_record(record)
    with ReportProducer(bootstrap, topic) as producer:
        producer.publish(report)
        with pytest.raises(ReportInvalid):
            producer.publish(replace(report, from_country="XX"))
    [message] = read_all(bootstrap, topic, 1)
    assert decode(message.value, SCHEMA) == record


def test_publishing_to_a_missing_topic_raises_instead_of_dropping(
    bootstrap: str, unique: str
) -> None:
    item = next(s for s in generate(SimulationConfig(seed=2)) if s.valid)
    producer = ReportProducer(bootstrap, f"no-such-topic-{unique}", max_block_s=3)
    with pytest.raises(PublishError) as info:
        producer.publish(item.report)
        producer.flush(timeout_s=30)
    assert f"no-such-topic-{unique}" in str(info.value)
    producer.close(timeout_s=10)  # nothing was accepted, so nothing is left to fail


def _cli(args: list[str], env: dict[str, str], stdin: str | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "queuewatch", *args],
        env={**os.environ, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_publish_of_a_mixed_file_publishes_exactly_the_valid_lines(
    bootstrap: str, unique: str, tmp_path: Path
) -> None:
    topic = f"reports-cli-{unique}"
    ensure_topics(bootstrap, [TopicSpec(topic, 3)])
    items = list(generate(SimulationConfig(seed=9, count=1500, invalid_share=0.03)))
    lines = [json.dumps(item.report) for item in items]
    lines.insert(100, "{not json")
    lines.insert(200, "")  # blank lines are skipped, and still counted for line numbers
    path = tmp_path / "reports.jsonl"
    path.write_text("\n".join(lines) + "\n")
    valid = [
        line
        for line in lines
        if line
        and line != "{not json"
        and not items[[json.dumps(i.report) for i in items].index(line)].intentionally_invalid
    ]
    invalid_numbers = {
        n
        for n, line in enumerate(lines, start=1)
        if line and (line == "{not json" or line not in valid)
    }

    result = _cli(
        ["publish", str(path)],
        {"QUEUEWATCH_KAFKA_BOOTSTRAP": bootstrap, "QUEUEWATCH_REPORTS_TOPIC": topic},
    )
    assert result.returncode == 1, result.stderr
    named = {
        int(line.split(":")[0].removeprefix("line "))
        for line in result.stderr.splitlines()
        if line.startswith("line ")
    }
    assert named == invalid_numbers
    assert "line 101: json: not valid JSON" in result.stderr
    assert f"{len(valid)} published, {len(invalid_numbers)} rejected" in result.stderr

    messages = read_all(bootstrap, topic, len(valid))
    got = sorted(json.dumps(decode(m.value, SCHEMA), sort_keys=True) for m in messages)
    want = sorted(json.dumps(parse_json_report(json.loads(v)), sort_keys=True) for v in valid)
    assert got == want


def test_cli_publish_of_valid_stdin_exits_0_and_dry_run_publishes_nothing(
    bootstrap: str, unique: str
) -> None:
    topic = f"reports-stdin-{unique}"
    ensure_topics(bootstrap, [TopicSpec(topic, 1)])
    reports = [s.report for s in generate(SimulationConfig(seed=4, count=50, invalid_share=0.0))]
    text = "\n".join(json.dumps(r) for r in reports) + "\n"
    env = {"QUEUEWATCH_KAFKA_BOOTSTRAP": bootstrap, "QUEUEWATCH_REPORTS_TOPIC": topic}

    dry = _cli(["publish", "--dry-run", "-"], env, stdin=text)
    assert dry.returncode == 0, dry.stderr
    assert "50 valid, 0 rejected" in dry.stderr
    assert read_all(bootstrap, topic, 0, timeout_s=2) == []

    real = _cli(["publish", "-"], env, stdin=text)
    assert real.returncode == 0, real.stderr
    assert len(read_all(bootstrap, topic, 50)) == 50


def test_cli_simulate_publishes_count_reports_including_invalid_bytes(
    bootstrap: str, unique: str
) -> None:
    topic = f"reports-sim-{unique}"
    ensure_topics(bootstrap, [TopicSpec(topic, 3)])
    env = {"QUEUEWATCH_KAFKA_BOOTSTRAP": bootstrap, "QUEUEWATCH_REPORTS_TOPIC": topic}
    result = _cli(["simulate", "--count", "3000", "--speed", "0", "--seed", "1"], env)
    assert result.returncode == 0, result.stderr
    items = list(generate(SimulationConfig(seed=1, count=3000)))
    invalid = sum(1 for s in items if s.intentionally_invalid)
    assert f"and {invalid} deliberately invalid" in result.stderr
    assert len(read_all(bootstrap, topic, 3000)) == 3000
