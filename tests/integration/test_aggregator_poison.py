"""The aggregator against poison input and bounded-state cases, with a real broker (issue 11).

Each test names the case; before the change each of them crash-looped, idled or lost reports.
"""

from __future__ import annotations

import gzip
import hashlib
import random
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from queuewatch.aggregator.intake import H_CODE, H_OFFSET, H_ORIGINAL_BYTES, H_ORIGINAL_SHA256
from queuewatch.contract.codec import encode
from queuewatch.contract.schemas import QUEUE_REPORT, default_registry
from tests.integration.test_aggregator import _committed
from tests.integration.test_aggregator_harness import (
    HOUR,
    AggregatorProcess,
    WindowReader,
    _report,
    make_scenario,
    make_topics,
    publish,
    read_all,
    reference_windows,
)

pytestmark = pytest.mark.integration


def _wait_exit(agg: AggregatorProcess, timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not agg.alive():
            assert agg.proc is not None
            return agg.proc.returncode
        time.sleep(0.5)
    return None


def test_wrong_keys_and_dead_letters_over_the_dlq_default_are_dead_lettered_and_the_worker_goes_on(
    bootstrap: str, unique: str, tmp_path: Path
) -> None:
    """A report keyed by another crossing is a key_mismatch letter; a compressed message whose
    value is 2 MB goes to the DLQ whole, one of 20 MB is cut with its hash; the windows stay exact.
    Before: the wrong key was applied to the crossing's state; the 2 MB letter was refused by
    the DLQ (1 MB default) and the batch replayed forever (the worker exited, again and again)."""
    settings = make_topics(bootstrap, unique, partitions=3)
    scenario = make_scenario(seed=5, crossings=3, per_crossing=120)
    expected = reference_windows(scenario.valid_in_order)
    schema = default_registry().latest(QUEUE_REPORT)
    stray = _report(
        random.Random(1),
        "test-crossing-0",
        scenario.valid_in_order["test-crossing-0"][-1]["observed_at"],
    )
    wrong_key = (b"test-crossing-1", encode(stray, schema))
    big = b"not a report " + b"\x00" * (2 * 2**20)
    huge = b"not a report " + b"\x00" * (20 * 2**20)
    half = len(scenario.messages) // 2
    publish(bootstrap, settings.reports_topic, [*scenario.messages[:half], wrong_key])
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        compression_type="gzip",
        max_request_size=64 * 2**20,
    )
    for value in (big, huge):
        producer.send(settings.reports_topic, key=b"test-crossing-2", value=value)
    producer.flush(timeout=60)
    producer.close()
    assert len(gzip.compress(huge)) < 2**20  # it fits the reports topic only compressed
    publish(bootstrap, settings.reports_topic, scenario.messages[half:])

    agg = AggregatorProcess(settings, tmp_path, group=f"agg-{unique}")
    agg.start()
    reader = WindowReader(bootstrap, settings.windows_topic)
    try:
        problems = reader.wait_for(expected, timeout_s=120)
        assert problems == [], "\n".join(problems) + "\n" + agg.logs()
        dead = read_all(bootstrap, settings.dlq_topic, len(scenario.invalid) + 3, timeout_s=60)
        assert agg.alive(), agg.logs()
    finally:
        code = agg.stop()
        reader.close()
    assert code == 0, agg.logs()
    assert agg.runs == 1
    by_code = {}
    for m in dead:
        by_code.setdefault(dict(m.headers)[H_CODE], []).append(m)
    assert [(m.key, m.value) for m in by_code[b"key_mismatch"]] == [wrong_key]
    letters = {len(m.value): m for m in dead if m.value.startswith(b"not a report \x00")}
    assert big == letters[len(big)].value  # whole
    cut = next(m for n, m in letters.items() if n != len(big))
    headers = dict(cut.headers)
    assert huge.startswith(cut.value) and 15 * 2**20 < len(cut.value) < 16 * 2**20
    assert headers[H_ORIGINAL_BYTES] == str(len(huge)).encode()
    assert headers[H_ORIGINAL_SHA256] == hashlib.sha256(huge).hexdigest().encode()
    assert int(headers[H_OFFSET]) >= 0


