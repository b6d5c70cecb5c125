"""Every setting queuewatch reads, in one place.

Each service reads only the class it needs; every field has an environment name
(``QUEUEWATCH_`` + the field name in upper case), a default and one line of why.
``all_settings()`` lists them for the README and for the docker compose check, so a
setting that is not declared here cannot be configured anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

_ENV = SettingsConfigDict(env_prefix="QUEUEWATCH_", extra="ignore")


class CommonSettings(BaseSettings):
    """Where data lives and where Kafka and ClickHouse are: read by every service."""

    model_config = _ENV

    home: Path = Field(
        Path("./var"),
        description="Folder for local state: the broker's log, the embedded ClickHouse, pid files.",
    )
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092",
        description="Kafka bootstrap servers; a local broker is started here when none answers.",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="How every queuewatch client talks to Kafka; SASL_SSL for any broker "
        "beyond this machine, so nobody without the password can read or delete the log.",
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = Field(
        "SCRAM-SHA-512",
        description="SASL mechanism (with a SASL_* protocol): SCRAM never sends the password; "
        "PLAIN does, so use it over SSL only.",
    )
    kafka_sasl_username: str = Field("", description="SASL user name of every client.")
    kafka_sasl_password: SecretStr = Field(
        SecretStr(""),
        description="SASL password; prefer QUEUEWATCH_KAFKA_SASL_PASSWORD_FILE, since the "
        "environment of a process is readable by `docker inspect` and /proc.",
    )
    kafka_sasl_password_file: Path | None = Field(
        None,
        description="File holding the SASL password (a Docker secret); wins over "
        "QUEUEWATCH_KAFKA_SASL_PASSWORD.",
    )
    kafka_ssl_cafile: Path | None = Field(
        None,
        description="PEM file of the CA that signed the broker's certificate (with SSL or "
        "SASL_SSL); empty trusts the system's CAs.",
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="Client certificate (PEM), for brokers that require mutual TLS."
    )
    kafka_ssl_keyfile: Path | None = Field(
        None, description="Private key (PEM) of the client certificate."
    )
    kafka_replication_factor: int = Field(
        1,
        ge=1,
        description="Replicas of every topic queuewatch creates (the changelog too); 1 suits "
        "one broker only: a real cluster wants 3, so losing a broker loses no report.",
    )
    kafka_min_insync_replicas: int = Field(
        1,
        ge=1,
        description="min.insync.replicas of those topics: with acks=all, a write succeeds "
        "only once this many replicas hold it (2 of 3 on a real cluster).",
    )
    clickhouse_url: SecretStr = Field(
        SecretStr(""),
        description="ClickHouse URL: chdb://PATH (embedded, default $QUEUEWATCH_HOME/clickhouse) "
        "or http(s)://user[:password]@host:port for a server; a secret, never printed.",
    )
    clickhouse_password_file: Path | None = Field(
        None,
        description="File holding the password of the user in QUEUEWATCH_CLICKHOUSE_URL (a "
        "Docker secret), so the URL in the environment carries none.",
    )
    clickhouse_database: str = Field(
        "queuewatch", description="Database holding the projections and the migrations table."
    )
    reports_topic: str = Field(
        "queue-reports", description="The event log of queue reports: the system of record."
    )
    dlq_topic: str = Field(
        "queue-reports-dlq", description="Dead letters: undecodable or invalid reports, bytes kept."
    )
    windows_topic: str = Field(
        "crossing-windows", description="Window aggregates emitted by the aggregator."
    )
    contributions_topic: str = Field(
        "crossing-contributions",
        description="The accepted reports as the aggregator counted them, when "
        "QUEUEWATCH_AGGREGATOR_OUTPUT is contributions: ClickHouse assembles the windows from "
        "them when they are read.",
    )
    windows_retention_days: float = Field(
        30.0,
        description="How long crossing-windows keeps window updates: the longest window-sink "
        "outage that loses nothing (a two-week holiday shutdown, twice). Past it, rebuild "
        "from the log (docs/reliability.md).",
    )
    reports_partitions: int = Field(
        12, description="Partitions of the reports topic: the ceiling on aggregator workers."
    )
    log_level: str = Field("INFO", description="Python log level of every queuewatch process.")
    metrics_address: str = Field(
        "127.0.0.1",
        description="Address every processor's Prometheus endpoint binds to (0.0.0.0 inside a "
        "container, for Prometheus on the internal network).",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="How every queuewatch process writes its log on stderr: text for people, "
        "json for log shippers (one object per line: time, level, logger, process, pid, event).",
    )
    aggregator_group: str = Field(
        "queuewatch-aggregator",
        description="Consumer group (and faust app id) of the aggregator; its state topics "
        "are named after it.",
    )
    raw_sink_group: str = Field(
        "queuewatch-raw-sink", description="Consumer group of the raw-report sink."
    )
    window_sink_group: str = Field(
        "queuewatch-window-sink", description="Consumer group of the window sink."
    )
    contributions_sink_group: str = Field(
        "queuewatch-contributions-sink",
        description="Consumer group of the contributions sink (which writes them to "
        "crossing_contributions; the windows are views over that table).",
    )

    stall_timeout_s: float = Field(
        60.0,
        description="A processor with lag that applied nothing for this long logs why and exits "
        "(non-zero, so `up` or Docker restarts it), and `status` shows it STALLED.",
    )

    @property
    def resolved_clickhouse_url(self) -> str:
        """The ClickHouse URL, defaulting to the embedded engine under ``home``.

        A secret when it names a server: it carries the password (from the URL or from
        ``clickhouse_password_file``). Show :func:`redact_url` of it, never the URL itself.
        """
        url = self.clickhouse_url.get_secret_value()
        if not url:
            return f"chdb://{(self.home / 'clickhouse').resolve()}"
        if self.clickhouse_password_file is None or url.startswith("chdb://"):
            return url
        return with_password(url, read_secret_file(self.clickhouse_password_file, "CLICKHOUSE"))

    @property
    def is_embedded_clickhouse(self) -> bool:
        """True when ClickHouse is the in-process chdb engine (one process per folder)."""
        return self.resolved_clickhouse_url.startswith("chdb://")


class QuerySettings(BaseSettings):
    """The read path (`queuewatch query`, the embedded endpoint, `status`): its limits.

    Every guarded query runs with these as ClickHouse settings and ``readonly=1``, so a query
    ends by itself and cannot raise its own limits (``clickhouse/guard.py``).
    """

    model_config = _ENV

    query_max_execution_time_s: float = Field(
        30.0,
        description="A query running longer is stopped by ClickHouse (TIMEOUT_EXCEEDED), so "
        "none holds the engine's threads and memory for ever.",
    )
    query_max_memory_bytes: int = Field(
        1_073_741_824,
        description="Memory one query may use (1 GiB): the sinks in the same process keep "
        "room to write.",
    )
    query_max_result_rows: int = Field(
        1_000_000,
        description="Rows a result may hold; a larger one is refused (TOO_MANY_ROWS_OR_BYTES), "
        "not cut: add a LIMIT or an aggregate.",
    )
    query_max_result_bytes: int = Field(
        268_435_456,
        description="Bytes a result may hold (256 MiB), so one answer cannot exhaust memory.",
    )
    query_concurrency: int = Field(
        2,
        description="Queries the embedded owner runs at once (one engine handle each); more "
        "are told to retry, so the endpoint never starts unbounded threads.",
    )
    query_request_max_bytes: int = Field(
        1_048_576,
        description="Largest request the embedded endpoint reads (1 MiB of JSON); a longer "
        "one is refused before it is parsed.",
    )
    query_socket_timeout_s: float = Field(
        10.0,
        description="How long the endpoint waits for a request to arrive or an answer to be "
        "read, so a stalled client cannot hold a worker.",
    )
    query_http_port: int = Field(
        0,
        description="Port on 127.0.0.1 where the embedded owner answers ClickHouse's HTTP "
        "interface (read-only, guarded) for standard clients; 0 turns it off.",
    )
    query_http_password_file: Path | None = Field(
        None,
        description="File holding the HTTP interface's password (a Docker secret); unset, "
        "one is generated into QUEUEWATCH_HOME/query-http.password (mode 0600).",
    )


class DashboardSettings(BaseSettings):
    """`queuewatch dashboard`: the live page for people who would rather look than write SQL."""

    model_config = _ENV

    dashboard_address: str = Field(
        "127.0.0.1",
        description="Address the dashboard listens on; loopback, so only this machine sees it "
        "(compose sets 0.0.0.0 inside its container).",
    )
    dashboard_port: int = Field(
        8765,
        description="Port of the dashboard, which `queuewatch up` starts; 0 keeps `up` from "
        "starting it.",
    )
    dashboard_allowed_hosts: str = Field(
        "",
        description="More Host headers the dashboard answers besides 127.0.0.1/localhost with "
        "its port (comma-separated host:port), e.g. the published port in compose; any other "
        "Host is refused, against DNS rebinding.",
    )
    dashboard_refresh_s: float = Field(
        15.0,
        description="How often the page reloads its figures; reports arrive every few minutes "
        "per lane, so faster only costs queries.",
    )
    dashboard_health_interval_s: float = Field(
        15.0,
        description="How often the dashboard asks Kafka and ClickHouse for the pipeline's "
        "health (what `queuewatch status` shows); pages read the last answer.",
    )
    dashboard_concurrency: int = Field(
        8,
        description="Requests the dashboard serves at once; more are answered 503 at once, "
        "so a flood of page loads cannot queue queries without bound.",
    )


class BrokerSettings(BaseSettings):
    """The local Apache Kafka broker that `queuewatch up` starts when none answers."""

    model_config = _ENV

    kafka_libs: Path = Field(
        Path("infra/kafka/target/libs"),
        description="Folder of the broker's jars, filled by Maven from infra/kafka/pom.xml.",
    )
    kafka_heap: str = Field(
        "1g", description="Broker JVM heap (-Xmx); 1 GiB carries the simulator with room to spare."
    )
    broker_start_timeout_s: float = Field(
        60.0, description="How long to wait for a started broker to answer before giving up."
    )
    kafka_controller_port: int = Field(
        0,
        description="KRaft controller port of the local broker; 0 means the Kafka port + 1. "
        "Set it when that port is taken by another program.",
    )


class SupervisorSettings(BaseSettings):
    """`queuewatch up`: how it restarts a processor that died and how long it waits to stop."""

    model_config = _ENV

    restart_backoff_initial_s: float = Field(
        1.0, description="Pause before restarting a child that died; doubles on each quick death."
    )
    restart_backoff_max_s: float = Field(
        30.0,
        description="Cap of that pause, so a child that keeps crashing does not spin the CPU "
        "yet comes back within this long once its cause is fixed.",
    )
    restart_stable_after_s: float = Field(
        60.0,
        description="A child that ran this long before dying is restarted after the initial "
        "pause again: its earlier crashes are history.",
    )
    stop_timeout_s: float = Field(
        20.0,
        description="How long a child may take to stop after SIGTERM (flush, commit offsets) "
        "before it is killed.",
    )
    migrate_timeout_s: float = Field(
        300.0, description="How long `up` waits for the ClickHouse migrations before giving up."
    )


class SinkSettings(BaseSettings):
    """The ClickHouse sinks: how big a batch grows and how hard a failing write is retried."""

    model_config = _ENV

    sink_metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the sink process's Prometheus metrics (/metrics; both sinks of "
        "`sink all`, labelled); 0 turns them off. `queuewatch up` gives each a free one.",
    )
    sink_batch_rows: int = Field(
        10_000,
        description="Rows per ClickHouse insert at most: large enough that parts stay few "
        "(ClickHouse wants inserts of thousands of rows), small enough to bound memory.",
    )
    sink_batch_seconds: float = Field(
        1.0,
        description="Longest a row waits in a batch before it is written: the sinks' share "
        "of end-to-end latency when traffic is light.",
    )
    sink_retry_initial_s: float = Field(
        0.5, description="First pause after a failed write; it doubles on each failure."
    )
    sink_retry_max_s: float = Field(
        10.0,
        description="Cap of the pause between write attempts, so a recovered ClickHouse is "
        "noticed within this many seconds.",
    )
    sink_write_max_attempts: int = Field(
        60,
        description="Failed writes in a row after which a sink stops (exit 1, restarted by "
        "`up`) instead of retrying one batch forever; 60 is about 10 minutes of backoff.",
    )
    sink_max_partitions_per_insert: int = Field(
        100,
        description="Most monthly table partitions one insert touches; a batch spanning more "
        "is split. Keep it at or below the server's max_partitions_per_insert_block (100).",
    )
    sink_session_timeout_s: float = Field(
        10.0,
        description="Kafka session timeout of the sink consumers: a sink killed hard holds its "
        "partitions this long before a restarted or other member takes them over.",
    )


class ProducerSettings(BaseSettings):
    """The report producer (SDK, `queuewatch publish`, `simulate`): batching and delivery."""

    model_config = _ENV

    producer_linger_ms: int = Field(
        20,
        description="How long a record waits for others to share its batch: 20 ms fills "
        "batches under load at a latency nobody watching a queue notices.",
    )
    producer_batch_bytes: int = Field(
        262_144,
        description="Largest batch per partition (bytes); bigger batches compress better "
        "and cost fewer requests.",
    )
    producer_compression: Literal["lz4", "gzip", "none"] = Field(
        "lz4", description="Batch compression: lz4 is cheap on CPU; gzip needs no extra library."
    )
    producer_delivery_timeout_s: float = Field(
        120.0,
        description="How long a report may take to be acknowledged (retries included) before "
        "the producer raises instead of waiting forever.",
    )
    publish_max_line_bytes: int = Field(
        65_536,
        ge=1024,
        description="Longest line `queuewatch publish` reads (bytes): a report is under 2 KiB; "
        "a longer line is rejected by its number, unparsed, and the run goes on.",
    )
    producer_max_block_s: float = Field(
        60.0,
        description="How long a publish waits for the broker's metadata or buffer space: "
        "long enough for a broker that is starting, short enough that a wrong address or a "
        "refused login fails within a minute.",
    )


class SimulatorSettings(BaseSettings):
    """`queuewatch simulate`: the September 2022 scenario's defaults."""

    model_config = _ENV

    simulator_seed: int = Field(2022, description="Seed of the scenario: same seed, same stream.")
    simulator_speed: float = Field(
        600.0,
        description="Simulated seconds per real second (600: ten minutes of border life per "
        "second); 0 publishes as fast as the broker takes it.",
    )
    simulator_rate: float = Field(
        0.0, description="Cap on published reports per second; 0 means no cap."
    )
    simulator_crossings: int = Field(
        0,
        description="Crossings to simulate; 0 means the real ones of the scenario, more adds "
        "generated crossings for load.",
    )
    simulator_invalid_share: float = Field(
        0.01,
        description="Share of deliberately invalid reports, so the dead-letter path is "
        "exercised all the time, not only in tests.",
    )


