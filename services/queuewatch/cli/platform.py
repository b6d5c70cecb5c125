"""Commands of the platform stage."""

from __future__ import annotations

from queuewatch.cli.app import app  # noqa: F401


@app.command()
def version() -> None:
    """Print the queuewatch version."""
    import typer

    from queuewatch import __version__

    typer.echo(__version__)
