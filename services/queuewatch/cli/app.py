"""The shared Typer application and the helpers every command uses."""

from __future__ import annotations

import logging
import sys

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
    """One log format for every queuewatch process, on stderr, with its secrets masked."""
    from queuewatch import redaction

    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Before any client exists: kafka-python logs its whole configuration at DEBUG.
    redaction.install(redaction.configured_secrets())


def fail(exc: QueuewatchError | str, code: int = 1) -> typer.Exit:
    """Print a one-line error for a person and return the exit to raise."""
    typer.echo(f"queuewatch: error: {exc}", err=True)
    return typer.Exit(code)
