"""``queuewatch status``: is the pipeline healthy, and how far behind is each processor?

Healthy means: the broker answers, every topic exists, ClickHouse answers and its main
tables can be counted, when a ``queuewatch up`` runs on this home each of its children is
running (or finished on purpose), and no lag stands still. Lag alone is not judged: a
processor catching up after a restart is behind, not broken. Lag that does not move is:
a group with lag and no member, or a processor whose heartbeat (``platform.liveness``)
says it made no progress, or has not been rewritten, for ``QUEUEWATCH_STALL_TIMEOUT_S``.
Those are shown as STALLED, with the lag and the age of the last progress.

ClickHouse is read through the query path (``clickhouse/query.py``), guarded and limited like
any `queuewatch query`: on the embedded layout it asks the ``sink all`` process that owns the
folder, on its Unix socket.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from queuewatch.clickhouse.query import query_projections
from queuewatch.errors import QueuewatchError
from queuewatch.platform.broker import quiet_kafka_client_logs
from queuewatch.platform.home import lock_holder
from queuewatch.platform.liveness import HeartbeatRecord, judge, read_heartbeats
from queuewatch.platform.processes import pid_alive
from queuewatch.settings import AggregatorSettings, CommonSettings, QuerySettings, redact_url

#: The tables whose row counts status shows (read with FINAL: one row per key), by the
#: aggregator's output: with ``contributions`` the windows are views assembled when read, so
#: counting them would assemble every window; the contributions they come from are counted.
MAIN_TABLES = {
    "windows": ("queue_reports", "crossing_windows"),
    "contributions": ("queue_reports", "crossing_contributions"),
}
STATE_NAME = "up.json"
T = TypeVar("T")


@dataclass
class GroupLag:
    """How far one processor's consumer group is behind the end of its input topic."""

    group: str
    topic: str
    state: str
    members: int
    lag: int | None
    committed_partitions: int


@dataclass
class StatusReport:
    """Everything ``queuewatch status`` shows; ``healthy`` decides its exit status."""

    kafka_bootstrap: str
    broker_reachable: bool = False
    broker_error: str | None = None
    topics: dict[str, int | None] = field(default_factory=dict)
    groups: list[GroupLag] = field(default_factory=list)
    clickhouse_url: str = ""
    clickhouse_reachable: bool = False
    clickhouse_error: str | None = None
    row_counts: dict[str, int] = field(default_factory=dict)
    #: Messages on the dead-letter topic (None when it could not be read).
    dead_letters: int | None = None
    dlq_topic: str = ""
    supervisor: dict[str, Any] | None = None
    processors: list[HeartbeatRecord] = field(default_factory=list)
    stalled: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """True when nothing in :attr:`problems`."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON data (``status --json``)."""
        data = asdict(self)
        data["healthy"] = self.healthy
        return data


def consumer_groups(settings: CommonSettings) -> list[tuple[str, str]]:
    """(group, input topic) of every processor."""
    return [
        (settings.aggregator_group, settings.reports_topic),
        (settings.raw_sink_group, settings.reports_topic),
        (settings.window_sink_group, settings.windows_topic),
    ]


def compute_lag(
    end_offsets: dict[int, int], committed: dict[int, int], start: dict[int, int]
) -> int:
    """Messages not yet committed by a group, summed over a topic's partitions.

    A partition the group never committed counts from its first offset (where a new group
    starts reading), so a processor that never ran shows the whole topic as lag.
    """
    total = 0
    for partition, end in end_offsets.items():
        position = committed.get(partition)
        if position is None or position < 0:
            position = start.get(partition, 0)
        total += max(0, end - position)
    return total


def collect(settings: CommonSettings, query_timeout_s: float = 60.0) -> StatusReport:
    """Look at Kafka, the processors' groups, ClickHouse and the supervisor; judge health."""
    report = StatusReport(
        kafka_bootstrap=settings.kafka_bootstrap,
        clickhouse_url=_redact(_configured_clickhouse_url(settings)),
        dlq_topic=settings.dlq_topic,
    )
    with quiet_kafka_client_logs():  # failures end up in the report, worded for a person
        _kafka_status(settings, report)
    _clickhouse_status(settings, report, query_timeout_s)
    _supervisor_status(settings.home, report)
    _liveness_status(settings, report)
    _scrub(report, settings)
    return report


