"""Commands of the platform stage: ``up``, ``status``, ``topics``, ``settings``, ``version``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from queuewatch.cli.app import app, fail, setup_logging
from queuewatch.errors import QueuewatchError


@app.command()
def up(
    no_simulate: Annotated[
        bool,
        typer.Option(
            "--no-simulate", help="Do not start the simulator; only the broker and processors."
        ),
    ] = False,
) -> None:
    """Run the whole pipeline on this machine until Ctrl-C: Kafka, processors, simulator.

    Starts a local Kafka broker when the bootstrap address is on this machine and none
    answers, creates the topics, applies the ClickHouse migrations, then runs each processor
    as a child process and restarts any that dies.
    """
    from queuewatch.platform.up import UpRun
    from queuewatch.settings import BrokerSettings, CommonSettings, SupervisorSettings

    settings = CommonSettings()
    setup_logging(settings.log_level)
    if settings.log_level.upper() != "DEBUG":
        # kafka-python logs every connection at INFO: it would bury the supervisor's lines.
        logging.getLogger("kafka").setLevel(logging.WARNING)
    run = UpRun(
        settings=settings,
        broker_settings=BrokerSettings(),
        supervisor_settings=SupervisorSettings(),
        simulate=not no_simulate,
        echo=lambda text: typer.echo(text),
    )
    try:
        code = run.run()
    except QueuewatchError as exc:
        raise fail(exc) from None
    raise typer.Exit(code)


@app.command()
def status(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as one JSON object.")
    ] = False,
) -> None:
    """Is the pipeline healthy? Broker, topics, consumer lag, ClickHouse row counts.

    Exits 0 only when everything answers; 1 otherwise.
    """
    from queuewatch.platform.status import collect, render_text
    from queuewatch.settings import CommonSettings

    settings = CommonSettings()
    setup_logging("ERROR")  # the report is the output; client chatter would bury it
    report = collect(settings)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2, default=str))
    else:
        typer.echo(render_text(report))
    raise typer.Exit(0 if report.healthy else 1)


@app.command()
def health(
    kind: Annotated[
        str,
        typer.Argument(help="The processor: aggregator, raw-sink or windows-sink."),
    ],
) -> None:
    """Healthcheck of the processors of this home (a container's, for Docker).

    Exits 0 when at least one processor of KIND runs here and its heartbeat is fresh and not
    stalled; 1 otherwise, with the reason. `queuewatch status` judges the whole pipeline.
    """
    from queuewatch.platform.liveness import judge, read_heartbeats
    from queuewatch.platform.processes import pid_alive
    from queuewatch.settings import CommonSettings

    settings = CommonSettings()
    records = [r for r in read_heartbeats(settings.home, pid_alive) if r.kind == kind]
    if not records:
        raise fail(f"no running {kind} has written a heartbeat under {settings.home}/health")
    problems = [why for r in records if (why := judge(r, settings.stall_timeout_s))]
    if problems:
        raise fail("; ".join(problems))
    for r in records:
        typer.echo(f"{r.kind} pid {r.pid}: {r.state}, lag {r.lag}")


@app.command()
def topics() -> None:
    """Create the missing topics with their configs, then list them."""
    from kafka.errors import KafkaError

    from queuewatch.kafka.security import KafkaSecurity, RefusalLog, describe_failure
    from queuewatch.kafka.topics import ensure_topics, topic_specs
    from queuewatch.platform.broker import quiet_kafka_client_logs
    from queuewatch.settings import CommonSettings

    settings = CommonSettings()
    setup_logging("WARNING")
    try:
        specs = topic_specs(settings)
        security = KafkaSecurity.from_settings(settings)
    except QueuewatchError as exc:
        raise fail(exc) from None
    with quiet_kafka_client_logs(), RefusalLog() as refusals:
        try:
            created = set(ensure_topics(settings.kafka_bootstrap, specs, security))
        except KafkaError as exc:
            raise fail(
                describe_failure(settings.kafka_bootstrap, security, exc, refusals)
            ) from None
    for spec in specs:
        configs = ", ".join(f"{k}={v}" for k, v in sorted(spec.configs.items()))
        state = "created" if spec.name in created else "exists "
        typer.echo(
            f"{state} {spec.name}  partitions={spec.partitions}  "
            f"replication={spec.replication}  {configs}"
        )


@app.command("settings")
def settings_command(
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table.")] = False,
    readme: Annotated[
        Path | None,
        typer.Option("--readme", help="Rewrite the settings table inside this README file."),
    ] = None,
) -> None:
    """List every setting: environment name, default and why it exists."""
    from queuewatch.platform.settings_table import markdown_table, update_readme
    from queuewatch.settings import all_settings

    if readme is not None:
        try:
            changed = update_readme(readme)
        except (OSError, ValueError) as exc:
            raise fail(str(exc)) from None
        typer.echo(f"{readme}: {'updated' if changed else 'already up to date'}")
        return
    if markdown:
        typer.echo(markdown_table())
        return
    for doc in all_settings():
        typer.echo(f"{doc.env}={doc.default}\n    {doc.description}")


@app.command()
def version() -> None:
    """Print the queuewatch version."""
    from queuewatch import __version__

    typer.echo(__version__)
