"""Runs sinks as a process: `queuewatch sink raw|windows|all`.

Against a server each sink may run as its own process, scaled on its own (same group, more
members). On the embedded engine one process owns the folder: it takes the folder lock,
applies the migrations, runs the sinks it was asked for in threads (each with its own
consumer, group and ClickHouse client; their writes are serialized by ENGINE_LOCK) and answers
`queuewatch query` on the Unix socket ``$QUEUEWATCH_HOME/query.sock`` until SIGTERM or SIGINT.
Queries run on read-only handles of their own and never wait for a write, nor a write for them.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, Literal

from queuewatch.aggregator.state import AggregationConfig
from queuewatch.clickhouse import embedded, serving
from queuewatch.clickhouse.client import ENGINE_LOCK, clickhouse_errors, connect, redact
from queuewatch.clickhouse.endpoint import socket_path
from queuewatch.clickhouse.exceptions import ClickHouseError
from queuewatch.clickhouse.http_endpoint import ClickHouseHttpEndpoint, load_password
from queuewatch.clickhouse.migrations import migrate
from queuewatch.clickhouse.query import QueryService
from queuewatch.errors import ConfigurationError
from queuewatch.kafka.security import KafkaSecurity
from queuewatch.platform.liveness import Heartbeat, ProgressWatch, exit_stalled, watch_interval
from queuewatch.settings import AggregatorSettings, CommonSettings, QuerySettings, SinkSettings
from queuewatch.sinks import contributions, raw, windows
from queuewatch.sinks.checkpoint import Backoff, BatchWriter, Checkpointer, DeadLetters, Transform
from queuewatch.sinks.dead_letters import KafkaDeadLetters
from queuewatch.sinks.exceptions import SinkError
from queuewatch.sinks.source import KafkaSource, skip_expired
from queuewatch.sinks.writer import ClickHouseWriter, monthly

log = logging.getLogger(__name__)

SinkKind = Literal["raw", "windows", "contributions"]
#: How often a running sink logs its counters (records, rows written, batches).
STATS_INTERVAL_S = 10.0


@dataclass(frozen=True)
class SinkSpec:
    """What distinguishes one sink from the other: topic, group, table and transform."""

    kind: SinkKind
    topic: str
    group: str
    table: str
    columns: tuple[str, ...]
    transform: Transform
    #: The column of the table's ``PARTITION BY toYYYYMM(...)`` (checked at start-up).
    partition_column: str
    #: Most table partitions one insert may touch (ClickHouse's max_partitions_per_insert_block).
    max_partitions: int = 100


def sink_spec(kind: SinkKind, common: CommonSettings, max_partitions: int = 100) -> SinkSpec:
    """The spec of the raw or the window sink under these settings."""
    db = common.clickhouse_database
    if kind == "raw":
        return SinkSpec(
            "raw",
            common.reports_topic,
            common.raw_sink_group,
            f"{db}.{raw.TABLE}",
            raw.COLUMNS,
            raw.ReportTransform(),
            raw.PARTITION_COLUMN,
            max_partitions,
        )
    if kind == "contributions":
        rows = contributions.transform()
        return SinkSpec(
            "contributions",
            common.contributions_topic,
            common.contributions_sink_group,
            f"{db}.{contributions.TABLE}",
            rows.columns,
            rows,
            contributions.PARTITION_COLUMN,
            max_partitions,
        )
    transform = windows.WindowTransform()
    return SinkSpec(
        "windows",
        common.windows_topic,
        common.window_sink_group,
        f"{db}.{windows.TABLE}",
        transform.columns,
        transform,
        windows.PARTITION_COLUMN,
        max_partitions,
    )


def build_checkpointer(
    spec: SinkSpec,
    common: CommonSettings,
    settings: SinkSettings,
    writer: BatchWriter,
    dead_letters: DeadLetters | None = None,
) -> Checkpointer:
    """A Checkpointer reading the spec's topic in its own group and writing with ``writer``."""
    holder: list[Checkpointer] = []
    source = KafkaSource(
        common.kafka_bootstrap,
        spec.topic,
        spec.group,
        on_revoke=lambda: holder[0].revoke() if holder else None,
        client_id=f"queuewatch-{spec.kind}-sink",
        session_timeout_s=settings.sink_session_timeout_s,
        security=KafkaSecurity.from_settings(common),
    )
    checkpointer = Checkpointer(
        name=f"{spec.kind}-sink",
        source=source,
        writer=writer,
        transform=spec.transform,
        table=spec.table,
        batch_rows=settings.sink_batch_rows,
        batch_seconds=settings.sink_batch_seconds,
        backoff=Backoff(settings.sink_retry_initial_s, settings.sink_retry_max_s),
        max_attempts=settings.sink_write_max_attempts,
        dead_letters=dead_letters,
    )
    holder.append(checkpointer)
    return checkpointer


