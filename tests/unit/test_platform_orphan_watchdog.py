"""A child of `queuewatch up` exits by itself once its supervisor is gone."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from queuewatch.platform.processes import EXIT_ORPHANED, SUPERVISOR_PID_ENV, pid_alive

CHILD = (
    "import time; from queuewatch.platform.processes import start_orphan_watchdog; "
    "start_orphan_watchdog(0.5); time.sleep(120)"
)
# A stand-in supervisor: starts the child with its own pid in the environment, prints the
# child's pid, and exits at once, leaving the child orphaned.
PARENT = f"""
import os, subprocess, sys
env = dict(os.environ, {SUPERVISOR_PID_ENV}=str(os.getpid()))
child = subprocess.Popen([sys.executable, "-c", {CHILD!r}], env=env)
print(child.pid, flush=True)
"""


def test_an_orphaned_child_exits_after_the_grace() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PARENT], capture_output=True, text=True, timeout=60, check=True
    )
    child = int(out.stdout.strip())
    deadline = time.monotonic() + 60
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = pid_alive(child)
    if alive:
        os.kill(child, 9)
    assert not alive, "the orphaned child kept running"


def test_a_process_not_started_by_up_has_no_watchdog() -> None:
    env = {k: v for k, v in os.environ.items() if k != SUPERVISOR_PID_ENV}
    done = subprocess.run(
        [sys.executable, "-c", CHILD.replace("time.sleep(120)", "time.sleep(2)")],
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert done.returncode != EXIT_ORPHANED
