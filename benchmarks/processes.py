"""Runs a processor under test as a child process and watches it from outside.

The harness never reaches into a processor: it starts the real command (``queuewatch
aggregator``, ``queuewatch sink all``, the peers) with its settings in the environment,
samples its resident memory (with its children) every ``interval_s``, watches its consumer
group through the Kafka admin API, and stops it with SIGTERM as an operator would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaAdminClient


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants, bytes (0 once it has gone)."""
    try:
        import psutil
    except ImportError:
        return _proc_rss(pid)
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def _proc_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


@dataclass
class Child:
    """A started processor: its process, log file and memory samples."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    started: float
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _sampler: threading.Thread | None = None

    @property
    def peak_rss(self) -> int:
        """Largest resident memory sampled, bytes."""
        return max((rss for _, rss in self.samples), default=0)

    def rss_at(self, moment: float) -> int:
        """The first memory sample taken at or after ``moment`` (a monotonic time)."""
        for t, rss in self.samples:
            if t >= moment:
                return rss
        return self.samples[-1][1] if self.samples else 0

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far (Linux /proc; 0 once gone)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime

    def check_alive(self) -> None:
        """Raise with the tail of the log when the process has died."""
        if not self.alive():
            raise RuntimeError(
                f"{self.name} exited with status {self.process.returncode}; "
                f"last lines of {self.log_path}:\n{tail(self.log_path)}"
            )

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, wait, SIGKILL if it hangs; return the exit status."""
        self._stop.set()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._sampler is not None:
            self._sampler.join(5)
        return int(self.process.returncode)


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(
    name: str,
    argv: Sequence[str],
    env: dict[str, str],
    log_dir: Path,
    interval_s: float = 0.25,
    cwd: Path | None = None,
) -> Child:
    """Start ``argv`` with ``env`` added to this environment; sample its memory."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    out = log_path.open("ab")
    full_env = {**os.environ, **env}
    process = subprocess.Popen(
        list(argv), stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=cwd
    )
    out.close()
    child = Child(name, process, log_path, time.monotonic())

    def sample() -> None:
        while not child._stop.is_set() and process.poll() is None:
            child.samples.append((time.monotonic(), rss_bytes(process.pid)))
            child._stop.wait(interval_s)

    child._sampler = threading.Thread(target=sample, name=f"rss-{name}", daemon=True)
    child._sampler.start()
    return child


def group_state(bootstrap: str, group: str) -> tuple[str, int]:
    """(state, member count) of a consumer group, e.g. ("Stable", 1)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="queuewatch-bench-group")
    try:
        info = admin.describe_consumer_groups([group])[0]
        return str(info.state), len(info.members)
    finally:
        admin.close()
