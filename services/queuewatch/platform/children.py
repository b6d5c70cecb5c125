"""Which processes ``queuewatch up`` runs, derived from the settings.

Each processor is its own child process with its own consumer group, so one can crash,
restart or lag without touching the others. The ClickHouse URL decides the sink layout:

* ``chdb://`` (embedded): the engine opens a folder in one process only, so ONE
  ``sink all`` process owns the folder, runs both sinks and answers ``queuewatch query``;
* ``http(s)://`` (a server): ``sink raw`` and ``sink windows`` run as separate processes,
  each scalable on its own.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from queuewatch.settings import CommonSettings


@dataclass(frozen=True)
class ChildSpec:
    """One supervised child: a ``queuewatch`` subcommand run by this interpreter."""

    name: str
    args: tuple[str, ...]
    #: Producers stop first on shutdown, so processors see the last events before they stop.
    producer: bool = False
    #: A child that ends by itself with status 0 has finished its work (a bounded simulation).
    restart_on_success: bool = True
    #: A full command line instead of a queuewatch subcommand (tests supervise small scripts).
    command: tuple[str, ...] | None = None
    #: Its Prometheus port on 127.0.0.1 (``platform.metrics``), given in its environment.
    metrics_port: int | None = None
    #: The setting that carries ``metrics_port``.
    metrics_setting: str = ""

    def environment(self) -> dict[str, str]:
        """What this child gets in its environment on top of the supervisor's."""
        if self.metrics_port is None or not self.metrics_setting:
            return {}
        return {self.metrics_setting: str(self.metrics_port)}

    def argv(self, python: str = sys.executable) -> list[str]:
        """The command line: ``python -m queuewatch <args>`` (the same install as ``up``)."""
        if self.command is not None:
            return list(self.command)
        return [python, "-m", "queuewatch", *self.args]


def process_plan(
    settings: CommonSettings, simulate: bool, metrics: bool = True, dashboard: bool = False
) -> list[ChildSpec]:
    """The children of ``queuewatch up`` for these settings, in start order.

    With ``metrics``, each processor gets a free port on 127.0.0.1 for its Prometheus
    endpoint, kept across its restarts. With ``dashboard``, ``queuewatch dashboard`` runs
    too, on its own port setting.
    """
    from queuewatch.platform.broker import free_port

    def port() -> int | None:
        return free_port() if metrics else None

    agg = "QUEUEWATCH_AGGREGATOR_METRICS_PORT"
    sink = "QUEUEWATCH_SINK_METRICS_PORT"
    plan = [ChildSpec("aggregator", ("aggregator",), metrics_port=port(), metrics_setting=agg)]
    if settings.is_embedded_clickhouse:
        plan.append(
            ChildSpec("sink-all", ("sink", "all"), metrics_port=port(), metrics_setting=sink)
        )
    else:
        plan.append(
            ChildSpec("sink-raw", ("sink", "raw"), metrics_port=port(), metrics_setting=sink)
        )
        plan.append(
            ChildSpec(
                "sink-windows", ("sink", "windows"), metrics_port=port(), metrics_setting=sink
            )
        )
    if dashboard:
        plan.append(ChildSpec("dashboard", ("dashboard",)))
    if simulate:
        plan.append(ChildSpec("simulate", ("simulate",), producer=True, restart_on_success=False))
    return plan


def command_exists(args: tuple[str, ...]) -> bool:
    """True when ``queuewatch <args>`` names a registered command.

    ``sink all`` may be a subcommand of a ``sink`` group or the ``sink`` command with an
    argument: once a plain command is reached, the remaining words are its arguments.
    """
    import typer

    from queuewatch.cli import app

    # Typer vendors its own click; duck typing keeps this independent of which one.
    command: Any = typer.main.get_command(app)
    for word in args:
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            return True
        if word not in subcommands:
            return False
        command = subcommands[word]
    return getattr(command, "commands", None) is None
