"""The chaos soak, CI-sized: about 2.5 minutes of publishing with kills of the aggregator, the
sinks and the broker, a burst, a sink outage and a 1 -> 2 -> 1 scale, then every window and
report checked against an offline replay of the log (``tests/support/soak_run.py``).

The full form is ``make chaos`` (``python -m tests.chaos.soak --minutes N``). The seed is fixed
here so a failure in CI can be replayed; the soak prints its plan and verdict either way.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.soak_plan import PlanConfig
from tests.support.soak_run import SoakConfig, run_soak

pytestmark = pytest.mark.chaos

CI_SEED = 11
CI_PUBLISH_S = 150.0


@pytest.mark.timeout(1200)
def test_ci_soak_ends_with_every_window_and_report_as_the_log_says(
    tmp_path: Path, kafka_libs: Path
) -> None:
    result = run_soak(
        SoakConfig(
            workdir=tmp_path / "soak",
            kafka_libs=kafka_libs,
            plan=PlanConfig.ci(CI_PUBLISH_S),
            seed=CI_SEED,
            catch_up_timeout_s=240.0,
        )
    )
    assert result.error is None, result.summary()
    assert set(result.kills) == {"aggregator", "sink", "broker"}, result.summary()
    assert not result.stalled, result.summary()
    assert result.reports_lost == 0, result.summary()
    assert result.reports_doubled == 0, result.summary()
    assert result.windows_wrong == 0, result.summary()
    assert result.ok, result.summary()
