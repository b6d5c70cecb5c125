"""`queuewatch dashboard`: the live page of every lane, for people rather than SQL."""

from __future__ import annotations

import typer

from queuewatch.cli.app import app, fail, setup_logging


@app.command()
def dashboard() -> None:
    """Serve the live dashboard on QUEUEWATCH_DASHBOARD_ADDRESS:QUEUEWATCH_DASHBOARD_PORT.

    Every lane's current wait, queue, trend and 24 h line, how fresh and how sure each figure
    is, a detail view per lane, and the pipeline's health. It reads ClickHouse read-only,
    through the same guarded path as `queuewatch query`; `queuewatch up` starts it.
    """
    from queuewatch.dashboard.server import serve
    from queuewatch.errors import QueuewatchError
    from queuewatch.settings import CommonSettings, DashboardSettings, QuerySettings

    common = CommonSettings()
    setup_logging(common.log_level)
    try:
        serve(common, DashboardSettings(), QuerySettings())
    except QueuewatchError as exc:
        raise fail(exc) from None
    typer.echo("dashboard stopped")
