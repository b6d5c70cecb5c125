"""Commands of the producers stage: ``publish`` (JSON Lines in) and ``simulate``."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from queuewatch.cli.app import app, fail, setup_logging
from queuewatch.errors import QueuewatchError

log = logging.getLogger("queuewatch.producers")

#: Files larger than this get a progress bar (when stderr is a terminal).
PROGRESS_MIN_BYTES = 1_000_000


@app.command()
def publish(
    file: Annotated[str, typer.Argument(help="JSON Lines file of reports, or - for stdin.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only validate; publish nothing.")
    ] = False,
) -> None:
    """Validate queue reports (one JSON object per line) and publish the valid ones.

    Every invalid line is reported on stderr as `line N: <field>: <reason>`; the valid lines
    are published to the reports topic at QUEUEWATCH_KAFKA_BOOTSTRAP. Exits 0 only when every
    line was valid.
    """
    from queuewatch.producers.publish import format_invalid, publish_lines, read_lines
    from queuewatch.settings import CommonSettings, ProducerSettings

    settings = CommonSettings()
    max_line = ProducerSettings().publish_max_line_bytes
    setup_logging("WARNING")
    if file == "-":
        stream: Any = sys.stdin
        size = 0
    else:
        path = Path(file)
        try:
            stream = path.open(encoding="utf-8", newline="\n")
            size = path.stat().st_size
        except OSError as exc:
            raise fail(f"cannot read {file}: {exc.strerror}; give a JSON Lines file or -") from None

    def on_invalid(number: int, violations: list[Any]) -> None:
        for text in format_invalid(number, violations):
            typer.echo(text, err=True)

    producer = None
    progress = _progress_bar(size) if size >= PROGRESS_MIN_BYTES and sys.stderr.isatty() else None
    try:
        if not dry_run:
            from queuewatch.kafka.producer import ReportProducer

            producer = ReportProducer.from_settings(settings, client_id="queuewatch-publish")
        try:
            with stream, progress if progress is not None else _nothing():
                task = progress.add_task("publishing", total=size) if progress else None
                summary = publish_lines(
                    read_lines(stream, max_line),
                    producer,
                    on_invalid,
                    on_line=(lambda n: progress.advance(task, n))
                    if progress and task is not None
                    else None,
                    max_line_bytes=max_line,
                )
        except BaseException:
            # Stopped midway: still deliver what was accepted and close the connection,
            # but let the error that stopped the run be the one reported.
            if producer is not None:
                with contextlib.suppress(QueuewatchError):
                    producer.close()
            raise
        if producer is not None:
            producer.close()
    except QueuewatchError as exc:
        raise fail(exc) from None
    except UnicodeDecodeError as exc:
        raise fail(f"{file} is not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    verb = "valid" if dry_run else "published"
    typer.echo(
        f"{summary.published} {verb}, {summary.rejected} rejected, of {summary.lines} lines",
        err=True,
    )
    raise typer.Exit(0 if summary.all_valid else 1)


def _progress_bar(total: int) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )


class _nothing:
    """A context manager that does nothing (no progress bar)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


@app.command()
def simulate(
    seed: Annotated[
        int | None, typer.Option(help="Seed: the same seed gives the same reports.")
    ] = None,
    speed: Annotated[
        float | None,
        typer.Option(help="Simulated seconds per real second; 0 = as fast as possible."),
    ] = None,
    rate: Annotated[
        float | None, typer.Option(help="Cap on reports per second; 0 = no cap.")
    ] = None,
    count: Annotated[
        int | None, typer.Option(help="Stop after this many reports (default: run until SIGTERM).")
    ] = None,
    crossings: Annotated[
        int | None,
        typer.Option(help="Crossings to simulate: 0 = the real ten; more adds generated ones."),
    ] = None,
    invalid_share: Annotated[
        float | None, typer.Option(help="Share of deliberately invalid reports (0..1).")
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(help="Scenario start, RFC 3339 (default 2022-09-19T00:00:00Z)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write JSON Lines to this file instead of publishing."),
    ] = None,
) -> None:
    """Publish the September 2022 border-queue scenario (seeded, realistic, noisy).

    Verkhny Lars, the Kazakh crossings toward Uralsk and further east, Finland, Estonia and
    Mongolia: a crisis growing 10-100x over days on a daily cycle, disagreeing sources, late
    and re-sent reports and a small share of invalid ones. Runs until --count reports or
    SIGTERM/SIGINT, then flushes and exits 0.
    """
    import signal
    import threading
    import time

    from queuewatch.contract.validation import parse_rfc3339_ms
    from queuewatch.producers.publish import run_simulation, write_json_lines
    from queuewatch.producers.scenario import SCENARIO_START_MS
    from queuewatch.producers.simulator import SimulationConfig, generate
    from queuewatch.settings import CommonSettings, SimulatorSettings

    settings = CommonSettings()
    sim = SimulatorSettings()
    setup_logging(settings.log_level)
    try:
        start_ms = parse_rfc3339_ms(start) if start else SCENARIO_START_MS
    except ValueError as exc:
        raise fail(f"--start: {exc}") from None
    share = sim.simulator_invalid_share if invalid_share is None else invalid_share
    if not 0 <= share <= 1:
        raise fail("--invalid-share must be between 0 and 1")
    config = SimulationConfig(
        seed=sim.simulator_seed if seed is None else seed,
        start_ms=start_ms,
        count=count,
        crossings=sim.simulator_crossings if crossings is None else crossings,
        invalid_share=share,
    )
    if out is not None:
        if count is None:
            raise fail("--out needs --count: a file cannot hold an endless stream")
        with out.open("w", encoding="utf-8") as handle:
            written = write_json_lines(generate(config), handle)
        typer.echo(f"wrote {written} reports to {out}", err=True)
        return

    from queuewatch.kafka.producer import ReportProducer

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    last_log = [time.monotonic()]

    def progress(summary: Any) -> None:
        now = time.monotonic()
        if now - last_log[0] >= 10:
            last_log[0] = now
            log.info(
                "published %d reports (%d deliberately invalid)",
                summary.published,
                summary.invalid_published,
            )

    try:
        with ReportProducer.from_settings(settings, client_id="queuewatch-simulate") as producer:
            summary = run_simulation(
                generate(config),
                producer,
                speed=sim.simulator_speed if speed is None else speed,
                rate=sim.simulator_rate if rate is None else rate,
                stop=stop,
                on_published=progress,
            )
    except QueuewatchError as exc:
        raise fail(exc) from None
    typer.echo(
        f"published {summary.published} reports ({summary.resent} re-sent) and "
        f"{summary.invalid_published} deliberately invalid; {summary.refused} refused",
        err=True,
    )
