"""Progress or an honest failure: a processor that cannot move says so, and status says STALLED.

Both tests freeze something for real (SIGSTOP) while reports wait: the aggregator itself, and
the broker under a running aggregator.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from queuewatch.platform.broker import LocalBroker, free_port
from queuewatch.platform.liveness import EXIT_STALLED
from tests.chaos.test_supervisor_up import UpProcess, wait_for
from tests.integration.test_aggregator_harness import (
    AggregatorProcess,
    WindowReader,
    make_scenario,
    make_topics,
    publish,
    reference_windows,
)
from tests.integration.test_platform_failures import up_env as make_up_env

pytestmark = pytest.mark.chaos

STALL_S = 8.0
#: The frozen aggregator's stall period. A process frozen past its group session (10 s) must
#: rejoin when it wakes, and a rejoin plus the state's recovery can outlast 8 s on a loaded
#: machine (CI once saw the woken worker exit as stalled mid-rejoin): the test is about the
#: frozen time not being held against it, not about how fast a rejoin is.
FROZEN_STALL_S = 20.0


def status(env: dict[str, str]) -> tuple[int, str, dict[str, object]]:
    """`queuewatch status` and `status --json`: exit code, text, report."""
    text = subprocess.run(
        [sys.executable, "-m", "queuewatch", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    data = subprocess.run(
        [sys.executable, "-m", "queuewatch", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return text.returncode, text.stdout + text.stderr, json.loads(data.stdout)


def health(env: dict[str, str], kind: str) -> subprocess.CompletedProcess[str]:
    """`queuewatch health KIND`, the compose healthcheck, on the same home."""
    return subprocess.run(
        [sys.executable, "-m", "queuewatch", "health", kind],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def group_lag(report: dict[str, object], group: str) -> int:
    groups = report["groups"]
    assert isinstance(groups, list)
    (found,) = [g for g in groups if g["group"] == group]
    return int(found["lag"])


def test_a_frozen_aggregator_is_shown_stalled_with_its_lag_and_status_exits_non_zero(
    tmp_path: Path, kafka_libs: Path
) -> None:
    home = (tmp_path / "home").resolve()
    env = make_up_env(
        home,
        kafka_libs,
        QUEUEWATCH_KAFKA_HEAP="384m",
        QUEUEWATCH_STALL_TIMEOUT_S=str(FROZEN_STALL_S),
    )
    bootstrap = env["QUEUEWATCH_KAFKA_BOOTSTRAP"]
    scenario = make_scenario(seed=11, crossings=3, per_crossing=60)
    half = len(scenario.messages) // 2
    up = UpProcess(home, env, "stalled")
    frozen: int | None = None
    try:
        up.wait_ready()
        publish(bootstrap, "queue-reports", scenario.messages[:half])
        wait_for(
            lambda: status(env)[0] == 0 and group_lag(status(env)[2], "queuewatch-aggregator") == 0,
            180,
            "the pipeline to catch up and be healthy",
        )
        pid = up.child("aggregator")["pid"]
        assert isinstance(pid, int)
        # Its first heartbeat comes one watch interval after its start.
        wait_for(lambda: health(env, "aggregator").returncode == 0, 60, "a heartbeat saying ok")
        healthy = health(env, "aggregator")
        assert healthy.returncode == 0, healthy.stderr
        assert f"aggregator pid {pid}: ok" in healthy.stdout
        os.kill(pid, signal.SIGSTOP)
        frozen = pid
        publish(bootstrap, "queue-reports", scenario.messages[half:])
        time.sleep(FROZEN_STALL_S + 2)  # the heartbeat ages past the stall period

        code, text, report = status(env)
        assert code != 0, text
        assert "STALLED" in text, text
        assert f"aggregator (pid {pid}) has not reported for" in text, text
        assert report["healthy"] is False
        assert report["stalled"] == ["queuewatch-aggregator"]
        lag = group_lag(report, "queuewatch-aggregator")
        assert lag > 0
        assert f"group queuewatch-aggregator lag {lag}" in text, text
        frozen_check = health(env, "aggregator")  # the container healthcheck says so too
        assert frozen_check.returncode == 1
        assert f"aggregator (pid {pid}) has not reported for" in frozen_check.stderr

        os.kill(pid, signal.SIGCONT)
        frozen = None
        # Woken up, it catches up: the frozen time is not held against it, and status heals.
        wait_for(
            lambda: status(env)[0] == 0 and group_lag(status(env)[2], "queuewatch-aggregator") == 0,
            180,
            "the woken aggregator to catch up",
        )
        # It was not killed for having been frozen (if it was, the supervisor's log says why).
        assert up.child("aggregator")["pid"] == pid, up.output()[-4000:]
        assert up.stop(signal.SIGTERM) == 0
    finally:
        if frozen is not None:
            os.kill(frozen, signal.SIGCONT)
        up.kill_if_running()


def test_an_aggregator_under_a_frozen_broker_exits_stalled_and_a_restart_is_exact(
    tmp_path: Path, kafka_libs: Path
) -> None:
    broker = LocalBroker(
        data_root=tmp_path / "kafka",
        libs_dir=kafka_libs,
        port=free_port(),
        controller_port=free_port(),
        heap="384m",
    )
    broker.start(timeout_s=90)
    frozen = False
    agg: AggregatorProcess | None = None
    try:
        settings = make_topics(broker.bootstrap, "frozen", partitions=3)
        scenario = make_scenario(seed=12, crossings=4, per_crossing=200)
        expected = reference_windows(scenario.valid_in_order)
        agg = AggregatorProcess(
            settings,
            tmp_path,
            group="agg-frozen",
            QUEUEWATCH_STALL_TIMEOUT_S=str(STALL_S),
            QUEUEWATCH_AGGREGATOR_BATCH_SIZE="50",
        )
        reader = WindowReader(broker.bootstrap, settings.windows_topic)
        publish(broker.bootstrap, settings.reports_topic, scenario.messages)
        agg.start()
        wait_for(lambda: reader.poll(200) > 0 or reader.count > 0, 120, "the first windows")
        assert broker.process is not None
        broker_pid = broker.process.pid
        os.kill(broker_pid, signal.SIGSTOP)
        frozen = True
        assert agg.proc is not None
        code = agg.proc.wait(timeout=STALL_S * 12)
        assert code == EXIT_STALLED, agg.logs()
        assert "aggregator stalled:" in agg.logs()
        assert "exiting (status 75)" in agg.logs()

        os.kill(broker_pid, signal.SIGCONT)
        frozen = False
        agg.start()
        problems = reader.wait_for(expected, timeout_s=150)
        assert problems == [], "\n".join(problems) + "\n" + agg.logs()
        assert reader.version_went_down == 0
        reader.close()
    finally:
        if frozen and broker.process is not None:
            os.kill(broker.process.pid, signal.SIGCONT)
        if agg is not None and agg.alive():
            agg.stop()
        broker.stop()
