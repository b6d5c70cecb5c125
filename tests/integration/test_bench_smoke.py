"""The benchmark harness keeps working: `python -m benchmarks.run --smoke` end to end.

It starts its own broker and the real processors with tiny inputs. The test checks the
result file's shape and that each scenario really ran (counts of what went through), never
timings: the figures of a smoke run mean nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from queuewatch.resources import REPO_ROOT

pytestmark = pytest.mark.integration

SCENARIOS = [
    *("limit", "aggregator", "aggregator_dense", "metrics_cost", "scale_out", "peer", "sink"),
    "end_to_end",
    "query",
]


@pytest.fixture(scope="module")
def smoke_result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the smoke harness once into a temporary results folder and load its file."""
    out = tmp_path_factory.mktemp("bench-results")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--no-peer-install", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    files = sorted(Path(out).glob("*-smoke.json"))
    assert files, f"no result file written; exit {proc.returncode}\n{proc.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(files[-1].read_text())
    result["_exit_code"] = proc.returncode
    result["_stderr"] = proc.stderr[-3000:]
    return result


def test_smoke_run_writes_a_result_file_with_machine_and_every_scenario(
    smoke_result: dict[str, Any],
) -> None:
    assert smoke_result["schema"] == "queuewatch-bench/1"
    assert smoke_result["mode"] == "smoke"
    machine = smoke_result["machine"]
    assert machine["nproc"] >= 1
    assert machine["memory_gib"] > 0
    assert machine["cpu_model"]
    assert len(machine["load_average_at_start"]) == 3
    assert set(smoke_result["scenarios"]) == set(SCENARIOS)


def test_smoke_run_has_no_failed_scenario(smoke_result: dict[str, Any]) -> None:
    failed = {
        name: entry.get("reason")
        for name, entry in smoke_result["scenarios"].items()
        if entry["status"] == "failed"
    }
    assert not failed, f"{failed}\n{smoke_result['_stderr']}"
    assert smoke_result["_exit_code"] == 0


def test_smoke_limit_reads_every_preloaded_report_with_each_client(
    smoke_result: dict[str, Any],
) -> None:
    limit = smoke_result["scenarios"]["limit"]
    assert limit["reports"] == smoke_result["plan"]["limit_reports"]
    assert {"kafka-python", "aiokafka"} <= set(limit["clients"])
    assert limit["fastest_client"] in limit["clients"]
    assert limit["limit_events_per_s"] > 0
    assert limit["faust_agent"]["median"]["events_per_s"] > 0


def test_smoke_dense_aggregator_replay_reads_every_report(smoke_result: dict[str, Any]) -> None:
    dense = smoke_result["scenarios"]["aggregator_dense"]
    assert dense["dataset"]["crossings"] == smoke_result["plan"]["dense_crossings"]
    assert dense["runs"][0]["reports"] == smoke_result["plan"]["dense_reports"]
    assert dense["runs"][0]["output_messages"] > 0


def test_smoke_aggregator_replay_emits_windows(smoke_result: dict[str, Any]) -> None:
    agg = smoke_result["scenarios"]["aggregator"]
    run = agg["runs"][0]
    assert run["reports"] == smoke_result["plan"]["aggregator_reports"]
    assert run["output_messages"] > 0
    assert run["peak_rss_mib"] > 0


def test_smoke_end_to_end_makes_every_report_visible_in_both_tables(
    smoke_result: dict[str, Any],
) -> None:
    e2e = smoke_result["scenarios"]["end_to_end"]
    # Output windows (the default), then output contributions (windows assembled when read).
    for rates in (e2e["rates"], e2e["contributions"]["rates"]):
        run = rates[0]["runs"][0]
        assert run["queue_reports"]["visible"] == run["published"]
        assert run["crossing_windows"]["visible"] == run["published"]


def test_smoke_metrics_cost_replays_the_dense_log_with_metrics_off_and_on(
    smoke_result: dict[str, Any],
) -> None:
    cost = smoke_result["scenarios"]["metrics_cost"]
    assert cost["off"]["median"]["events_per_s"] > 0
    assert cost["on"]["median"]["events_per_s"] > 0
    assert len(cost["off"]["runs"]) == len(cost["on"]["runs"]) >= 1


