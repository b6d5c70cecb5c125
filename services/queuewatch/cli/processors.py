"""Commands of the processors stage: `queuewatch aggregator`."""

from __future__ import annotations

from queuewatch.cli.app import app, fail, setup_logging
from queuewatch.errors import QueuewatchError


@app.command()
def aggregator() -> None:
    """Run the window aggregator (a faust worker) until SIGTERM/SIGINT.

    Reads QUEUEWATCH_* settings: the reports, DLQ and windows topics, the consumer group
    (QUEUEWATCH_AGGREGATOR_GROUP, also the faust app id), the window families and grace.
    """
    from queuewatch.settings import AggregatorSettings, CommonSettings

    common = CommonSettings()
    setup_logging(common.log_level)
    try:
        from queuewatch.aggregator.app import run

        run(common, AggregatorSettings())
    except QueuewatchError as exc:
        raise fail(exc) from exc