def _liveness_status(settings: CommonSettings, report: StatusReport) -> None:
    """STALLED: lag that stands still (see the module docstring)."""
    now = time.time()
    lag = {g.group: g for g in report.groups}
    report.processors = read_heartbeats(settings.home, pid_alive)
    for record in report.processors:
        group = lag.get(record.group)
        if group is None or not group.lag:
            continue  # nothing waits for it (or its group is not ours to judge)
        why = judge(record, settings.stall_timeout_s, now)
        if why is not None:
            report.stalled.append(record.group)
            report.problems.append(f"STALLED: {why}; group {record.group} lag {group.lag}")
    for group in report.groups:
        if group.lag and group.members == 0 and group.group not in report.stalled:
            report.stalled.append(group.group)
            report.problems.append(
                f"STALLED: group {group.group} has lag {group.lag} on {group.topic} and no "
                "member consumes it: is its processor running? (`queuewatch up` starts it)"
            )


def _scrub(report: StatusReport, settings: CommonSettings) -> None:
    """Replace any password that reached a message (a driver quoting its URL) with ``***``."""
    from urllib.parse import unquote, urlsplit

    secrets = {settings.kafka_sasl_password.get_secret_value()}
    try:
        password = urlsplit(settings.resolved_clickhouse_url).password
    except Exception:  # an unreadable password file is reported by the query itself
        password = None
    if password:
        secrets |= {password, unquote(password)}
    secrets.discard("")
    if not secrets:
        return

    def clean(text: str | None) -> str | None:
        if text is None:
            return None
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    report.broker_error = clean(report.broker_error)
    report.clickhouse_error = clean(report.clickhouse_error)
    report.problems = [clean(p) or "" for p in report.problems]


def _kafka_status(settings: CommonSettings, report: StatusReport) -> None:
    from queuewatch.errors import QueuewatchError
    from queuewatch.kafka.security import KafkaSecurity, RefusalLog

    try:
        security = KafkaSecurity.from_settings(settings)
    except QueuewatchError as exc:
        report.broker_error = str(exc)
        report.problems.append(f"Kafka: {exc}")
        return
    with RefusalLog() as refusals:
        _kafka_groups_status(settings, security, refusals, report)


def _kafka_groups_status(
    settings: CommonSettings, security: Any, refusals: Any, report: StatusReport
) -> None:
    from kafka import KafkaAdminClient, TopicPartition
    from kafka.admin import OffsetSpec
    from kafka.errors import KafkaError

    from queuewatch.kafka.security import describe_failure

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id="queuewatch-status",
            request_timeout_ms=5000,
            bootstrap_timeout_ms=5000,
            **security.kafka_python(),
        )
    except (KafkaError, OSError) as exc:
        report.broker_error = f"{type(exc).__name__}: {exc}"
        report.problems.append(describe_failure(settings.kafka_bootstrap, security, exc, refusals))
        return
    try:
        admin.describe_cluster()
        report.broker_reachable = True
        names = [settings.reports_topic, settings.dlq_topic, settings.windows_topic]
        existing = set(admin.list_topics())
        partitions: dict[str, list[int]] = {}
        present = [n for n in names if n in existing]
        for desc in admin.describe_topics(present) if present else []:
            partitions[desc["name"]] = sorted(p["partition_index"] for p in desc["partitions"])
        for name in names:
            report.topics[name] = len(partitions[name]) if name in partitions else None
            if name not in partitions:
                report.problems.append(f"topic {name} is missing (`queuewatch topics` creates it)")

        wanted = [(g, t) for g, t in consumer_groups(settings) if t in partitions]
        read = {t for _, t in wanted} | ({settings.dlq_topic} & set(partitions))
        tps = [TopicPartition(t, p) for t in read for p in partitions[t]]
        ends = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in tps}) if tps else {}
        starts = (
            admin.list_partition_offsets({tp: OffsetSpec.EARLIEST for tp in tps}) if tps else {}
        )
        if settings.dlq_topic in partitions:
            report.dead_letters = sum(
                max(0, o.offset - starts[tp].offset)
                for tp, o in ends.items()
                if tp.topic == settings.dlq_topic
            )
        groups = [g for g, _ in wanted]
        described = _retrying(lambda: admin.describe_groups(groups)) if groups else {}
        offsets = _retrying(lambda: admin.list_group_offsets(groups)) if groups else {}
        for group, topic in wanted:
            info = described.get(group, {})
            committed = {
                tp.partition: meta.offset
                for tp, meta in (offsets.get(group) or {}).items()
                if tp.topic == topic
            }
            end = {tp.partition: o.offset for tp, o in ends.items() if tp.topic == topic}
            start = {tp.partition: o.offset for tp, o in starts.items() if tp.topic == topic}
            report.groups.append(
                GroupLag(
                    group=group,
                    topic=topic,
                    state=str(info.get("group_state") or "Unknown"),
                    members=len(info.get("members") or []),
                    lag=compute_lag(end, committed, start),
                    committed_partitions=sum(1 for o in committed.values() if o >= 0),
                )
            )
    except (KafkaError, OSError) as exc:
        if not report.broker_reachable:
            report.broker_error = f"{type(exc).__name__}: {exc}"
            report.problems.append(
                describe_failure(settings.kafka_bootstrap, security, exc, refusals)
            )
        else:
            report.problems.append(f"reading topics and consumer groups failed: {exc}")
    finally:
        admin.close()