def test_an_unreadable_position_record_makes_the_worker_exit_non_zero_instead_of_idling(
    bootstrap: str, unique: str, tmp_path: Path
) -> None:
    """faust swallows a failed recovery callback: before, the worker owned no partition,
    dropped and acked every message, and idled with no lag showing."""
    settings = make_topics(bootstrap, unique, partitions=3)
    group = f"agg-{unique}"
    changelog = f"{group}-crossing-state-changelog"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            [NewTopic(changelog, 3, 1, topic_configs={"cleanup.policy": "compact"})]
        )
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    producer.send(changelog, key=b"\x00position/0", value=b"not a position", partition=0)
    producer.flush(timeout=30)
    producer.close()
    publish(
        bootstrap,
        settings.reports_topic,
        make_scenario(seed=3, crossings=3, per_crossing=20).messages,
    )

    agg = AggregatorProcess(settings, tmp_path, group=group)
    agg.start()
    try:
        code = _wait_exit(agg, timeout_s=120)
    finally:
        agg.stop()
    assert code is not None, "still running (idle) after 120 s:\n" + agg.logs()
    assert code != 0
    assert "position record b'not a position' is unreadable" in agg.logs()


def _state_records(bootstrap: str, topic: str, key: bytes, partitions: int) -> list[int]:
    """Sizes of every changelog record of ``key``, in order."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    ends = consumer.end_offsets(tps)
    sizes: list[int] = []
    deadline = time.monotonic() + 60
    while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=1000).values():
            sizes += [len(r.value) for r in records if r.key == key and r.value]
    consumer.close()
    return sizes


def test_a_backfill_of_history_for_a_live_crossing_keeps_its_state_record_small(
    bootstrap: str, unique: str, tmp_path: Path
) -> None:
    """Before: every historical report's event id stayed in the state until the watermark
    moved a day on; 20k of them made a 1 MB record (300k: 15.7 MiB, then a crash loop)."""
    settings = make_topics(bootstrap, unique, partitions=3)
    scenario = make_scenario(seed=9, crossings=1, per_crossing=60)
    cid = "test-crossing-0"
    live_end = max(r["observed_at"] for r in scenario.valid_in_order[cid])
    rng = random.Random(4)
    schema = default_registry().latest(QUEUE_REPORT)
    history = [_report(rng, cid, live_end - 40 * 24 * HOUR + i * 150_000) for i in range(20_000)]
    messages = scenario.messages + [(cid.encode(), encode(r, schema)) for r in history]
    expected = reference_windows({cid: scenario.valid_in_order[cid] + history})
    publish(bootstrap, settings.reports_topic, messages)

    group = f"agg-{unique}"
    agg = AggregatorProcess(settings, tmp_path, group=group)
    agg.start()
    reader = WindowReader(bootstrap, settings.windows_topic)
    try:
        problems = reader.wait_for(expected, timeout_s=120)
        assert problems == [], "\n".join(problems) + "\n" + agg.logs()
        deadline = time.monotonic() + 120  # the history changes no window: wait for the offsets
        while _committed(bootstrap, group, settings.reports_topic) < len(messages):
            assert agg.alive() and time.monotonic() < deadline, agg.logs()
            time.sleep(0.5)
    finally:
        code = agg.stop()
        reader.close()
    assert code == 0, agg.logs()
    sizes = _state_records(bootstrap, f"{group}-crossing-state-changelog", cid.encode(), 3)
    # The live crossing's own record is ~20-90 KB (panes, closed windows awaiting emission);
    # 20k remembered event ids would add 1 MB.
    assert sizes and max(sizes) < 256 * 1024 and sizes[-1] < 64 * 1024, sizes[-5:]
    assert "'too_late': 20000" in agg.logs()


def test_reports_from_a_transactional_producer_with_aborted_transactions_give_the_reference(
    bootstrap: str, unique: str, tmp_path: Path
) -> None:
    """Commit and abort markers leave offset gaps; aborted reports must count nowhere.
    Before: each gap was taken for a hole and sought back every second for ever, and the
    records of aborted transactions were read (read_uncommitted) and aggregated."""
    from confluent_kafka import Producer

    settings = make_topics(bootstrap, unique, partitions=3)
    scenario = make_scenario(seed=17, crossings=4, per_crossing=120)
    aborted = make_scenario(seed=18, crossings=4, per_crossing=10)  # other event ids
    expected = reference_windows(scenario.valid_in_order)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"tx-{unique}",
            "partitioner": "murmur2_random",  # the Java client's (and kafka-python's) partitioner
            "linger.ms": 5,
        }
    )
    producer.init_transactions(30)
    messages = scenario.messages
    step = 37
    for n, i in enumerate(range(0, len(messages), step)):
        producer.begin_transaction()
        for key, value in messages[i : i + step]:
            producer.produce(settings.reports_topic, key=key, value=value)
        producer.commit_transaction(30)
        if n % 4 == 1:  # an aborted transaction between committed ones
            producer.begin_transaction()
            for key, value in aborted.messages[(n * 5) % 30 : (n * 5) % 30 + 5]:
                producer.produce(settings.reports_topic, key=key, value=value)
            producer.flush(30)
            producer.abort_transaction(30)
    producer.flush(30)

    agg = AggregatorProcess(settings, tmp_path, group=f"agg-{unique}")
    agg.start()
    reader = WindowReader(bootstrap, settings.windows_topic)
    try:
        problems = reader.wait_for(expected, timeout_s=150)
        assert problems == [], "\n".join(problems) + "\n" + agg.logs()
        assert reader.version_went_down == 0
    finally:
        code = agg.stop()
        reader.close()
    logs = agg.logs()
    assert code == 0, logs
    assert "hold no reports (transaction markers or aborted records)" in logs
    assert "still missing after" not in logs


def _newest_records(bootstrap: str, topic: str, partitions: int) -> dict[bytes, bytes]:
    """The newest changelog record of every key."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    ends = consumer.end_offsets(tps)
    newest: dict[bytes, bytes] = {}
    deadline = time.monotonic() + 60
    while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=1000).values():
            newest.update((r.key, r.value) for r in records)
    consumer.close()
    return newest


