"""The sinks under input that used to stop them for good (issue 11): a backfill spanning
more months than one ClickHouse insert may touch, and a topic deleted and re-created under
the same name while the ClickHouse folder is kept. Real broker, real chdb, `sink all` as a
child process."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.consumer.fetcher import ConsumerRecord

from queuewatch.kafka.topics import TopicSpec, ensure_topics
from tests.integration.test_sinks_harness import (
    CATCH_UP_TIMEOUT_S,
    SinkProcess,
    lag,
    make_monthly_backfill,
    make_windows,
    new_env,
    publish,
    query_rows,
    wait_until,
)

pytestmark = pytest.mark.integration

COUNT_SQL = (
    "SELECT count() AS rows, uniqExact(event_id) AS events, "
    "uniqExact(toYYYYMM(observed_at)) AS months FROM queue_reports FINAL"
)


def test_ten_year_monthly_backfill_of_one_crossing_lands_every_row_once(
    bootstrap: str, tmp_path: Path
) -> None:
    # 125 months in one batch: one insert would touch 125 partitions, over ClickHouse's 100.
    env = new_env(bootstrap, tmp_path)
    backfill = make_monthly_backfill(months=125, per_month=4, seed=11)
    publish(bootstrap, env.reports_topic, backfill.messages)
    sink = SinkProcess(env, tmp_path / "sink.log")
    try:
        sink.wait_serving()
        wait_until(
            lambda: lag(bootstrap, env.raw_group, env.reports_topic) == 0,
            CATCH_UP_TIMEOUT_S,
            "the raw sink to commit the backfill",
            sink,
        )
        counts = query_rows(env, COUNT_SQL)[0]
        assert counts == {"rows": 500, "events": 500, "months": 125}
        rows = query_rows(env, "SELECT event_id, wait_minutes FROM queue_reports FINAL")
        assert {(backfill.crossing, r["event_id"]): r["wait_minutes"] for r in rows} == (
            backfill.expected
        )
        plain = query_rows(env, "SELECT count() AS n FROM queue_reports")[0]["n"]
        assert plain == 500  # exactly once even before merges: no part was written twice
    finally:
        code = sink.stop()
    assert code == 0


def _recreate(bootstrap: str, topic: str, partitions: int) -> None:
    """Delete ``topic`` and create it again under the same name: a new incarnation."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-recreate")
    try:
        admin.delete_topics([topic])
        wait_until(lambda: topic not in admin.list_topics(), 60, f"{topic} to be deleted")
    finally:
        admin.close()
    ensure_topics(bootstrap, [TopicSpec(topic, partitions)])


def test_reports_of_a_recreated_topic_are_all_written_though_their_offsets_repeat(
    bootstrap: str, tmp_path: Path
) -> None:
    # One partition and 50-record batches: both incarnations' first batch covers offsets
    # 0-49 of the same topic name, so a token made of names and offsets would repeat.
    env = new_env(bootstrap, tmp_path, QUEUEWATCH_SINK_BATCH_ROWS="50")
    _recreate(bootstrap, env.reports_topic, 1)
    first = make_monthly_backfill(months=50, per_month=1, seed=31)
    second = make_monthly_backfill(months=50, per_month=1, seed=32)
    publish(bootstrap, env.reports_topic, first.messages)
    sink = SinkProcess(env, tmp_path / "first.log")
    try:
        sink.wait_serving()
        wait_until(
            lambda: lag(bootstrap, env.raw_group, env.reports_topic) == 0,
            CATCH_UP_TIMEOUT_S,
            "the first incarnation to be written",
            sink,
        )
    finally:
        assert sink.stop() == 0
    _recreate(bootstrap, env.reports_topic, 1)
    publish(bootstrap, env.reports_topic, second.messages)
    again = SinkProcess(env, tmp_path / "second.log")
    try:
        again.wait_serving()
        wait_until(
            lambda: lag(bootstrap, env.raw_group, env.reports_topic) == 0,
            CATCH_UP_TIMEOUT_S,
            "the second incarnation to be committed",
            again,
        )
        rows = query_rows(env, "SELECT event_id, wait_minutes FROM queue_reports FINAL")
        got = {(first.crossing, r["event_id"]): r["wait_minutes"] for r in rows}
        assert got == first.expected | second.expected
    finally:
        assert again.stop() == 0


