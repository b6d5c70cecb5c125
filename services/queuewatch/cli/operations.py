"""Commands for operators: `queuewatch dlq list|show|republish`, `queuewatch rebuild`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from queuewatch.cli.app import app, fail, setup_logging
from queuewatch.errors import QueuewatchError

dlq_app = typer.Typer(
    help="Dead letters: list them, show one in full, re-publish them once the cause is fixed.",
    no_args_is_help=True,
)
app.add_typer(dlq_app, name="dlq")

#: Bytes of each letter's value shown by `dlq list`.
PREVIEW_BYTES = 32


def _context() -> tuple[Any, Any]:
    from queuewatch.kafka.security import KafkaSecurity
    from queuewatch.settings import CommonSettings

    common = CommonSettings()
    setup_logging("WARNING")
    return common, KafkaSecurity.from_settings(common)


def _letters(common: Any, security: Any) -> list[Any]:
    from kafka.errors import KafkaError

    from queuewatch.operations.dlq import read_letters

    try:
        return read_letters(common.kafka_bootstrap, common.dlq_topic, security)
    except KafkaError as exc:
        raise fail(
            f"cannot read {common.dlq_topic} at {common.kafka_bootstrap} ({exc}); is the broker "
            "up? (`queuewatch status`)"
        ) from None
    except QueuewatchError as exc:
        raise fail(exc) from None


def _when(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dlq_app.command("list")
def list_letters(
    reason: Annotated[str | None, typer.Option(help="Only letters with this reason code.")] = None,
    offset: Annotated[int, typer.Option(help="Skip this many letters (paging).")] = 0,
    limit: Annotated[int, typer.Option(help="Show at most this many letters.")] = 50,
) -> None:
    """One line per dead letter, oldest first: N, id, time, reason, source, first bytes."""
    from queuewatch.operations.dlq import printable, select

    common, security = _context()
    letters = _letters(common, security)
    chosen = select(letters, reason, offset, limit)
    index = {x.ref: i for i, x in enumerate(letters, 1)}
    for x in chosen:
        typer.echo(
            f"{index[x.ref]:>5}  {x.ref:<10} {_when(x.timestamp_ms)}  {x.reason:<22} "
            f"{x.source:<30} {printable(x.value, PREVIEW_BYTES)}"
        )
    total = len(select(letters, reason))
    typer.echo(
        f"{len(chosen)} shown of {total} dead letters"
        + (f" with reason {reason}" if reason else "")
        + f" in {common.dlq_topic}",
        err=True,
    )


@dlq_app.command()
def show(
    ref: Annotated[str, typer.Argument(help="N from `dlq list`, or the id PARTITION:OFFSET.")],
) -> None:
    """One dead letter in full: headers, reason, a hex and text dump, the decoded report."""
    import json

    from queuewatch.contract.codec import DecodeError, decode
    from queuewatch.contract.schemas import QUEUE_REPORT, default_registry
    from queuewatch.operations.dlq import DlqError, find, hexdump

    common, security = _context()
    try:
        letter = find(_letters(common, security), ref)
    except DlqError as exc:
        raise fail(exc) from None
    typer.echo(f"letter   {common.dlq_topic} {letter.ref} at {_when(letter.timestamp_ms)}")
    typer.echo(f"reason   {letter.reason}")
    typer.echo(f"source   {letter.source}")
    typer.echo(f"key      {letter.key!r}")
    typer.echo("headers")
    for name, value in letter.headers:
        typer.echo(f"  {name}: {value.decode('utf-8', 'replace')}")
    value = letter.value or b""
    typer.echo(f"value    {len(value)} bytes")
    for line in hexdump(value):
        typer.echo(f"  {line}")
    try:
        record = decode(value, default_registry().latest(QUEUE_REPORT))
    except DecodeError as exc:
        typer.echo(f"decoded  no: {exc}")
    else:
        typer.echo("decoded")
        typer.echo(json.dumps(record, indent=2, default=str))


@dlq_app.command("republish")
def republish_letters(
    refs: Annotated[
        list[str] | None, typer.Argument(help="Letters: N from `dlq list` or PARTITION:OFFSET.")
    ] = None,
    reason: Annotated[
        str | None, typer.Option(help="Every letter with this reason code (instead of ids).")
    ] = None,
) -> None:
    """Send letters back to the reports topic with their key and a header linking the letter.

    A letter already re-published (a report in the log links to it) is refused and named, so
    a report counts once however often this runs. Exits 1 when any letter was refused.
    """
    from kafka.errors import KafkaError

    from queuewatch.operations.dlq import DlqError, find, republish, select

    if not refs and reason is None:
        raise fail("name the letters (N or PARTITION:OFFSET) or give --reason CODE")
    common, security = _context()
    letters = _letters(common, security)
    try:
        chosen = [find(letters, r) for r in refs] if refs else select(letters, reason)
        if refs and reason is not None:
            chosen = select(chosen, reason)
        sent, why = republish(
            common.kafka_bootstrap, common.reports_topic, common.dlq_topic, chosen, security
        )
    except DlqError as exc:
        raise fail(exc) from None
    except KafkaError as exc:
        raise fail(f"re-publishing failed ({exc}); run the same command again") from None
    for x in sent:
        typer.echo(f"re-published {x.ref} ({x.reason}, from {x.source}) to {common.reports_topic}")
    for ref, text in why.items():
        typer.echo(f"refused {ref}: {text}", err=True)
    typer.echo(f"{len(sent)} re-published, {len(why)} refused", err=True)
    raise typer.Exit(1 if why else 0)


@app.command()
def rebuild(
    raw: Annotated[bool, typer.Option("--raw", help="Rebuild queue_reports.")] = False,
    windows: Annotated[
        bool, typer.Option("--windows", help="Rebuild crossing_windows and window_latest.")
    ] = False,
    drop_old: Annotated[
        bool, typer.Option("--drop-old", help="Drop the old tables instead of keeping them.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Swap without asking.")] = False,
) -> None:
    """Rebuild the ClickHouse projections from the Kafka log, then swap them in atomically.

    Without --raw or --windows, both. Shadow tables are filled by new consumer groups (the
    windows by the aggregator, re-run from the first report with the current settings, e.g.
    a new QUEUEWATCH_AGGREGATOR_GRACE) while queries keep reading the live tables; once
    complete, EXCHANGE TABLES swaps them. The old tables stay as <table>_before_<time> unless
    --drop-old. The windows need the aggregator and the window sink stopped; on the embedded
    ClickHouse the whole `queuewatch up` (this command then answers `queuewatch query`).
    See docs/operations.md, "Rebuilding the projections".
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from queuewatch.operations.rebuild import Rebuild, RebuildPlan, new_stamp
    from queuewatch.settings import CommonSettings

    common = CommonSettings()
    setup_logging("WARNING")
    both = not (raw or windows)
    console = Console(stderr=True)
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} reports"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    tasks: dict[str, Any] = {}

    def progress(p: Any) -> None:
        if p.stage not in tasks:
            tasks[p.stage] = bars.add_task(p.stage, total=max(p.total, 1))
        bars.update(tasks[p.stage], completed=p.done, total=max(p.total, 1))

    def confirm(question: str) -> bool:
        bars.stop()
        return True if yes else typer.confirm(question, default=False)

    plan = RebuildPlan(
        raw=raw or both, windows=windows or both, stamp=new_stamp(), drop_old=drop_old,
        confirm=confirm,
    )  # fmt: skip
    try:
        with bars:
            result = Rebuild(common, plan, on_progress=progress).run()
    except QueuewatchError as exc:
        raise fail(exc) from None
    if not result.swapped:
        typer.echo(
            "not swapped: the live tables are unchanged; the *_rebuild tables hold the new rows"
        )
        raise typer.Exit(1)
    for table, rows in result.rows.items():
        typer.echo(f"rebuilt {table}: {rows} rows")
    if result.old_tables:
        typer.echo(f"old tables kept: {', '.join(result.old_tables)} (DROP them when done)")
    typer.echo(f"done in {result.seconds:.1f} s")