def test_a_quiet_crossing_is_sealed_after_its_final_windows_and_a_restart_emits_nothing_again(
    bootstrap: str, unique: str, tmp_path: Path
) -> None:
    """Before: a quiet crossing kept its panes and ids for ever, its record kept the changed
    mark, so every restart emitted its windows again. Now it is sealed once the partition's
    clock is the dedup horizon (26 h) past it, and when it reports again it stays exact."""
    settings = make_topics(bootstrap, unique, partitions=1)
    rng = random.Random(8)
    schema = default_registry().latest(QUEUE_REPORT)
    t0 = int(time.time() * 1000) - 5 * 24 * HOUR
    t0 -= t0 % HOUR
    quiet, busy = "test-quiet", "test-busy"
    minute = 60_000
    first: list[dict] = []
    for i in range(240):  # quiet reports for 6 h, busy for 40 h
        if i < 36:
            first.append(_report(rng, quiet, t0 + i * 10 * minute + rng.randint(0, 9 * minute)))
        first.append(_report(rng, busy, t0 + i * 10 * minute))
    quiet_end = max(r["observed_at"] for r in first if r["crossing_id"] == quiet)
    back = [_report(rng, quiet, quiet_end - k * 20 * minute) for k in range(3)]  # sealed
    back += [_report(rng, quiet, quiet_end + k * 7 * minute) for k in range(1, 40)]
    back.append(dict(first[0]))  # a re-send of the quiet crossing's first report
    back += [_report(rng, busy, t0 + 40 * HOUR + k * minute) for k in range(5)]

    def messages(records: list[dict]) -> list[tuple[bytes, bytes]]:
        return [(r["crossing_id"].encode(), encode(r, schema)) for r in records]

    horizon = 26 * HOUR
    group = f"agg-{unique}"
    changelog = f"{group}-crossing-state-changelog"
    agg = AggregatorProcess(settings, tmp_path, group=group)
    publish(bootstrap, settings.reports_topic, messages(first))
    agg.start()
    reader = WindowReader(bootstrap, settings.windows_topic)
    try:
        expected = reference_windows({}, log=first, seal_after=horizon)
        problems = reader.wait_for(expected, timeout_s=120)
        assert problems == [], "\n".join(problems) + "\n" + agg.logs()
        deadline = time.monotonic() + 60  # the 10 s timer seals and unmarks
        while True:
            records = _newest_records(bootstrap, changelog, 1)
            sealed = records.get(quiet.encode(), b"")
            if b'"sealed":' in sealed and not records[busy.encode()].startswith(b'{"f":1,"chg":1'):
                break
            assert time.monotonic() < deadline, (sealed[:200], agg.logs())
            time.sleep(2)
        assert len(sealed) < 400, sealed  # counters and offsets only
        assert agg.stop() == 0, agg.logs()

        count = reader.count
        agg.start()
        deadline = time.monotonic() + 60
        while "starting reports partitions at" not in agg.logs().split("aggregator totals")[-1]:
            assert agg.alive() and time.monotonic() < deadline, agg.logs()
            time.sleep(0.5)
        time.sleep(5)  # several flush intervals
        reader.poll()
        assert reader.count == count, "windows emitted again after a restart"

        publish(bootstrap, settings.reports_topic, messages(back))
        expected = reference_windows({}, log=first + back, seal_after=horizon)
        problems = reader.wait_for(expected, timeout_s=120)
        assert problems == [], "\n".join(problems) + "\n" + agg.logs()
        assert reader.version_went_down == 0
    finally:
        code = agg.stop()
        reader.close()
    assert code == 0, agg.logs()
