"""The metrics endpoint and what `status` reads from it (a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from queuewatch.platform import metrics, status
from queuewatch.platform.broker import free_port


def sink(name: str, rows: int, retrying: str | None = None) -> SimpleNamespace:
    stats = SimpleNamespace(
        records=rows + 1,
        rows_written=rows,
        batches=2,
        failed_writes=1 if retrying else 0,
        dead_letters=1,
        last_commit_at=None,
    )
    return SimpleNamespace(name=name, stats=stats, lag=3, retrying=retrying)


def test_status_reads_the_key_figures_a_sink_serves_and_shows_them() -> None:
    sinks = [sink("raw-sink", 265), sink("windows-sink", 1620, retrying="ClickHouse down")]
    registry = CollectorRegistry()
    registry.register(metrics.SinkCollector(lambda: sinks))
    port = metrics.serve(registry, "127.0.0.1", free_port(), "sink")
    assert port is not None
    figures = status._key_figures(port)
    assert isinstance(figures, dict)
    assert figures['queuewatch_sink_rows_written_total{sink="raw-sink"}'] == 265
    assert figures['queuewatch_sink_paused{sink="windows-sink"}'] == 1
    sinks[0].stats.rows_written = 300  # read at scrape time, not copied at start
    assert status._key_figures(port)['queuewatch_sink_rows_written_total{sink="raw-sink"}'] == 300
    report = status.StatusReport(kafka_bootstrap="127.0.0.1:1")
    report.supervisor = {
        "supervisor_pid": 1,
        "children": [
            {"name": "sink-all", "pid": 2, "running": True, "metrics_port": port,
             "metrics": status._key_figures(port)},
        ],
    }  # fmt: skip
    text = status.render_text(report)
    assert f"sink-all pid 2, 0 restarts, metrics :{port}" in text
    assert "rows_written raw-sink 300" in text and "paused windows-sink 1" in text


def test_a_port_of_zero_serves_nothing_and_an_unreadable_one_says_so() -> None:
    assert metrics.serve(CollectorRegistry(), "127.0.0.1", 0, "sink") is None
    why = status._key_figures(free_port())
    assert isinstance(why, str) and why.startswith("metrics not readable on port")