class AggregatorSettings(BaseSettings):
    """`queuewatch aggregator`: the windows it keeps, how late a report may be, how it batches."""

    model_config = _ENV

    aggregator_windows: str = Field(
        "1h:1h:5m,3h:3h:15m,24h:24h:1h",
        description="Window families as name:size:step, comma-separated (units s, m, h, d); "
        "windows are aligned to the Unix epoch. Changing it changes every key downstream.",
    )
    aggregator_grace: str = Field(
        "2h",
        description="How long after a window's end (in event time, against the crossing's "
        "watermark) it still takes late reports; later ones are counted as late only.",
    )
    aggregator_dedup_horizon: str = Field(
        "",
        description="How long (event time) an event_id is remembered to drop re-sends; empty "
        "means the largest window plus the grace, the shortest that keeps windows exact.",
    )
    aggregator_output: Literal["windows", "contributions"] = Field(
        "windows",
        description="What the aggregator emits: every changed window (windows), or each "
        "accepted report once with what its acceptance decided (contributions), from which "
        "ClickHouse assembles the same windows when they are read (crossing_windows and "
        "window_latest become views): one message and one row per report instead of one per "
        "window it lies in. Part of the state: a change needs a new aggregator group.",
    )
    aggregator_flush_interval_s: float = Field(
        1.0,
        description="A changed window is emitted at most once per this many seconds, with its "
        "newest state: a busy window costs one message per interval, not one per report.",
    )
    aggregator_batch_size: int = Field(
        5000,
        description="Reports decoded, validated and aggregated together: large enough to "
        "amortise the per-batch changelog write, small enough to bound a replay after a crash.",
    )
    aggregator_batch_timeout_s: float = Field(
        0.2,
        description="Longest a report waits for its batch to fill when traffic is light.",
    )
    aggregator_credibility: str = Field(
        "official_feed=1,sensor=1,official_statement=0.8,satellite=0.6,journalist=0.4,crowd=0.2",
        description="How much each source type's latest value weighs in the consensus "
        "(type=weight, comma-separated; types left out keep these defaults).",
    )
    aggregator_consensus_half_life: str = Field(
        "30m",
        description="A source's value weighs half as much for every this much event time "
        "it is older than the window's newest report.",
    )
    aggregator_confidence_recent: str = Field(
        "30m",
        description="Sources heard within this much event time of the newest report count "
        "towards a high confidence.",
    )
    aggregator_confidence_high_sources: int = Field(
        2,
        ge=1,
        description="Recent sources, one of them official or a sensor, needed for a high "
        "confidence.",
    )
    aggregator_confidence_high_spread: float = Field(
        0.2,
        ge=0,
        description="Largest (max - min) / max of the recent sources' waits that still "
        "counts as agreeing, for a high confidence.",
    )
    aggregator_confidence_disagree_spread: float = Field(
        0.5,
        ge=0,
        description="A (max - min) / max of the credible sources' waits above this makes "
        "the confidence low: the sources disagree.",
    )
    aggregator_metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the aggregator's Prometheus metrics (/metrics); 0 turns them off. "
        "`queuewatch up` gives each processor a free one.",
    )
    aggregator_web_port: int = Field(
        0,
        description="Port of faust's web server (stats) on 127.0.0.1; 0 turns it off, so "
        "several workers on one machine never fight for a port.",
    )