def test_smoke_scale_out_runs_one_and_two_workers_of_one_group(
    smoke_result: dict[str, Any],
) -> None:
    scale = smoke_result["scenarios"]["scale_out"]
    for shape in ("sparse", "dense"):
        assert scale[shape]["workers_1"]["median"]["workers"] == 1
        assert scale[shape]["workers_2"]["median"]["workers"] == 2
        assert scale[shape]["workers_2"]["median"]["cpu_us_per_report"] > 0


def test_smoke_query_and_sink_scenarios_count_their_rows(smoke_result: dict[str, Any]) -> None:
    plan = smoke_result["plan"]
    query = smoke_result["scenarios"]["query"]
    assert query["queue_reports_rows"] == plan["query_reports"]
    assert query["queries"]["crossing_status"]["rows_returned"] == 2 * plan["query_crossings"]
    # The dashboard's data on the same store: every lane, each with its 24 h line.
    assert query["dashboard"]["lanes"] == 2 * plan["query_crossings"]
    assert query["dashboard"]["sparkline_points"] > 0
    assert query["dashboard"]["detail_reports"] > 0
    sink = smoke_result["scenarios"]["sink"]
    assert sink["raw"]["runs"][0]["rows"] == plan["sink_reports"]
    assert sink["windows"]["runs"][0]["rows"] == plan["sink_windows"]
    # Output contributions: every contribution written and stored once (the windows are
    # views: no row of theirs is stored), and each consumer query on the views answered.
    contributions = sink["contributions"]["runs"][0]
    assert 0 < contributions["rows"] <= plan["sink_reports"]
    for run in (contributions, sink["contributions_sparse"]):
        assert run["stored_rows"]["crossing_contributions"] == run["rows"] + 1  # + the probe
        assert set(run["stored_rows"]) >= {"crossing_contributions"}
        assert "crossing_windows" not in run["stored_rows"]
        assert run["clickhouse_rows_per_contribution"] == 1.0
        reads = run["reads"]
        assert reads["crossing_status"]["rows"] > 0
        assert reads["every_window_count"]["rows"] == 1
        assert reads["one_crossing_1h_windows"]["rows"] > 0


@pytest.mark.parametrize("name", ["quix", "bytewax"])
def test_smoke_peer_windows_equal_ours_when_its_venv_exists(
    smoke_result: dict[str, Any], name: str
) -> None:
    peer = smoke_result["scenarios"]["peer"]
    entry = peer.get("peers", {}).get(name, {})
    if peer["status"] == "skipped" or entry.get("status") == "skipped":
        pytest.skip(entry.get("reason") or peer["reason"])
    run = entry["runs"][0]
    assert run["reports"] == smoke_result["plan"]["peer_reports"]
    assert run["output_messages"] > 0
    equality = entry["equality"]
    assert equality["compared"] > 0
    assert equality["mismatched"] == 0, equality["examples"]
    assert equality["missing_in_peer"] == equality["missing_in_ours"] == 0
    assert equality["equal"]


def test_smoke_bytewax_peer_differs_only_by_reports_beyond_grace(
    smoke_result: dict[str, Any],
) -> None:
    """The smoke log closes windows holding a report later than the grace; Bytewax drops
    such a report from all its windows, and each of those windows must hold exactly that
    many reports fewer (checked by compare), the others being equal field by field."""
    peer = smoke_result["scenarios"]["peer"]
    entry = peer.get("peers", {}).get("bytewax", {})
    if peer["status"] == "skipped" or entry.get("status") == "skipped":
        pytest.skip(entry.get("reason") or peer["reason"])
    assert entry["equality"]["beyond_grace_windows"] > 0
    assert entry["equality"]["equal"]
    # The Quix peer applies our per-window rule, so it has no such windows to set apart.
    quix = peer["peers"].get("quix", {})
    if quix.get("status") == "ok":
        assert quix["equality"]["beyond_grace_windows"] == 0
