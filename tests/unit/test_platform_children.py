"""Which processes `queuewatch up` runs follows from the ClickHouse URL and --no-simulate."""

from __future__ import annotations

import sys

from queuewatch.platform.children import ChildSpec, command_exists, process_plan
from queuewatch.settings import CommonSettings


def test_embedded_clickhouse_runs_one_sink_all_process_that_owns_the_folder() -> None:
    plan = process_plan(CommonSettings(clickhouse_url="chdb:///tmp/x"), simulate=True)
    assert [spec.args for spec in plan] == [("aggregator",), ("sink", "all"), ("simulate",)]


def test_server_clickhouse_runs_each_sink_as_its_own_process() -> None:
    plan = process_plan(CommonSettings(clickhouse_url="http://ch:8123"), simulate=True)
    assert [spec.name for spec in plan] == ["aggregator", "sink-raw", "sink-windows", "simulate"]


def test_no_simulate_leaves_the_simulator_out_and_only_the_simulator() -> None:
    plan = process_plan(CommonSettings(clickhouse_url="chdb:///tmp/x"), simulate=False)
    assert [spec.name for spec in plan] == ["aggregator", "sink-all"]


def test_only_the_simulator_is_a_producer_that_may_finish_for_good() -> None:
    plan = process_plan(CommonSettings(clickhouse_url="chdb:///tmp/x"), simulate=True)
    finishing = [s.name for s in plan if not s.restart_on_success]
    producers = [s.name for s in plan if s.producer]
    assert finishing == producers == ["simulate"]


def test_a_child_runs_queuewatch_with_the_same_interpreter() -> None:
    argv = ChildSpec("sink-all", ("sink", "all")).argv()
    assert argv == [sys.executable, "-m", "queuewatch", "sink", "all"]


def test_an_explicit_command_replaces_the_queuewatch_subcommand() -> None:
    spec = ChildSpec("x", (), command=("/bin/true", "--flag"))
    assert spec.argv() == ["/bin/true", "--flag"]


def test_command_exists_knows_registered_commands_and_rejects_unknown_ones() -> None:
    assert command_exists(("up",))
    assert command_exists(("status",))
    assert not command_exists(("no-such-command",))


def test_words_after_a_plain_command_are_its_arguments() -> None:
    # `settings` takes options only, yet a plain command ends the lookup: the rest is argv.
    assert command_exists(("settings", "--markdown"))


def test_the_dashboard_runs_when_asked_and_is_no_producer() -> None:
    plan = process_plan(
        CommonSettings(clickhouse_url="chdb:///tmp/x"), simulate=True, dashboard=True
    )
    assert [spec.name for spec in plan] == ["aggregator", "sink-all", "dashboard", "simulate"]
    dashboard = next(s for s in plan if s.name == "dashboard")
    assert dashboard.args == ("dashboard",) and not dashboard.producer
