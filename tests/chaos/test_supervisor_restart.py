"""The supervisor restarts a child that dies, with growing pauses, and leaves nothing behind.

The children here are tiny Python scripts (no broker needed): one that keeps crashing, one
that runs quietly, one that ignores SIGTERM, one that finishes its work.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest

from queuewatch.platform.children import ChildSpec
from queuewatch.platform.processes import pid_alive
from queuewatch.platform.supervisor import Supervisor
from queuewatch.settings import SupervisorSettings

pytestmark = pytest.mark.chaos

FAST = SupervisorSettings(
    restart_backoff_initial_s=0.1,
    restart_backoff_max_s=0.4,
    restart_stable_after_s=60.0,
    stop_timeout_s=2.0,
)


def script(name: str, code: str, **kwargs: bool) -> ChildSpec:
    return ChildSpec(name, (), command=(sys.executable, "-c", code), **kwargs)


CRASHER = script(
    "crasher", "import sys; print('bad config: no such table', flush=True); sys.exit(3)"
)
SLEEPER = script("sleeper", "import time; time.sleep(600)")
STUBBORN = script(
    "stubborn",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)",
)
FINISHER = script("finisher", "print('done')", restart_on_success=False)


def poll_until(sup: Supervisor, done: object, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sup.poll()
        if callable(done) and done():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_a_crashing_child_is_restarted_with_capped_backoff_and_its_death_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sup = Supervisor([CRASHER, SLEEPER], env={}, log_dir=tmp_path, settings=FAST)
    caplog.set_level(logging.INFO, logger="queuewatch.platform.supervisor")
    sup.start_all()
    crasher, sleeper = sup.children
    sleeper_pid = sleeper.proc.pid if sleeper.proc else None
    try:
        poll_until(sup, lambda: crasher.restarts >= 4)
        assert crasher.backoff_s == FAST.restart_backoff_max_s  # 0.1, 0.2, 0.4, capped at 0.4
        assert len(set(crasher.pids)) >= 5
        # The healthy sibling was never touched: processors are independent.
        assert sleeper.proc is not None and sleeper.proc.pid == sleeper_pid
        assert sleeper.restarts == 0
        deaths = [r.getMessage() for r in caplog.records if "crasher" in r.getMessage()]
        assert any("exited with status 3" in m and "restarting in" in m for m in deaths)
        assert any("bad config: no such table" in m for m in deaths)  # the log tail is shown
    finally:
        sup.stop()
    assert not any(pid_alive(pid) for c in sup.children for pid in c.pids)


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    sup = Supervisor([STUBBORN], env={}, log_dir=tmp_path, settings=FAST)
    sup.start_all()
    (child,) = sup.children
    time.sleep(1.0)  # let it install its SIGTERM handler; the assertion does not depend on it
    pid = child.pids[0]
    sup.stop()
    assert not pid_alive(pid)
    assert child.last_exit == "was killed by SIGKILL"


def test_a_child_that_finishes_on_purpose_is_not_restarted(tmp_path: Path) -> None:
    sup = Supervisor([FINISHER], env={}, log_dir=tmp_path, settings=FAST)
    sup.start_all()
    (child,) = sup.children
    poll_until(sup, lambda: child.finished)
    time.sleep(0.3)
    sup.poll()
    assert child.restarts == 0 and child.proc is None
    assert (tmp_path / "finisher.log").read_text().strip() == "done"


def test_the_state_file_lists_each_child_with_its_pid(tmp_path: Path) -> None:
    import json

    state = tmp_path / "up.json"
    sup = Supervisor([SLEEPER], env={}, log_dir=tmp_path, settings=FAST, state_file=state)
    sup.start_all()
    try:
        data = json.loads(state.read_text())
        (child,) = data["children"]
        assert child["name"] == "sleeper" and child["pid"] == sup.children[0].pids[0]
        assert child["running"] is True
    finally:
        sup.stop()
    assert json.loads(state.read_text())["children"][0]["running"] is False
