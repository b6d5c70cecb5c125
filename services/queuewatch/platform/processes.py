"""Small process primitives the supervisor and the broker share.

Every child of ``queuewatch up`` runs in a session of its own, so Ctrl-C in the terminal
reaches only the supervisor, which then stops the children in order (producers first, the
broker last). Should the supervisor itself be killed with SIGKILL, the children must not
outlive it: on Linux each child asks the kernel for SIGTERM when its parent dies
(``PR_SET_PDEATHSIG``), so nothing is left running even then.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent_hook(parent_pid: int | None = None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGTERM when this process dies.

    Returns None where the kernel has no such feature (macOS): there the supervisor's own
    shutdown is the only guard, as it is for any process manager without it.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c") or "libc.so.6"
    expected_parent = parent_pid if parent_pid is not None else os.getpid()

    def hook() -> None:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # The parent may have died between fork and prctl: then no signal would ever come.
        if os.getppid() != expected_parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (and is not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            # The state letter follows the command name in parentheses; Z means a zombie.
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return True
    return True


def cmdline(pid: int) -> list[str]:
    """The command line of a running process (empty when it cannot be read)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send ``sig`` to the child's whole process group (it leads its own session)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def stop_processes(procs: list[subprocess.Popen[bytes]], timeout_s: float) -> dict[int, int | None]:
    """SIGTERM every process (and its group), wait up to ``timeout_s``, then SIGKILL the rest.

    Returns each pid's exit status (negative: killed by that signal).
    """
    for proc in procs:
        signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        remaining = max(0.0, deadline - time.monotonic())
        try:
            proc.wait(remaining)
        except subprocess.TimeoutExpired:
            signal_group(proc, signal.SIGKILL)
            proc.wait()
    # Grandchildren that ignored SIGTERM still share the group: make sure they are gone too.
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return {proc.pid: proc.returncode for proc in procs}


def wait_gone(pid: int, timeout_s: float) -> bool:
    """Wait until a process that is not our child has exited; True when it did."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return not pid_alive(pid)


def describe_exit(returncode: int | None) -> str:
    """``exited with status 3`` or ``was killed by SIGKILL``, for the log."""
    if returncode is None:
        return "is still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


def processes_with_env(key: str, value: str) -> list[int]:
    """Pids of the processes whose environment has ``key=value`` (Linux ``/proc``).

    Every process ``queuewatch up`` starts inherits its ``QUEUEWATCH_HOME``, so this finds
    whatever a run on one home left behind, however it was started.
    """
    needle = f"{key}={value}".encode()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


#: Set by `queuewatch up` in each child's environment: the supervisor's pid.
SUPERVISOR_PID_ENV = "QUEUEWATCH_SUPERVISOR_PID"
#: Exit status of a child that gave up a graceful stop after its supervisor died (EX_TEMPFAIL).
EXIT_ORPHANED = 75


def start_orphan_watchdog(grace_s: float) -> None:
    """In a child of `queuewatch up`: exit at most ``grace_s`` after the supervisor is gone.

    The parent-death signal asks the child to stop gracefully, but a graceful stop can wait
    forever on a broker that died with the same supervisor (seen: the aggregator's faust
    shutdown outliving a SIGKILLed `up`). Every write of ours is safe to cut short (offsets are
    committed only after the writes they cover), so after the grace the child just exits.
    """
    import threading
    import time

    # Popped, so that processes this child starts are not taken for children of `up`.
    expected = os.environ.pop(SUPERVISOR_PID_ENV, "")
    if not expected.isdigit():
        return  # not started by `up`: nothing to watch
    supervisor = int(expected)

    def watch() -> None:
        # Already reparented when `up` died before this process got here: the grace starts now.
        while os.getppid() == supervisor:
            time.sleep(1.0)
        time.sleep(grace_s)
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="orphan-watchdog", daemon=True).start()