WriterFactory = Callable[[Any, SinkSpec], BatchWriter]


def default_writer(client: Any, spec: SinkSpec) -> BatchWriter:
    """The real writer: inserts into the spec's table, split by its monthly partitions."""
    return ClickHouseWriter(
        client,
        spec.table,
        spec.columns,
        monthly(spec.columns, spec.partition_column),
        spec.max_partitions,
    )


def serve_windows(client: Any, database: str, kinds: Sequence[SinkKind]) -> None:
    """Give the database the window layout of the sinks about to run (``clickhouse.serving``).

    The contributions sink needs ``crossing_windows`` and ``window_latest`` as views over
    what it writes, made with the aggregator's window families and consensus rules (its
    settings, from the environment); the window sink needs them as tables.
    """
    if "contributions" in kinds:
        if "windows" in kinds:
            raise ConfigurationError(
                "the window sink and the contributions sink cannot share a database: the "
                "windows are either stored (output windows) or assembled (output contributions)"
            )
        config = AggregationConfig.from_settings(AggregatorSettings())
        try:
            serving.serve_assembled(client, database, config)
        except ClickHouseError as exc:
            raise ConfigurationError(
                f"the window views of {database} are missing or made with other settings, "
                f"and this sink could not make them ({exc}). Run `queuewatch migrate` as a "
                "user allowed to run DDL, with the same QUEUEWATCH_AGGREGATOR_* settings as "
                "this sink; a sink finding them as its settings want them runs no DDL"
            ) from exc
    elif "windows" in kinds:
        serving.require_stored(client, database, "the window sink")


def check_partitioning(client: Any, spec: SinkSpec) -> None:
    """Refuse to start when the table is not partitioned the way the writer splits inserts.

    The writer computes each row's partition in Python to keep an insert under ClickHouse's
    partition limit; if the table's PARTITION BY changed, those parts would be wrong and a
    backfill refused again, so say so now rather than at the first large batch.
    """
    database, table = spec.table.split(".", 1)
    with ENGINE_LOCK, clickhouse_errors(f"reading the partition key of {spec.table}"):
        found = client.query(
            "SELECT partition_key FROM system.tables WHERE database = {d:String} "
            "AND name = {t:String}",
            parameters={"d": database, "t": table},
        ).result_rows
    want = f"toYYYYMM({spec.partition_column})"
    got = found[0][0] if found else None
    if got != want:
        raise ConfigurationError(
            f"{spec.table} is partitioned by {got!r} but the {spec.kind} sink splits inserts "
            f"by {want!r}; change PARTITION_COLUMN in queuewatch/sinks/{spec.kind}.py to match "
            "the migration, or the migration back"
        )


