"""The aggregator against a real broker: exact windows, dead letters, partition-independence."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from queuewatch.aggregator.intake import H_CODE, H_OFFSET, H_PARTITION, H_TOPIC
from tests.integration.test_aggregator_harness import (
    AggregatorProcess,
    make_scenario,
    make_topics,
    publish,
    read_all,
    reference_windows,
    window_reader,
)

#: Both outputs of the aggregator: windows from the topic, or windows ClickHouse assembled.
OUTPUTS = pytest.mark.parametrize("output", ["windows", "contributions"])

pytestmark = pytest.mark.integration


@OUTPUTS
def test_scenario_with_duplicates_late_and_invalid_reports_matches_the_brute_force_windows(
    bootstrap: str, unique: str, tmp_path: Path, output: str
) -> None:
    settings = make_topics(bootstrap, unique, partitions=3)
    scenario = make_scenario(seed=7)
    expected = reference_windows(scenario.valid_in_order)
    publish(bootstrap, settings.reports_topic, scenario.messages)

    agg = AggregatorProcess(
        settings, tmp_path, group=f"agg-{unique}", QUEUEWATCH_AGGREGATOR_OUTPUT=output
    )
    agg.start()
    reader = window_reader(output, bootstrap, settings, tmp_path)
    try:
        problems = reader.wait_for(expected, timeout_s=120)
        assert problems == [], "\n".join(problems) + "\n" + agg.logs()
        assert reader.version_went_down == 0
        dead = read_all(bootstrap, settings.dlq_topic, len(scenario.invalid), timeout_s=30)
    finally:
        code = agg.stop()
        reader.close()
    assert code == 0, agg.logs()

    got = {(m.key, m.value) for m in dead}
    assert set(scenario.invalid) <= got
    for m in dead:
        headers = dict(m.headers)
        assert headers[H_CODE]
        assert headers[H_TOPIC] == settings.reports_topic.encode()
        assert int(headers[H_PARTITION]) >= 0 and int(headers[H_OFFSET]) >= 0


@OUTPUTS
def test_one_partition_and_twelve_partitions_give_the_same_windows(
    bootstrap: str, unique: str, tmp_path: Path, output: str
) -> None:
    scenario = make_scenario(seed=12, crossings=6, per_crossing=150)
    expected = reference_windows(scenario.valid_in_order)
    finals = []
    for partitions in (1, 12):
        settings = make_topics(bootstrap, f"{unique}-{partitions}", partitions=partitions)
        publish(bootstrap, settings.reports_topic, scenario.messages)
        home = tmp_path / f"p{partitions}"
        home.mkdir()
        agg = AggregatorProcess(
            settings, home, group=f"agg-{unique}-{partitions}", QUEUEWATCH_AGGREGATOR_OUTPUT=output
        )
        agg.start()
        reader = window_reader(output, bootstrap, settings, home)
        try:
            problems = reader.wait_for(expected, timeout_s=120)
            assert problems == [], "\n".join(problems) + "\n" + agg.logs()
        finally:
            agg.stop()
            reader.close()
        finals.append(
            {
                k: {n: v for n, v in row.items() if n != "updated_at"}
                for k, row in reader.newest.items()
            }
        )
    assert finals[0] == finals[1]


def _committed(bootstrap: str, group: str, topic: str) -> int:
    """How many messages of ``topic`` the group has committed (0 while the broker cannot say)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    except KafkaError:  # e.g. the group coordinator is still loading
        return 0
    finally:
        admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic)


def _commit_to_end(bootstrap: str, group: str, topic: str) -> int:
    """Commit the group's offsets to the end of ``topic``, as a client that ran ahead would."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        ends = consumer.end_offsets(tps)
    finally:
        consumer.close()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = {tp: OffsetAndMetadata(n, "", -1) for tp, n in ends.items()}
        admin.alter_group_offsets(group, offsets)
    finally:
        admin.close()
    return sum(ends.values())


def test_a_committed_offset_past_unapplied_reports_does_not_lose_them(
    bootstrap: str, unique: str, tmp_path: Path
) -> None:
    """The group's committed offset is only a hint: the restart resumes at its own position."""
    settings = make_topics(bootstrap, unique, partitions=3)
    scenario = make_scenario(seed=21, crossings=3, per_crossing=150)
    expected = reference_windows(scenario.valid_in_order)
    half = len(scenario.messages) // 2
    group = f"agg-{unique}"
    agg = AggregatorProcess(settings, tmp_path, group=group)
    publish(bootstrap, settings.reports_topic, scenario.messages[:half])
    agg.start()
    deadline = time.monotonic() + 120
    while _committed(bootstrap, group, settings.reports_topic) < half:
        assert agg.alive() and time.monotonic() < deadline, agg.logs()
        time.sleep(0.5)
    assert agg.stop() == 0, agg.logs()

    # The second half is in the log, but the group's offsets say it was all consumed.
    publish(bootstrap, settings.reports_topic, scenario.messages[half:])
    assert _commit_to_end(bootstrap, group, settings.reports_topic) == len(scenario.messages)
    assert _committed(bootstrap, group, settings.reports_topic) == len(scenario.messages)

    agg.start()
    reader = window_reader("windows", bootstrap, settings, tmp_path)
    try:
        problems = reader.wait_for(expected, timeout_s=120)
        assert problems == [], "\n".join(problems) + "\n" + agg.logs()
    finally:
        code = agg.stop()
        reader.close()
    assert code == 0, agg.logs()


@OUTPUTS
def test_two_workers_sharing_the_partitions_give_the_same_windows_as_one(
    bootstrap: str, unique: str, tmp_path: Path, output: str
) -> None:
    """A second worker joins mid-stream: the rebalance moves partitions, the windows stay exact."""
    settings = make_topics(bootstrap, unique, partitions=6)
    scenario = make_scenario(seed=33, crossings=6, per_crossing=150)
    expected = reference_windows(scenario.valid_in_order)
    half = len(scenario.messages) // 2
    group = f"agg-{unique}"
    homes = [tmp_path / "worker-a", tmp_path / "worker-b"]
    for home in homes:
        home.mkdir()
    first = AggregatorProcess(settings, homes[0], group=group, QUEUEWATCH_AGGREGATOR_OUTPUT=output)
    second = AggregatorProcess(settings, homes[1], group=group, QUEUEWATCH_AGGREGATOR_OUTPUT=output)
    reader = window_reader(output, bootstrap, settings, tmp_path)
    try:
        publish(bootstrap, settings.reports_topic, scenario.messages[:half])
        first.start()
        while reader.count == 0:  # the first worker is processing: let the second one join
            assert first.alive(), first.logs()
            reader.poll()
        second.start()
        deadline = time.monotonic() + 120
        while not _owns_partitions(homes[1]):  # joined, assigned, recovered
            assert second.alive() and time.monotonic() < deadline, second.logs()
            time.sleep(0.5)
        publish(bootstrap, settings.reports_topic, scenario.messages[half:])
        problems = reader.wait_for(expected, timeout_s=150)
        assert problems == [], "\n".join(problems) + "\n" + first.logs() + second.logs()
        assert reader.version_went_down == 0
    finally:
        codes = [second.stop(), first.stop()]
        reader.close()
    assert codes == [0, 0], first.logs() + second.logs()
    assert _owns_partitions(homes[0]) and _owns_partitions(homes[1])


def _owns_partitions(home: Path) -> bool:
    """True once the worker logging into ``home`` has started on reports partitions."""
    return any(
        "starting reports partitions at" in p.read_text(errors="replace")
        for p in home.glob("aggregator-*.log")
    )
