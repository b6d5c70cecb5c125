"""What the figures were measured on: cores, memory, CPU model, load, versions.

A figure without its machine is not a figure; every result file starts with this block, and
the load average before and after each scenario says whether something else was running.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = [
    "faust-streaming", "aiokafka", "kafka-python", "confluent-kafka", "fastavro",
    "clickhouse-connect", "chdb", "ddsketch",
]  # fmt: skip


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float:
    """Total memory, GiB, from /proc/meminfo."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def git_commit(repo: Path) -> str:
    """The checked-out commit, with "+dirty" when files under services/ differ from it (the
    code measured is then not exactly that commit), or "unknown"."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "services"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


def versions() -> dict[str, str]:
    """Installed versions of the libraries on the measured paths."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def describe(repo: Path) -> dict[str, Any]:
    """The machine block of a result file."""
    return {
        "nproc": os.cpu_count(),
        "memory_gib": memory_gib(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "load_average_at_start": load_average(),
        "git_commit": git_commit(repo),
        "versions": versions(),
    }
