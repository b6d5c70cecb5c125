"""Keeps the processors of ``queuewatch up`` running: start, restart with backoff, stop.

The supervisor's contract:

1. Each child runs in a session of its own (Ctrl-C reaches only the supervisor) and asks
   the kernel to be sent SIGTERM should the supervisor die (see ``processes.py``).
2. A child that dies is logged (its exit status and the last lines of its log) and started
   again after a pause that doubles with each quick death, capped at
   ``restart_backoff_max_s``; a child that ran ``restart_stable_after_s`` starts over at
   the initial pause. A child that finishes by itself with status 0 and is marked
   ``restart_on_success=False`` (a bounded simulation) is left finished.
3. Stopping sends SIGTERM to the producers first, waits, then to the processors, waits up to
   ``stop_timeout_s`` and kills what is left; so processors see the producers' last events
   and get time to flush and commit.

Every change is written to a small JSON state file that ``queuewatch status`` reads.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from queuewatch.platform.children import ChildSpec
from queuewatch.platform.processes import describe_exit, die_with_parent_hook, stop_processes
from queuewatch.settings import SupervisorSettings

log = logging.getLogger(__name__)

#: Lines of a dead child's log repeated in the supervisor's log, so the cause is on screen.
TAIL_LINES = 5


@dataclass
class Child:
    """A supervised child and its restart history."""

    spec: ChildSpec
    log_file: Path
    backoff_s: float
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    started_wall: float = 0.0
    restarts: int = 0
    next_start: float = 0.0
    finished: bool = False
    last_exit: str | None = None
    pids: list[int] = field(default_factory=list)

    @property
    def running(self) -> bool:
        """True while the child's process is alive."""
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    """Starts, watches and stops a set of children (see the module docstring)."""

    def __init__(
        self,
        specs: list[ChildSpec],
        env: Mapping[str, str],
        log_dir: Path,
        settings: SupervisorSettings | None = None,
        state_file: Path | None = None,
        extra_state: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings or SupervisorSettings()
        self.env = dict(env)
        self.log_dir = log_dir
        self.state_file = state_file
        self.extra_state = dict(extra_state or {})
        self.children = [
            Child(spec, log_dir / f"{spec.name}.log", self.settings.restart_backoff_initial_s)
            for spec in specs
        ]

    # -- lifecycle ----------------------------------------------------------------------

    def start_all(self) -> None:
        """Start every child now."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for child in self.children:
            self._start(child)
        self.write_state()

    def poll(self) -> None:
        """Notice dead children and start those whose restart pause is over."""
        now = time.monotonic()
        changed = False
        for child in self.children:
            if child.proc is not None and child.proc.poll() is not None:
                self._on_exit(child, now)
                changed = True
            if child.proc is None and not child.finished and now >= child.next_start:
                self._start(child)
                child.restarts += 1
                changed = True
        if changed:
            self.write_state()

    def stop(self) -> None:
        """Stop producers, then processors (SIGTERM, wait, SIGKILL); nothing is left running."""
        timeout = self.settings.stop_timeout_s
        for wave in (True, False):
            procs = [
                c.proc for c in self.children if c.spec.producer is wave and c.proc is not None
            ]
            if not procs:
                continue
            statuses = stop_processes(procs, timeout)
            for child in self.children:
                if child.proc is not None and child.proc.pid in statuses:
                    child.last_exit = describe_exit(statuses[child.proc.pid])
                    log.info(
                        "%s (pid %d) stopped: it %s",
                        child.spec.name,
                        child.proc.pid,
                        child.last_exit,
                    )
                    child.proc = None
                    child.finished = True
        self.write_state()

    # -- internals ----------------------------------------------------------------------

    def _start(self, child: Child) -> None:
        out = open(child.log_file, "ab")  # noqa: SIM115 - the child owns it from here
        try:
            child.proc = subprocess.Popen(
                child.spec.argv(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env, **child.spec.environment()},
                start_new_session=True,
                preexec_fn=die_with_parent_hook(),
            )
        finally:
            out.close()
        child.started_at = time.monotonic()
        child.started_wall = time.time()
        child.pids.append(child.proc.pid)
        log.info("started %s (pid %d), log %s", child.spec.name, child.proc.pid, child.log_file)

    def _on_exit(self, child: Child, now: float) -> None:
        assert child.proc is not None
        status = child.proc.returncode
        ran = now - child.started_at
        pid = child.proc.pid
        child.proc = None
        child.last_exit = describe_exit(status)
        if status == 0 and not child.spec.restart_on_success:
            child.finished = True
            log.info("%s (pid %d) finished after %.1f s", child.spec.name, pid, ran)
            return
        if ran >= self.settings.restart_stable_after_s:
            child.backoff_s = self.settings.restart_backoff_initial_s
        pause = child.backoff_s
        child.next_start = now + pause
        child.backoff_s = min(pause * 2, self.settings.restart_backoff_max_s)
        tail = _tail(child.log_file, TAIL_LINES)
        log.warning(
            "%s (pid %d) %s after %.1f s; restarting in %.1f s (restart %d)%s",
            child.spec.name,
            pid,
            child.last_exit,
            ran,
            pause,
            child.restarts + 1,
            "; its log ends with:\n    " + "\n    ".join(tail) if tail else "",
        )

    # -- state for `queuewatch status` ---------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What runs now: one entry per child (pid, restarts, last exit)."""
        return {
            **self.extra_state,
            "supervisor_pid": os.getpid(),
            "children": [
                {
                    "name": c.spec.name,
                    "command": " ".join(c.spec.args) if c.spec.command is None else "custom",
                    "pid": c.proc.pid if c.proc is not None else None,
                    "running": c.running,
                    "finished": c.finished,
                    "restarts": c.restarts,
                    "last_exit": c.last_exit,
                    "log": str(c.log_file),
                    "metrics_port": c.spec.metrics_port,
                }
                for c in self.children
            ],
        }

    def write_state(self) -> None:
        """Replace the state file atomically (readers never see half a file)."""
        if self.state_file is None:
            return
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.snapshot(), indent=2))
        tmp.replace(self.state_file)


def _tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` non-empty lines of a log file (cheap: reads the last 8 KiB)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 8192))
            text = fh.read().decode(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]
