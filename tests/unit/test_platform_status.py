"""Lag arithmetic and the status report's health verdict and rendering."""

from __future__ import annotations

from queuewatch.platform.status import GroupLag, StatusReport, _redact, compute_lag, render_text


def test_lag_is_end_minus_committed_summed_over_partitions() -> None:
    assert compute_lag({0: 10, 1: 5}, {0: 7, 1: 5}, {0: 0, 1: 0}) == 3


def test_a_partition_never_committed_counts_from_its_first_offset() -> None:
    # Partition 1 was truncated by retention to offset 4: a new group starts reading there.
    assert compute_lag({0: 10, 1: 9}, {0: 10}, {0: 0, 1: 4}) == 5


def test_a_negative_committed_offset_means_no_commit() -> None:
    assert compute_lag({0: 6}, {0: -1}, {0: 2}) == 4


def test_a_committed_offset_past_the_end_never_gives_negative_lag() -> None:
    assert compute_lag({0: 3}, {0: 5}, {0: 0}) == 0


def test_a_report_without_problems_is_healthy_and_one_problem_makes_it_unhealthy() -> None:
    report = StatusReport(kafka_bootstrap="127.0.0.1:9092")
    assert report.healthy
    report.problems.append("topic x is missing")
    assert not report.healthy
    assert report.to_json()["healthy"] is False


def test_text_report_names_each_group_lag_and_the_verdict() -> None:
    report = StatusReport(
        kafka_bootstrap="127.0.0.1:9092",
        broker_reachable=True,
        topics={"queue-reports": 12, "crossing-windows": None},
        groups=[GroupLag("agg", "queue-reports", "Stable", 1, 42, 12)],
        problems=["topic crossing-windows is missing"],
    )
    text = render_text(report)
    assert "group agg on queue-reports: lag 42, 1 members (Stable)" in text
    assert "FAIL topic crossing-windows missing" in text
    assert text.splitlines()[-2:] == ["UNHEALTHY:", "  - topic crossing-windows is missing"]


def test_printed_clickhouse_urls_hide_the_password() -> None:
    assert _redact("http://writer:s3cret@ch:8123") == "http://writer:***@ch:8123"
    assert _redact("chdb:///var/clickhouse") == "chdb:///var/clickhouse"


def test_the_dead_letter_topic_line_counts_its_letters() -> None:
    report = StatusReport(
        kafka_bootstrap="127.0.0.1:9092",
        broker_reachable=True,
        topics={"queue-reports": 12, "queue-reports-dlq": 1},
        dead_letters=27,
        dlq_topic="queue-reports-dlq",
    )
    lines = render_text(report).splitlines()
    assert "ok   topic queue-reports-dlq (1 partitions), 27 dead letters" in lines
    assert "ok   topic queue-reports (12 partitions)" in lines
    assert report.to_json()["dead_letters"] == 27