def run_sinks(
    kinds: Sequence[SinkKind],
    common: CommonSettings | None = None,
    settings: SinkSettings | None = None,
    stop: threading.Event | None = None,
    writer_factory: WriterFactory = default_writer,
    query_settings: QuerySettings | None = None,
) -> None:
    """Run the given sinks until ``stop`` (or SIGTERM/SIGINT); raise SinkError on failure."""
    common = common or CommonSettings()
    settings = settings or SinkSettings()
    query_settings = query_settings or QuerySettings()
    stop = stop or threading.Event()
    # Before anything answers: once `queuewatch query` works, a supervisor may stop this
    # process at any moment, and SIGTERM must then mean "flush and exit 0", not death by
    # the default handler (a stop right after start-up used to end with -15).
    _install_signal_handlers(stop)
    if common.log_level.upper() != "DEBUG":
        # kafka-python logs every connection at INFO; our own lines are what an operator needs.
        logging.getLogger("kafka").setLevel(logging.WARNING)
    url = common.resolved_clickhouse_url
    is_embedded = embedded.is_embedded(url)
    query_socket = socket_path(common.home)
    lock = (
        # A `queuewatch query` or `migrate` may hold the folder for a moment: wait it out.
        embedded.acquire(embedded.chdb_folder(url), str(query_socket), wait_s=embedded.OWNER_WAIT_S)
        if is_embedded
        else None
    )
    clients: list[Any] = []
    producers: list[KafkaDeadLetters] = []
    service: QueryService | None = None
    http: ClickHouseHttpEndpoint | None = None
    threads: list[threading.Thread] = []
    failures: list[BaseException] = []
    try:
        admin = connect(url)
        clients.append(admin)
        applied = migrate(admin, common.clickhouse_database)
        log.info(
            "ClickHouse %s, database %s: %d migrations applied now",
            redact(url),
            common.clickhouse_database,
            len(applied),
        )
        serve_windows(admin, common.clickhouse_database, kinds)
        checkpointers = []
        for kind in kinds:
            spec = sink_spec(kind, common, settings.sink_max_partitions_per_insert)
            check_partitioning(admin, spec)
            _report_expired(common.kafka_bootstrap, spec, KafkaSecurity.from_settings(common))
            client = connect(url)
            clients.append(client)
            letters = KafkaDeadLetters(
                common.kafka_bootstrap,
                common.dlq_topic,
                f"{kind}-sink",
                KafkaSecurity.from_settings(common),
            )
            producers.append(letters)
            checkpointers.append(
                build_checkpointer(spec, common, settings, writer_factory(client, spec), letters)
            )
        if lock is not None:
            service = QueryService(url, common.clickhouse_database, query_settings)
            lock.serve(
                query_socket,
                service.run,
                workers=query_settings.query_concurrency,
                request_max_bytes=query_settings.query_request_max_bytes,
                timeout_s=query_settings.query_socket_timeout_s,
            )
            log.info("answering `queuewatch query` on %s", query_socket)
            http = _serve_http(service, common, query_settings)
        _serve_metrics(checkpointers, common, settings)
        _tune_gc()
        for cp in checkpointers:
            thread = threading.Thread(
                target=_run_one, args=(cp, stop, failures), name=cp.name, daemon=True
            )
            thread.start()
            threads.append(thread)
        watches = [
            SinkWatch(cp, common.home, sink_spec(kind, common).group, common.stall_timeout_s)
            for cp, kind in zip(checkpointers, kinds, strict=True)
        ]
        _report_until_stopped(checkpointers, stop, watches)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        if lock is not None:
            lock.stop_serving()
        if http is not None:
            http.stop()
        if service is not None:
            service.close()
        for producer in producers:
            try:
                producer.close()
            except Exception:  # every letter was flushed before its commit already
                log.debug("closing a dead-letter producer failed", exc_info=True)
        for client in clients:
            try:
                client.close()
            except Exception:  # closing is best effort at shutdown
                log.debug("closing a ClickHouse client failed", exc_info=True)
        if lock is not None:
            lock.release()
    if failures:
        raise SinkError(str(failures[0])) from failures[0]


def _serve_metrics(
    checkpointers: list[Checkpointer], common: CommonSettings, settings: SinkSettings
) -> None:
    """Prometheus metrics of these sinks on QUEUEWATCH_SINK_METRICS_PORT (0: none)."""
    if settings.sink_metrics_port <= 0:
        return
    from prometheus_client import CollectorRegistry

    from queuewatch.platform import metrics

    registry = CollectorRegistry()
    registry.register(metrics.SinkCollector(lambda: checkpointers))
    flush = metrics.batch_histogram(
        registry,
        "queuewatch_sink_flush_seconds",
        "Seconds to write a batch to ClickHouse, send its dead letters and commit its offsets.",
    )
    for cp in checkpointers:
        cp.flush_seconds = flush
    metrics.serve(registry, common.metrics_address, settings.sink_metrics_port, "sink")


