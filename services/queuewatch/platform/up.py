"""``queuewatch up``: the whole pipeline on one machine, in one command.

The steps, in order; a failure in any of them undoes the earlier ones, so nothing is left
half-started:

1. Make sure ``$QUEUEWATCH_HOME`` is writable and take its lock (one ``up`` per home).
2. Check what would fail later: the embedded ClickHouse folder is not open elsewhere and
   no other user may write ``$QUEUEWATCH_HOME``, where ``queuewatch query``'s socket lives.
3. Kafka: on a remote bootstrap address, require that it answers. On this machine, use the
   broker that answers there, or start one (fetching its jars with Maven if missing) with
   its log under ``$QUEUEWATCH_HOME/kafka``, kept across runs.
4. Create the topics with their configs (``kafka/topics.py``).
5. Apply the ClickHouse migrations (``queuewatch migrate``, a process of its own, so this
   process never opens the embedded folder that ``sink all`` must own).
6. Start every processor (and the simulator) as a child (``supervisor.py``), print where to
   look, then watch them until SIGTERM/SIGINT.
7. Stop the children (producers first), then the broker if this run started it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from queuewatch.clickhouse import embedded
from queuewatch.clickhouse.endpoint import check_socket_folder, socket_path
from queuewatch.errors import ConfigurationError, QueuewatchError
from queuewatch.platform.broker import (
    BrokerError,
    LocalBroker,
    StartCancelled,
    fetch_jars,
    java_version,
    kafka_answers,
    port_open,
    split_host_port,
)
from queuewatch.platform.children import ChildSpec, command_exists, process_plan
from queuewatch.platform.home import HomeLock, prepare_home
from queuewatch.platform.preflight import bootstrap_is_local, check_remote_kafka
from queuewatch.platform.processes import SUPERVISOR_PID_ENV, describe_exit
from queuewatch.platform.supervisor import Supervisor
from queuewatch.resources import REPO_ROOT
from queuewatch.settings import (
    BrokerSettings,
    CommonSettings,
    DashboardSettings,
    SupervisorSettings,
    redact_url,
)

log = logging.getLogger(__name__)

STATE_NAME = "up.json"
READY_LINE = "queuewatch is ready"
#: How long `up` waits for the embedded ClickHouse owner to answer queries before it says
#: "ready" anyway (the owner keeps starting; `queuewatch query` works once it answers).
QUERY_READY_TIMEOUT_S = 60.0


class MigrationError(QueuewatchError):
    """``queuewatch migrate`` failed, so the processors were not started."""


@dataclass
class UpRun:
    """One run of ``queuewatch up`` (see the module docstring for its steps)."""

    settings: CommonSettings
    broker_settings: BrokerSettings
    supervisor_settings: SupervisorSettings
    simulate: bool = True
    echo: Callable[[str], None] = print
    broker: LocalBroker | None = None
    supervisor: Supervisor | None = None
    skipped: list[str] = field(default_factory=list)
    dashboard_url: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    # -- entry point --------------------------------------------------------------------

    def run(self) -> int:
        """Run until a stop is requested; return the process exit status."""
        started = time.monotonic()
        home = prepare_home(self.settings.home)
        # Children and `status` must see one home however they were started.
        self.settings = self.settings.model_copy(update={"home": home})
        previous = self._install_signal_handlers()
        try:
            with HomeLock(home):
                try:
                    self._start(home)
                    if self._stop.is_set():
                        return 0
                    self._announce(home, time.monotonic() - started)
                    self._watch()
                except StartCancelled:
                    log.info("stop requested during start-up")
                finally:
                    self._shutdown(home)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def request_stop(self) -> None:
        """Ask the run to stop (what SIGTERM and SIGINT do)."""
        self._stop.set()

    # -- steps --------------------------------------------------------------------------

    def _start(self, home: Path) -> None:
        plan = self._plan()
        url = self.settings.resolved_clickhouse_url
        embedded.check_free(url)  # migrate and sink all would both fail on it later
        if any(spec.args == ("sink", "all") for spec in plan):
            check_socket_folder(home)  # where sink all will answer queries
        self._kafka(home)
        self._cancel_point()
        self._topics()
        self._cancel_point()
        self._migrate()
        self._cancel_point()
        self.supervisor = Supervisor(
            plan,
            env=self._child_env(),
            log_dir=home / "logs",
            settings=self.supervisor_settings,
            state_file=home / STATE_NAME,
            extra_state={
                "home": str(home),
                "kafka_bootstrap": self.settings.kafka_bootstrap,
                "broker_pid": self.broker.process.pid
                if self.broker is not None and self.broker.process is not None
                else None,
                "clickhouse_url": redact_url(url),  # status --json shows this file
                "started_at": time.time(),
            },
        )
        self.supervisor.start_all()
        self._wait_query_ready(plan)

    def _plan(self) -> list[ChildSpec]:
        plan = []
        for spec in process_plan(self.settings, self.simulate, dashboard=self._dashboard()):
            if command_exists(spec.args):
                plan.append(spec)
            else:
                # Processors land one by one; `up` runs those this checkout has.
                self.skipped.append(spec.name)
                log.warning(
                    "not starting %s: this installation has no `queuewatch %s` command",
                    spec.name,
                    " ".join(spec.args),
                )
        return plan

    def _dashboard(self) -> bool:
        """Whether to start the dashboard: on unless its port is 0 or already taken.

        A taken port would make the child crash and restart for ever, and the pipeline
        matters more than its page, so `up` says why and goes on without it.
        """
        settings = DashboardSettings()
        if settings.dashboard_port <= 0:
            return False
        if port_open(settings.dashboard_address, settings.dashboard_port):
            self.skipped.append("dashboard")
            log.warning(
                "not starting the dashboard: %s:%d is taken; set QUEUEWATCH_DASHBOARD_PORT to "
                "a free port (0 turns it off)",
                settings.dashboard_address,
                settings.dashboard_port,
            )
            return False
        self.dashboard_url = f"http://{settings.dashboard_address}:{settings.dashboard_port}/"
        return True

    def _kafka(self, home: Path) -> None:
        from queuewatch.kafka.security import KafkaSecurity

        bootstrap = self.settings.kafka_bootstrap
        security = KafkaSecurity.from_settings(self.settings)
        if not bootstrap_is_local(bootstrap):
            check_remote_kafka(bootstrap, security=security)
            log.info("using the Kafka broker at %s (%s)", bootstrap, security.protocol)
            return
        host, port = split_host_port(bootstrap)
        controller = self.broker_settings.kafka_controller_port or None
        broker = LocalBroker(
            data_root=home / "kafka",
            libs_dir=_libs_dir(self.broker_settings.kafka_libs),
            host="127.0.0.1" if host in {"localhost", "0.0.0.0"} else host,
            port=port,
            controller_port=controller,
            heap=self.broker_settings.kafka_heap,
        )
        broker.stop_stale()  # a broker this home's earlier, killed run left running
        if port_open(broker.host, port) and kafka_answers(bootstrap, 5.0, security):
            log.info("a Kafka broker already answers at %s: using it", bootstrap)
            return
        if security.protocol != "PLAINTEXT":
            # The broker `up` starts listens PLAINTEXT on loopback: the clients configured
            # for a secured one could not talk to it, and it must not pass for one.
            raise ConfigurationError(
                f"no Kafka broker answers at {bootstrap} with {security.protocol}, and the "
                "broker `queuewatch up` starts speaks PLAINTEXT on this machine only; start "
                "your secured broker first, or unset QUEUEWATCH_KAFKA_SECURITY_PROTOCOL"
            )
        # Before Java and Maven: a taken port is the likelier mistake, and cheaper to report.
        broker.check_ports(kafka_checked=True)
        java_version()
        fetch_jars(broker.libs_dir)
        log.info("starting the Kafka broker at %s, data in %s", bootstrap, broker.data_root)
        t0 = time.monotonic()
        self.broker = broker
        broker.start(
            timeout_s=self.broker_settings.broker_start_timeout_s, cancelled=self._stop.is_set
        )
        log.info("the broker answered after %.1f s", time.monotonic() - t0)

    def _topics(self) -> None:
        from kafka.errors import KafkaError

        from queuewatch.kafka.security import KafkaSecurity, RefusalLog, describe_failure
        from queuewatch.kafka.topics import ensure_topics, topic_specs

        security = KafkaSecurity.from_settings(self.settings)
        bootstrap = self.settings.kafka_bootstrap
        with RefusalLog() as refusals:
            try:
                created = ensure_topics(bootstrap, topic_specs(self.settings), security)
            except KafkaError as exc:
                if refusals.refusals:
                    raise BrokerError(describe_failure(bootstrap, security, exc, refusals)) from exc
                raise BrokerError(
                    f"could not create the topics at {bootstrap}: {exc}; "
                    "check that the broker is healthy (queuewatch status)"
                ) from exc
        if created:
            log.info("created topics: %s", ", ".join(created))

    def _migrate(self) -> None:
        if not command_exists(("migrate",)):
            self.skipped.append("migrate")
            log.warning("not applying ClickHouse migrations: no `queuewatch migrate` command")
            return
        cmd = ChildSpec("migrate", ("migrate",)).argv()
        log.info("applying ClickHouse migrations (queuewatch migrate)")
        proc = subprocess.Popen(
            cmd,
            env=self._child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.supervisor_settings.migrate_timeout_s
        try:
            while True:
                try:
                    out, err = proc.communicate(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if self._stop.is_set():
                    raise StartCancelled("stop requested while migrating")
                if time.monotonic() > deadline:
                    raise MigrationError(
                        "`queuewatch migrate` did not finish within "
                        f"{self.supervisor_settings.migrate_timeout_s:.0f} s; run it by hand "
                        "to see where it waits"
                    )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            lines = [line for line in (err + out).splitlines() if line.strip()]
            errors = [line for line in lines if line.startswith("queuewatch: error:")]
            last = (errors or lines or [f"exit status {proc.returncode}"])[-1]
            raise MigrationError(
                f"ClickHouse migrations failed: {last.removeprefix('queuewatch: error: ')}"
            )
        for line in out.splitlines():  # its summary; its log lines stay on stderr
            if line.strip():
                log.info("migrate: %s", line.strip())

    def _wait_query_ready(self, plan: list[ChildSpec]) -> None:
        """On the embedded layout, wait until the folder's owner answers queries."""
        if not any(spec.args == ("sink", "all") for spec in plan):
            return
        supervisor = self.supervisor
        assert supervisor is not None

        def keep_going() -> bool:
            supervisor.poll()
            return not self._stop.is_set()

        folder = embedded.chdb_folder(self.settings.resolved_clickhouse_url)
        answering = embedded.wait_answering(folder, QUERY_READY_TIMEOUT_S, keep_going)
        if not answering and not self._stop.is_set():
            log.warning(
                "sink all does not answer queries on %s yet; read %s",
                socket_path(self.settings.home),
                self.settings.home / "logs" / "sink-all.log",
            )

    def _watch(self) -> None:
        assert self.supervisor is not None
        while not self._stop.wait(0.5):
            self._watch_broker()
            self.supervisor.poll()

    def _watch_broker(self) -> None:
        """Start the broker this run owns again if it died (the processors need it)."""
        broker = self.broker
        if broker is None or broker.process is None or broker.process.poll() is None:
            return
        status = broker.process.returncode
        broker.process = None
        log.error(
            "the Kafka broker %s; starting it again (its log: %s)",
            describe_exit(status),
            broker.log_file,
        )
        broker.start(
            timeout_s=self.broker_settings.broker_start_timeout_s, cancelled=self._stop.is_set
        )
        if self.supervisor is not None and broker.process is not None:
            self.supervisor.extra_state["broker_pid"] = broker.process.pid
            self.supervisor.write_state()

    def _shutdown(self, home: Path) -> None:
        if self.supervisor is None and self.broker is None:
            return  # nothing was started: the error (if any) is the whole story
        log.info("stopping")
        try:
            if self.supervisor is not None:
                self.supervisor.stop()
        finally:
            if self.broker is not None:
                log.info(
                    "stopping the Kafka broker (pid %s)",
                    self.broker.process and self.broker.process.pid,
                )
                self.broker.stop()
            (home / STATE_NAME).unlink(missing_ok=True)
        log.info("stopped; nothing of this run is left running")

    # -- helpers ------------------------------------------------------------------------

    def _cancel_point(self) -> None:
        if self._stop.is_set():
            raise StartCancelled("stop requested during start-up")

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "QUEUEWATCH_HOME": str(self.settings.home),
                "QUEUEWATCH_KAFKA_BOOTSTRAP": self.settings.kafka_bootstrap,
                # As configured, not resolved: a password read from
                # QUEUEWATCH_CLICKHOUSE_PASSWORD_FILE stays in the file (children inherit the
                # variable naming it), out of every child's environment.
                "QUEUEWATCH_CLICKHOUSE_URL": self.settings.clickhouse_url.get_secret_value()
                or self.settings.resolved_clickhouse_url,
                "PYTHONUNBUFFERED": "1",
                SUPERVISOR_PID_ENV: str(os.getpid()),
            }
        )
        return env

    def _install_signal_handlers(self) -> dict[int, Any]:
        def handler(signum: int, frame: FrameType | None) -> None:
            if self._stop.is_set():
                log.info(
                    "already stopping; children get %.0f s before they are killed",
                    self.supervisor_settings.stop_timeout_s,
                )
            self.request_stop()

        previous: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            previous[sig] = signal.signal(sig, handler)
        return previous

    def _announce(self, home: Path, elapsed_s: float) -> None:
        s = self.settings
        assert self.supervisor is not None
        kafka_where = (
            f"started here, log in {home / 'kafka'}" if self.broker is not None else "existing"
        )
        if s.is_embedded_clickhouse:
            ch = (
                f"{s.resolved_clickhouse_url} (embedded; owned by sink-all, queries via "
                f"{socket_path(s.home)})"
            )
        else:
            ch = s.resolved_clickhouse_url.split("@")[-1]
        children = ", ".join(
            f"{c.spec.name} (pid {c.proc.pid})" for c in self.supervisor.children if c.proc
        )
        lines = [
            f"{READY_LINE} after {elapsed_s:.1f} s",
            f"  Kafka       {s.kafka_bootstrap} ({kafka_where})",
            f"  topics      {s.reports_topic}, {s.dlq_topic}, {s.windows_topic}",
            f"  ClickHouse  {ch}",
            f"  processes   {children or 'none'}",
            f"  logs        {home / 'logs'}/<process>.log",
            *([f"  dashboard   {self.dashboard_url}"] if self.dashboard_url else []),
            "  health      queuewatch status",
            f'  query       queuewatch query "SELECT * FROM {s.clickhouse_database}.'
            'crossing_status LIMIT 10"',
            "  stop        Ctrl-C (stops every process and the broker started here)",
        ]
        if self.skipped:
            lines.append(f"  not started {', '.join(self.skipped)} (see the warnings above)")
        self.echo("\n".join(lines))
        sys.stdout.flush()


def _libs_dir(configured: Path) -> Path:
    """The broker's jar folder; a relative setting is relative to the checkout."""
    if configured.is_absolute():
        return configured
    in_checkout = REPO_ROOT / configured
    return in_checkout if (REPO_ROOT / "infra" / "kafka").is_dir() else configured.resolve()