def _retrying(call: Callable[[], T], timeout_s: float = 15.0) -> T:
    """``call()``, retried while Kafka says to retry (a young broker's group coordinator
    answers CoordinatorNotAvailable until its offsets topic exists)."""
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except KafkaError as exc:
            if not exc.retriable or time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def _clickhouse_status(settings: CommonSettings, report: StatusReport, timeout_s: float) -> None:
    db = settings.clickhouse_database
    tables = MAIN_TABLES[AggregatorSettings().aggregator_output]
    columns = ", ".join(f"(SELECT count() FROM {db}.{table} FINAL) AS {table}" for table in tables)
    sql = f"SELECT {columns}"
    # The count must answer within status's own patience, whatever the query limit is.
    query_settings = QuerySettings().model_copy(update={"query_max_execution_time_s": timeout_s})
    try:
        body = query_projections(settings.resolved_clickhouse_url, db, sql, "jsonl", query_settings)
    except QueuewatchError as exc:
        report.clickhouse_error = _redact(str(exc))
        report.problems.append(f"ClickHouse: {report.clickhouse_error}")
        return
    rows = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
    if not rows:
        report.clickhouse_error = "the count query returned no row"
        report.problems.append(f"ClickHouse: {report.clickhouse_error}")
        return
    report.clickhouse_reachable = True
    report.row_counts = {table: int(rows[0][table]) for table in tables}


def _supervisor_status(home: Path, report: StatusReport) -> None:
    """What ``queuewatch up`` on this home runs, if one runs (read from its state file)."""
    home = home.expanduser().resolve()
    holder = lock_holder(home)
    state_file = home / STATE_NAME
    if holder is None or not state_file.exists():
        return
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return
    for child in state.get("children", []):
        pid = child.get("pid")
        child["running"] = bool(pid) and pid_alive(int(pid))
        if not child["running"] and not child.get("finished"):
            report.problems.append(
                f"{child['name']} is not running ({child.get('last_exit') or 'starting'}, "
                f"{child.get('restarts', 0)} restarts); read {child.get('log')}"
            )
    for child in state.get("children", []):
        port = child.get("metrics_port")
        if child["running"] and port:
            child["metrics"] = _key_figures(port)
    report.supervisor = state


#: The figures ``status`` shows from each child's metrics endpoint (the same numbers
#: Prometheus scrapes), by sample name prefix.
_KEY_FIGURES = (
    "queuewatch_aggregator_reports_total",
    "queuewatch_aggregator_crossings",
    "queuewatch_aggregator_last_commit_age_seconds",
    "queuewatch_sink_rows_written_total",
    "queuewatch_sink_dead_letters_total",
    "queuewatch_sink_write_retries_total",
    "queuewatch_sink_paused",
    "queuewatch_sink_last_commit_age_seconds",
)


