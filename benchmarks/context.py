"""What every scenario gets: the broker, a work folder, the plan (sizes) and its results."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Plan:
    """Sizes of one benchmark run; ``--smoke`` and ``--full`` differ only here.

    The full sizes fit a run of about 15 minutes on the 2-core machine of docs/performance.md;
    they are smaller than the issue asked for (1 M reports) because the aggregator replays a
    sparse log at under a thousand reports per second there and a dense one at several
    thousand (see docs/performance.md). ``--scale`` multiplies the report counts.
    """

    mode: str
    runs: int
    limit_reports: int
    aggregator_reports: int
    aggregator_crossings: int
    aggregator_span_hours: int
    dense_reports: int
    dense_crossings: int
    dense_span_hours: int
    peer_reports: int
    peer_crossings: int
    peer_span_hours: int
    e2e_rates: tuple[int, ...]
    e2e_seconds: float
    e2e_crossings: int
    e2e_drain_s: float
    e2e_runs: int
    query_reports: int
    query_crossings: int
    query_repeats: int
    sink_reports: int
    sink_windows: int
    install_peer: bool


# The peer's smoke log spans 6 h so that some windows holding a report later than the grace
# close (7 with this seed): the smoke run then checks the Bytewax peer's lateness rule too.
SMOKE = Plan(
    mode="smoke", runs=1, limit_reports=2000, aggregator_reports=2000, aggregator_crossings=20,
    aggregator_span_hours=3, dense_reports=2000, dense_crossings=4, dense_span_hours=3,
    peer_reports=600, peer_crossings=5, peer_span_hours=6,
    e2e_rates=(200,), e2e_seconds=3.0, e2e_crossings=20, e2e_drain_s=90.0, e2e_runs=1,
    query_reports=20_000, query_crossings=50, query_repeats=2, sink_reports=2000,
    sink_windows=2000, install_peer=False,
)  # fmt: skip

# The sinks get 200,000 rows: a drain at 50k rows/s then lasts seconds, well above the 0.25 s
# at which the harness polls the group's commits for the end.
FULL = Plan(
    mode="full", runs=3, limit_reports=1_000_000, aggregator_reports=15_000,
    aggregator_crossings=1000, aggregator_span_hours=48, dense_reports=100_000,
    dense_crossings=20, dense_span_hours=24, peer_reports=5_000, peer_crossings=100,
    peer_span_hours=12, e2e_rates=(50, 250, 1000, 5000, 10_000, 20_000), e2e_seconds=15.0,
    e2e_crossings=1000, e2e_drain_s=30.0, e2e_runs=1, query_reports=10_000_000,
    query_crossings=1000, query_repeats=7, sink_reports=200_000, sink_windows=200_000,
    install_peer=True,
)  # fmt: skip


@dataclass
class Context:
    """Shared by the scenarios of one run."""

    plan: Plan
    bootstrap: str
    work: Path
    python: str = sys.executable
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def log_dir(self) -> Path:
        """Where child processes write their logs."""
        return self.work / "logs"
