"""The Quix Streams peer's own virtual environment (benchmarks/work/peer-venv).

quixstreams pins confluent-kafka<2.13, pydantic<2.14 and pydantic-settings<2.16, which clash
with queuewatch's pins, so the peer cannot live in .venv. This module builds its venv from
benchmarks/peers/requirements.txt with pip, once, and finds it afterwards.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks.dataset import WORK_DIR

REQUIREMENTS = Path(__file__).resolve().parent / "peers" / "requirements.txt"
VENV = WORK_DIR / "peer-venv"
STAMP = VENV / ".requirements"


def peer_python(install: bool) -> Path | None:
    """The peer venv's python; built first when ``install`` (None when absent and not built).

    A stamp holding the requirements file's text tells whether the venv matches it.
    """
    python = VENV / "bin" / "python"
    wanted = REQUIREMENTS.read_text()
    if python.exists() and STAMP.exists() and STAMP.read_text() == wanted:
        return python
    if not install:
        return None
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(
            f"pip could not install the Quix peer's requirements ({REQUIREMENTS}):\n"
            f"{result.stderr.strip()[-2000:]}\nCheck that PyPI is reachable, or run with --no-peer"
        )
    STAMP.write_text(wanted)
    return python