def read_secret_file(path: Path, what: str) -> str:
    """The secret in ``path`` (a Docker secret: one line, the trailing newline dropped)."""
    from queuewatch.errors import ConfigurationError

    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the {what.lower()} password file {path} ({exc.strerror}); fix "
            f"QUEUEWATCH_{what}_PASSWORD_FILE or the file's permissions"
        ) from None


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` as the password of its user (replacing any in the URL)."""
    from queuewatch.errors import ConfigurationError

    parts = urlsplit(url)
    if not parts.username:
        raise ConfigurationError(
            "QUEUEWATCH_CLICKHOUSE_PASSWORD_FILE is set but QUEUEWATCH_CLICKHOUSE_URL names no "
            "user; write it as http(s)://USER@host:port"
        )
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{quote(parts.username, safe='')}:{quote(password, safe='')}@{host}{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: the only form of a URL ever shown."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc}"))


@dataclass(frozen=True)
class SettingDoc:
    """One documented setting: its environment name, default and reason."""

    env: str
    default: Any
    description: str
    group: str


def settings_classes() -> list[type[BaseSettings]]:
    """Every settings class declared in this module, in declaration order.

    All services declare their settings here (config in one place), so this list is complete.
    """
    return [
        obj
        for obj in globals().values()
        if isinstance(obj, type) and issubclass(obj, BaseSettings) and obj is not BaseSettings
    ]


def all_settings() -> list[SettingDoc]:
    """Every setting of every registered class, with its environment name."""
    out: list[SettingDoc] = []
    seen: set[str] = set()
    for cls in settings_classes():
        prefix = cls.model_config.get("env_prefix", "")
        for name, field in cls.model_fields.items():
            env = f"{prefix}{name}".upper()
            if env in seen:
                continue
            seen.add(env)
            out.append(SettingDoc(env, field.default, field.description or "", cls.__name__))
    return out