def _key_figures(port: int) -> dict[str, float] | str:
    """The key samples of a child's metrics on 127.0.0.1, or why they could not be read."""
    from queuewatch.platform.metrics import scrape

    try:
        samples = scrape("127.0.0.1", int(port))
    except (OSError, ValueError) as exc:
        return f"metrics not readable on port {port} ({exc})"
    return {k: v for k, v in samples.items() if k.startswith(_KEY_FIGURES)}


def render_text(report: StatusReport) -> str:
    """The report for a person: one line per thing checked."""

    def mark(ok: bool) -> str:
        return "ok  " if ok else "FAIL"

    out = [
        f"{mark(report.broker_reachable)} Kafka broker {report.kafka_bootstrap}"
        + (f" ({report.broker_error})" if report.broker_error else "")
    ]
    for name, parts in report.topics.items():
        out.append(
            f"{mark(parts is not None)} topic {name}"
            + (f" ({parts} partitions)" if parts is not None else " missing")
            + (
                f", {report.dead_letters} dead letters"
                if name == report.dlq_topic and report.dead_letters is not None
                else ""
            )
        )
    now = time.time()
    for g in report.groups:
        never = " (no offsets committed yet)" if g.committed_partitions == 0 else ""
        stalled = "STALLED " if g.group in report.stalled else "     "
        out.append(
            f"{stalled}group {g.group} on {g.topic}: lag {g.lag}{never}, "
            f"{g.members} members ({g.state})"
        )
        for p in report.processors:
            if p.group == g.group:
                out.append(
                    f"       {p.kind} pid {p.pid}: {p.state}, last progress "
                    f"{p.since_progress_s(now):.0f} s ago, heartbeat {p.age_s(now):.0f} s ago"
                )
    out.append(
        f"{mark(report.clickhouse_reachable)} ClickHouse {report.clickhouse_url}"
        + (f" ({report.clickhouse_error})" if report.clickhouse_error else "")
    )
    for table, count in report.row_counts.items():
        out.append(f"     {table}: {count} rows")
    if report.supervisor is not None:
        out.append(f"     queuewatch up runs (pid {report.supervisor.get('supervisor_pid')})")
        for child in report.supervisor.get("children", []):
            ok = child["running"] or child.get("finished", False)
            out.append(
                f"{mark(ok)} {child['name']} pid {child.get('pid')}, "
                f"{child.get('restarts', 0)} restarts"
                + (f", metrics :{child['metrics_port']}" if child.get("metrics_port") else "")
            )
            figures = child.get("metrics")
            if isinstance(figures, str):
                out.append(f"       {figures}")
            elif figures:
                out.append("       " + ", ".join(_figure(k, v) for k, v in figures.items()))
    if report.healthy:
        out.append("healthy")
    else:
        out.append("UNHEALTHY:")
        out.extend(f"  - {problem}" for problem in report.problems)
    return "\n".join(out)


def _figure(name: str, value: float) -> str:
    """``queuewatch_sink_rows_written_total{sink="raw"} 12.0`` as ``rows_written raw 12``."""
    short = name.replace("queuewatch_", "").replace("aggregator_", "").replace("sink_", "")
    base, _, labels = short.partition("{")
    label = ",".join(v.split("=", 1)[1].strip('"') for v in labels.rstrip("}").split(",") if v)
    base = base.removesuffix("_total")
    shown = f"{value:.0f}" if base != "last_commit_age_seconds" else f"{value:.1f} s"
    return f"{base}{' ' + label if label else ''} {shown}"


def _configured_clickhouse_url(settings: CommonSettings) -> str:
    """The ClickHouse URL as set (the embedded default when unset), without a file's password."""
    configured = settings.clickhouse_url.get_secret_value()
    if configured:
        return configured
    return f"chdb://{(settings.home / 'clickhouse').resolve()}"


#: A URL without its password, for printing (one rule for every command: ``redact_url``).
_redact = redact_url