def _read_all(bootstrap: str, topic: str, expect: int) -> list[ConsumerRecord]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=10_000,
    )
    try:
        out: list[ConsumerRecord] = []
        for record in consumer:
            out.append(record)
            if len(out) >= expect:
                break
        return out
    finally:
        consumer.close()


def test_window_record_of_an_unknown_schema_version_is_dead_lettered_and_the_rest_written(
    bootstrap: str, tmp_path: Path
) -> None:
    env = new_env(bootstrap, tmp_path)
    window_messages, reference = make_windows(keys=6, versions=2, seed=41)
    # A newer aggregator's record: the single-object header names a schema this sink lacks.
    unknown = b"\xc3\x01" + bytes.fromhex("0123456789abcdef") + b"\x02body"
    publish(
        bootstrap, env.windows_topic, [*window_messages[:5], (b"k", unknown), *window_messages[5:]]
    )
    sink = SinkProcess(env, tmp_path / "sink.log")
    try:
        sink.wait_serving()
        wait_until(
            lambda: lag(bootstrap, env.window_group, env.windows_topic) == 0,
            CATCH_UP_TIMEOUT_S,
            "the window sink to commit",
            sink,
        )
        rows = query_rows(env, "SELECT version FROM crossing_windows FINAL ORDER BY version")
        assert [int(r["version"]) for r in rows] == sorted(w["version"] for w in reference.values())
    finally:
        assert sink.stop() == 0
    letters = _read_all(bootstrap, env.dlq_topic, 1)
    assert [letter.value for letter in letters] == [unknown]
    headers = {k: v.decode() for k, v in letters[0].headers}
    assert headers["queuewatch.error.code"] == "unknown_fingerprint"
    assert headers["queuewatch.error.stage"] == "windows-sink"
    assert headers["queuewatch.source.topic"] == env.windows_topic
    assert headers["queuewatch.source.offset"].isdigit()


def test_window_updates_deleted_by_retention_before_the_sink_read_them_are_reported(
    bootstrap: str, tmp_path: Path
) -> None:
    env = new_env(bootstrap, tmp_path)
    before, _ = make_windows(keys=6, versions=1, seed=51)
    publish(bootstrap, env.windows_topic, before)
    sink = SinkProcess(env, tmp_path / "first.log")
    try:
        sink.wait_serving()
        wait_until(
            lambda: lag(bootstrap, env.window_group, env.windows_topic) == 0,
            CATCH_UP_TIMEOUT_S,
            "the window sink to commit",
            sink,
        )
    finally:
        assert sink.stop() == 0
    # The sink is down while updates arrive and retention deletes them (delete_records moves
    # each partition's start the way retention does).
    missed, _ = make_windows(keys=9, versions=2, seed=52)
    publish(bootstrap, env.windows_topic, missed)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [TopicPartition(env.windows_topic, p) for p in range(3)]
        ends = consumer.end_offsets(tps)
    finally:
        consumer.close()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-retention")
    try:
        admin.delete_records(ends)
    finally:
        admin.close()
    again = SinkProcess(env, tmp_path / "second.log")
    try:
        again.wait_serving()
        wait_until(
            lambda: lag(bootstrap, env.window_group, env.windows_topic) == 0,
            CATCH_UP_TIMEOUT_S,
            "the window sink to go on past the gap",
            again,
        )
        assert f"{len(missed)} records of {env.windows_topic} expired unread" in again.output()
    finally:
        assert again.stop() == 0
