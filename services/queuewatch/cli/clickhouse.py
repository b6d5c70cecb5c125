"""Commands of the clickhouse stage: `migrate`, `query`, `sink raw|windows|all`."""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated

import typer

from queuewatch.cli.app import app, fail, setup_logging


class SinkChoice(StrEnum):
    """Which sink(s) a process runs."""

    raw = "raw"
    windows = "windows"
    contributions = "contributions"
    all = "all"


class FormatChoice(StrEnum):
    """Output formats of `queuewatch query`."""

    table = "table"
    jsonl = "jsonl"
    csv = "csv"


@app.command()
def migrate() -> None:
    """Apply the ClickHouse migrations in infra/clickhouse/ that are not applied yet (and,
    with output contributions, make the window views)."""
    from queuewatch.aggregator.state import AggregationConfig
    from queuewatch.clickhouse import embedded, serving
    from queuewatch.clickhouse.client import connect
    from queuewatch.clickhouse.migrations import migrate as apply
    from queuewatch.errors import QueuewatchError
    from queuewatch.settings import AggregatorSettings, CommonSettings

    common = CommonSettings()
    agg = AggregatorSettings()
    setup_logging(common.log_level)
    url = common.resolved_clickhouse_url
    try:
        if embedded.is_embedded(url):
            owner = embedded.current_owner(embedded.chdb_folder(url))
            if owner is not None:
                typer.echo(
                    f"the embedded ClickHouse is owned by process {owner.pid}, which applied "
                    "the migrations when it started; nothing to do"
                )
                return
            lock = embedded.acquire(embedded.chdb_folder(url), wait_s=embedded.OWNER_WAIT_S)
        else:
            lock = None
        try:
            client = connect(url)
            try:
                applied = apply(client, common.clickhouse_database)
                # Output contributions: the windows are views, made here too, so a deployment
                # whose sinks may not run DDL (compose) gets them from this one-shot.
                changed = (
                    serving.serve_assembled(
                        client, common.clickhouse_database, AggregationConfig.from_settings(agg)
                    )
                    if agg.aggregator_output == "contributions"
                    else []
                )
            finally:
                client.close()
        finally:
            if lock is not None:
                lock.release()
    except QueuewatchError as exc:
        raise fail(exc) from None
    for migration in applied:
        typer.echo(f"applied {migration.path.name}")
    for line in changed:
        typer.echo(f"{line} (output contributions: windows assembled when read)")
    typer.echo(f"database {common.clickhouse_database} is up to date")


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="The SQL to run, or - to read it from stdin.")],
    output: Annotated[
        FormatChoice,
        typer.Option("--format", "-f", help="table, jsonl (one object per row) or csv."),
    ] = FormatChoice.table,
) -> None:
    """Run one read-only SELECT against the projections, within the QUEUEWATCH_QUERY_* limits.

    The query guard refuses anything else (writes, files, table functions, SETTINGS) with the
    reason; see docs/security.md.
    """
    from queuewatch.clickhouse.query import query_projections
    from queuewatch.errors import QueuewatchError
    from queuewatch.settings import CommonSettings, QuerySettings

    common = CommonSettings()
    setup_logging("WARNING")
    text = sys.stdin.read() if sql == "-" else sql
    try:
        body = query_projections(
            common.resolved_clickhouse_url,
            common.clickhouse_database,
            text,
            output.value,
            QuerySettings(),
        )
    except QueuewatchError as exc:
        raise fail(exc) from None
    sys.stdout.buffer.write(body)
    sys.stdout.buffer.flush()


@app.command()
def sink(
    which: Annotated[
        SinkChoice,
        typer.Argument(
            help="raw (queue-reports), windows (crossing-windows), contributions "
            "(crossing-contributions; the windows are views over them) or all (raw, and windows or "
            "contributions as QUEUEWATCH_AGGREGATOR_OUTPUT says)."
        ),
    ],
) -> None:
    """Write Kafka topics to ClickHouse, committing offsets only after each write."""
    from queuewatch.errors import QueuewatchError
    from queuewatch.settings import AggregatorSettings, CommonSettings, SinkSettings
    from queuewatch.sinks.runner import SinkKind, run_sinks

    common = CommonSettings()
    setup_logging(common.log_level)
    output: SinkKind = AggregatorSettings().aggregator_output
    chosen: dict[SinkChoice, list[SinkKind]] = {
        SinkChoice.raw: ["raw"],
        SinkChoice.windows: ["windows"],
        SinkChoice.contributions: ["contributions"],
        SinkChoice.all: ["raw", output],
    }
    kinds = chosen[which]
    try:
        run_sinks(kinds, common, SinkSettings())
    except QueuewatchError as exc:
        raise fail(exc) from None
