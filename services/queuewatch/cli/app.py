"""The shared Typer application and the helpers every command uses."""

from __future__ import annotations

import typer

from queuewatch.errors import QueuewatchError

app = typer.Typer(
    name="queuewatch",
    help="Live border-crossing queue reports: Kafka log, stream aggregates, ClickHouse.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def setup_logging(level: str = "INFO") -> None:
    """One log format for every queuewatch process (QUEUEWATCH_LOG_FORMAT: text or JSON
    lines), on stderr, with its secrets masked."""
    from queuewatch import logformat, redaction
    from queuewatch.settings import CommonSettings

    logformat.configure(level, CommonSettings().log_format)
    # Before any client exists: kafka-python logs its whole configuration at DEBUG.
    redaction.install(redaction.configured_secrets())


def fail(exc: QueuewatchError | str, code: int = 1) -> typer.Exit:
    """Print a one-line error for a person and return the exit to raise."""
    typer.echo(f"queuewatch: error: {exc}", err=True)
    return typer.Exit(code)
