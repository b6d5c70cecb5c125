"""The peers' own virtual environments (benchmarks/work/<peer's venv>), one per peer.

quixstreams pins confluent-kafka<2.13, pydantic<2.14 and pydantic-settings<2.16, which clash
with queuewatch's pins, so the Quix peer cannot live in .venv; Bytewax gets a venv of its own
for the reasons in benchmarks/peers/bytewax-requirements.txt. This module builds a peer's venv
from its requirements file with pip, once, and finds it afterwards.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.dataset import WORK_DIR

PEERS_DIR = Path(__file__).resolve().parent / "peers"


@dataclass(frozen=True)
class Peer:
    """A peer implementation: its name, its module in benchmarks/peers, its venv."""

    name: str
    title: str
    module: str
    requirements: Path
    venv: Path

    @property
    def stamp(self) -> Path:
        """Holds the requirements text the venv was built from."""
        return self.venv / ".requirements"


QUIX = Peer(
    "quix", "Quix Streams", "benchmarks.peers.quix_aggregator",
    PEERS_DIR / "requirements.txt", WORK_DIR / "peer-venv",
)  # fmt: skip
BYTEWAX = Peer(
    "bytewax", "Bytewax", "benchmarks.peers.bytewax_aggregator",
    PEERS_DIR / "bytewax-requirements.txt", WORK_DIR / "bytewax-venv",
)  # fmt: skip
PEERS = {p.name: p for p in (QUIX, BYTEWAX)}


def peer_python(peer: Peer, install: bool) -> Path | None:
    """The peer venv's python; built first when ``install`` (None when absent and not built).

    A stamp holding the requirements file's text tells whether the venv matches it.
    """
    python = peer.venv / "bin" / "python"
    wanted = peer.requirements.read_text()
    if python.exists() and peer.stamp.exists() and peer.stamp.read_text() == wanted:
        return python
    if not install:
        return None
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(peer.venv)], check=True)
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-r", str(peer.requirements)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(
            f"pip could not install the {peer.title} peer's requirements ({peer.requirements}):"
            f"\n{result.stderr.strip()[-2000:]}\nCheck that PyPI is reachable, or run with "
            "--no-peer-install"
        )
    peer.stamp.write_text(wanted)
    return python
