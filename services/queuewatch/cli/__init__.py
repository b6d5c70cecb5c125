"""The `queuewatch` command line: one Typer app, commands grouped by the stage they drive.

Each module below registers its commands on :data:`app`; heavy imports stay inside the
commands so that `queuewatch --help` answers at once.
"""

from __future__ import annotations

from queuewatch.cli import (  # noqa: F401  (registers)
    clickhouse,
    dashboard,
    operations,
    platform,
    processors,
    producers,
)
from queuewatch.cli.app import app


def main() -> None:
    """Entry point of the `queuewatch` console script."""
    from queuewatch.platform.processes import start_orphan_watchdog
    from queuewatch.settings import SupervisorSettings

    start_orphan_watchdog(SupervisorSettings().stop_timeout_s)
    app()


__all__ = ["app", "main"]
