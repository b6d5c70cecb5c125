"""The pure parts of `queuewatch rebuild`: names, progress arithmetic and the shadow view."""

from __future__ import annotations

from typing import Any

import pytest

from queuewatch.operations.rebuild import (
    RebuildError,
    RebuildPlan,
    before,
    behind,
    fraction,
    shadow,
    shadow_view_sql,
)


def test_a_plan_names_the_tables_it_replaces_the_windows_with_their_status_table() -> None:
    assert RebuildPlan(raw=True, windows=False, stamp="1").tables == ["queue_reports"]
    assert RebuildPlan(raw=False, windows=True, stamp="1").tables == [
        "crossing_windows",
        "window_latest",
    ]
    assert shadow("crossing_windows") == "crossing_windows_rebuild"
    assert before("queue_reports", "20261203170000") == "queue_reports_before_20261203170000"


def test_behind_counts_what_is_not_committed_and_never_goes_negative() -> None:
    assert behind({0: 10, 1: 5}, {0: 4}) == 11  # partition 1 never committed: all of it
    assert behind({0: 10}, {0: 12}) == 0
    assert fraction(0, 0) == 1.0 and fraction(5, 10) == 0.5 and fraction(12, 10) == 1.0


class Rows:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.result_rows = rows


class FakeClient:
    """Answers the one system.tables lookup shadow_view_sql makes."""

    def __init__(self, select: str | None) -> None:
        self.select = select

    def query(self, sql: str, parameters: dict[str, str]) -> Rows:
        assert parameters["n"] == "window_latest_mv"
        return Rows([] if self.select is None else [(self.select,)])


def test_the_shadow_view_reads_and_writes_the_shadow_tables_only() -> None:
    select = (
        "SELECT crossing_id, max(version) AS version FROM queuewatch.crossing_windows "
        "GROUP BY crossing_id"
    )
    sql = shadow_view_sql(FakeClient(select), "queuewatch")
    assert sql.startswith(
        "CREATE MATERIALIZED VIEW queuewatch.window_latest_mv_rebuild "
        "TO queuewatch.window_latest_rebuild AS SELECT"
    )
    assert "FROM queuewatch.crossing_windows_rebuild GROUP BY" in sql
    assert "queuewatch.crossing_windows " not in sql


def test_a_missing_or_foreign_view_is_refused_with_what_to_do() -> None:
    with pytest.raises(RebuildError, match="queuewatch migrate"):
        shadow_view_sql(FakeClient(None), "queuewatch")
    with pytest.raises(RebuildError, match="does not read"):
        shadow_view_sql(FakeClient("SELECT 1 FROM elsewhere.t"), "queuewatch")


def test_only_the_aggregators_own_topics_are_reset_never_a_group_with_a_longer_name() -> None:
    from queuewatch.operations.rebuild import aggregator_topics

    topics = aggregator_topics("queuewatch-aggregator")
    assert topics == [
        "queuewatch-aggregator-crossing-state-changelog",
        "queuewatch-aggregator-__assignor-__leader",
    ]
    assert not [t for t in topics if t.startswith("queuewatch-aggregator-2")]