def _tune_gc() -> None:
    """Collect the young generation less often, as the aggregator does.

    A batch holds 10,000 rows and their records until it is written, so with Python's
    default threshold (700 allocations) the collector runs many times per batch and walks
    the whole batch each time it reaches an older generation. Objects built at start-up
    (clients, schemas, settings) are frozen out of collection altogether.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _report_expired(bootstrap: str, spec: SinkSpec, security: KafkaSecurity) -> None:
    """Commit past records retention deleted before this sink read them, and say so loudly."""
    gaps = skip_expired(bootstrap, spec.group, spec.topic, security)  # and commits past them
    if not gaps:
        return
    where = ", ".join(f"partition {p}: {n}" for p, n in sorted(gaps.items()))
    log.error(
        "%s sink: %d records of %s expired unread while the sink was down (%s), past the "
        "topic's retention; the sink goes on from the oldest kept record. Windows whose last "
        "update was among them are stale: rebuild them from the log with `queuewatch rebuild "
        "--windows` (docs/operations.md, 'Rebuilding the projections')",
        spec.kind,
        sum(gaps.values()),
        spec.topic,
        where,
    )


def _run_one(cp: Checkpointer, stop: threading.Event, failures: list[BaseException]) -> None:
    try:
        cp.run(stop)
    except BaseException as exc:  # a sink thread must never die silently
        log.error("%s stopped: %s", cp.name, exc)
        failures.append(exc)
        stop.set()
    else:
        s = cp.stats
        log.info(
            "%s stopped cleanly: %d records, %d rows written in %d batches, %d passed over",
            cp.name,
            s.records,
            s.rows_written,
            s.batches,
            s.skipped,
        )


class SinkWatch:
    """Progress or an honest exit for one sink thread (see ``platform.liveness``).

    Progress is a committed batch, or no lag. A sink whose loop hangs inside one step (an
    insert that never returns) counts as blocked whatever its last measured lag. A sink that
    is retrying a failed write is stalled as far as ``status`` is concerned, but its exit is
    left to the bounded retries (QUEUEWATCH_SINK_WRITE_MAX_ATTEMPTS), which name the offsets.
    """

    def __init__(self, cp: Checkpointer, home: Any, group: str, stall_after_s: float) -> None:
        self.cp = cp
        self.interval_s = watch_interval(stall_after_s)
        self.watch = ProgressWatch(stall_after_s, self.interval_s)
        self.heartbeat = Heartbeat(home, cp.name, group)
        self._warned_at = 0.0

    def check(self) -> None:
        """One sample: write the heartbeat; exit the process on an unexplained stall."""
        cp, watch = self.cp, self.watch
        watch.begin()
        lag = cp.lag or 0
        in_step = time.monotonic() - cp.last_step_at
        blocked = cp.retrying
        if blocked is None and in_step > max(2 * self.interval_s, 5.0):
            blocked = f"the sink loop has been inside one poll or write for {in_step:.0f} s"
            lag = max(lag, 1)
        stall = watch.observe(cp.stats.batches, lag, blocked)
        self.heartbeat.write(watch, reason=blocked, details={"rows_written": cp.stats.rows_written})
        if stall is None:
            return
        if cp.retrying is not None:
            if time.monotonic() - self._warned_at >= 60:
                self._warned_at = time.monotonic()
                log.warning(
                    "%s: no progress for %.0f s: %s", cp.name, stall.since_progress_s, blocked
                )
            return
        exit_stalled(
            cp.name,
            f"no batch committed for {stall.since_progress_s:.0f} s with lag {stall.lag}: "
            f"{stall.reason}",
        )


def _report_until_stopped(
    checkpointers: Sequence[Checkpointer],
    stop: threading.Event,
    watches: Sequence[SinkWatch] = (),
) -> None:
    last = {cp.name: 0 for cp in checkpointers}
    started = time.monotonic()
    logged_at = started
    interval = min([w.interval_s for w in watches] + [STATS_INTERVAL_S])
    while not stop.wait(interval):
        for watch in watches:
            watch.check()
        if time.monotonic() - logged_at < STATS_INTERVAL_S:
            continue
        logged_at = time.monotonic()
        elapsed = logged_at - started
        for cp in checkpointers:
            s = cp.stats
            if s.rows_written != last[cp.name]:
                log.info(
                    "%s: %d rows written in %d batches (%d passed over) after %.0f s",
                    cp.name,
                    s.rows_written,
                    s.batches,
                    s.skipped,
                    elapsed,
                )
                last[cp.name] = s.rows_written
    for watch in watches:
        watch.heartbeat.remove()


def _install_signal_handlers(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: writing the last batches and stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _serve_http(
    service: QueryService, common: CommonSettings, settings: QuerySettings
) -> ClickHouseHttpEndpoint | None:
    """Answer ClickHouse's HTTP interface on 127.0.0.1 when QUEUEWATCH_QUERY_HTTP_PORT is set."""
    if not settings.query_http_port:
        return None
    served = ClickHouseHttpEndpoint(
        settings.query_http_port,
        service.run_http,
        load_password(common.home, settings.query_http_password_file),
        workers=settings.query_concurrency,
        request_max_bytes=settings.query_request_max_bytes,
        timeout_s=settings.query_socket_timeout_s,
    )
    served.start()
    log.info(
        "answering ClickHouse's HTTP interface (read-only) on 127.0.0.1:%d, user default, "
        "password in %s",
        served.port,
        settings.query_http_password_file or common.home / "query-http.password",
    )
    return served
