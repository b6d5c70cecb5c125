"""``queuewatch rebuild``: the ClickHouse projections made again from the Kafka log.

Every table is a projection of ``queue-reports``; this is the procedure that makes that true
after a configuration change (grace, windows) or a damaged table. The steps, in order:

1. **Check.** Kafka answers. For the windows, the aggregator's and the window sink's groups
   have no member: the windows are re-aggregated from the first report by the aggregator's
   own group, so the live one must be stopped (the raw sink may keep running on a server).
   On the embedded engine this process must own the folder (``queuewatch up`` stopped); it
   then answers ``queuewatch query`` on the usual socket for the whole rebuild.
2. **Shadow tables** ``<table>_rebuild``, made ``AS`` the live ones (same engine, keys and
   partitions), and for the windows a shadow of ``window_latest`` with its own materialized
   view, so every projection of the windows is rebuilt together. Queries keep reading the
   live tables.
3. **Raw:** a new consumer group reads ``queue-reports`` from the start into the shadow, up
   to the end offsets seen at step 1.
4. **Windows:** the end of ``crossing-windows`` is noted (``E``), the aggregator's group and
   its state topics are deleted, and ``queuewatch aggregator`` runs again from the first
   report with the current settings, appending new windows after ``E``; a new window-sink
   group reads from ``E`` into the shadow. Done when the aggregator has committed every report
   of step 1 and its output has been quiet and fully written for a few seconds.
5. **Swap** with ``EXCHANGE TABLES`` (atomic per pair), after a confirmation unless
   ``--yes``. The window sink's live group is moved to where the rebuild's sink stopped, so
   the pipeline goes on after ``E`` with the new windows only.
6. **Afterwards** the old tables are kept as ``<table>_before_<stamp>`` (or dropped with
   ``--drop-old``), the rebuild's groups deleted. On a server, the raw shadow catches up once
   more after the swap: rows the live raw sink wrote into the old table meanwhile are written
   again into the new one (the table de-duplicates by event id).

An interrupted windows rebuild (step 4 or 5) leaves the aggregator's state reset: run
``queuewatch rebuild`` again before starting the pipeline, which says so.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from queuewatch.clickhouse import embedded, serving
from queuewatch.clickhouse.client import ENGINE_LOCK, clickhouse_errors, connect
from queuewatch.clickhouse.endpoint import socket_path
from queuewatch.clickhouse.migrations import migrate
from queuewatch.clickhouse.query import QueryService
from queuewatch.errors import QueuewatchError
from queuewatch.kafka.security import KafkaSecurity
from queuewatch.settings import CommonSettings, QuerySettings, SinkSettings

log = logging.getLogger(__name__)

#: The windows are written for a while after the aggregator read the last report (its flush
#: interval and batch timeout): the output must stay this quiet before it counts as complete.
QUIET_S = 5.0
POLL_S = 0.5
#: The materialized view that feeds window_latest from crossing_windows (migration 0005).
WINDOW_LATEST_MV = "window_latest_mv"


class RebuildError(QueuewatchError):
    """The rebuild cannot start or went wrong; the message says what to do."""


@dataclass(frozen=True)
class RebuildPlan:
    """What to rebuild and how to finish."""

    raw: bool
    windows: bool
    stamp: str
    drop_old: bool = False
    #: Asked before the swap: True swaps, False leaves the live tables as they were.
    confirm: Callable[[str], bool] = lambda _question: True

    @property
    def tables(self) -> list[str]:
        """The live tables this plan replaces."""
        return (["queue_reports"] if self.raw else []) + (
            ["crossing_windows", "window_latest"] if self.windows else []
        )


@dataclass
class Progress:
    """Where a rebuild stands: what a progress bar shows."""

    stage: str
    done: int
    total: int


@dataclass
class RebuildResult:
    """What was rebuilt and where the old tables went."""

    swapped: bool
    rows: dict[str, int] = field(default_factory=dict)
    old_tables: list[str] = field(default_factory=list)
    seconds: float = 0.0


def shadow(table: str) -> str:
    """The name of a table's shadow while it is rebuilt."""
    return f"{table}_rebuild"


def before(table: str, stamp: str) -> str:
    """The name the old table keeps after the swap."""
    return f"{table}_before_{stamp}"


def fraction(done: int, total: int) -> float:
    """Share of the work done, 1.0 for nothing to do."""
    return 1.0 if total <= 0 else min(1.0, max(0.0, done / total))


# ---------------------------------------------------------------- Kafka


class KafkaOffsets:
    """The few Kafka operations a rebuild needs, with one admin client and one consumer."""

    def __init__(self, common: CommonSettings) -> None:
        from kafka import KafkaAdminClient, KafkaConsumer

        security = KafkaSecurity.from_settings(common).kafka_python()
        self.bootstrap = common.kafka_bootstrap
        self.security = security
        self.admin = KafkaAdminClient(
            bootstrap_servers=common.kafka_bootstrap, client_id="queuewatch-rebuild", **security
        )
        self.consumer = KafkaConsumer(
            bootstrap_servers=common.kafka_bootstrap, client_id="queuewatch-rebuild", **security
        )

    def close(self) -> None:
        """Close both clients."""
        self.admin.close()
        self.consumer.close()

    def partitions(self, topic: str) -> list[Any]:
        """The topic's partitions as TopicPartitions."""
        from kafka import TopicPartition

        found = self.consumer.partitions_for_topic(topic)
        if not found:
            raise RebuildError(f"topic {topic} does not exist; run `queuewatch topics` first")
        return [TopicPartition(topic, p) for p in sorted(found)]

    def ends(self, topic: str) -> dict[int, int]:
        """Partition -> end offset of ``topic`` now."""
        ends = self.consumer.end_offsets(self.partitions(topic))
        return {tp.partition: int(o) for tp, o in ends.items()}

    def committed(self, group: str, topic: str) -> dict[int, int]:
        """Partition -> the offset ``group`` committed on ``topic`` (absent: none)."""
        offsets = (self.admin.list_group_offsets(group) or {}).get(group) or {}
        return {
            tp.partition: m.offset
            for tp, m in offsets.items()
            if tp.topic == topic and m.offset >= 0
        }

    def members(self, group: str) -> int:
        """Members of ``group`` now."""
        info = self.admin.describe_groups([group]).get(group) or {}
        return len(info.get("members") or [])

    def commit(self, group: str, topic: str, offsets: dict[int, int]) -> None:
        """Set ``group``'s committed offsets on ``topic`` (the group must have no member)."""
        from kafka import KafkaConsumer, TopicPartition
        from kafka.structs import OffsetAndMetadata

        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=group,
            enable_auto_commit=False,
            client_id="queuewatch-rebuild",
            **self.security,
        )
        try:
            consumer.commit(
                {TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}
            )
        finally:
            consumer.close(autocommit=False)

    def delete_groups(self, groups: list[str]) -> None:
        """Delete consumer groups and check they are gone; one that never existed is fine."""
        from kafka.errors import GroupIdNotFoundError, KafkaError

        for group in groups:
            try:
                results = dict(self.admin.delete_groups([group]) or {})
            except GroupIdNotFoundError:
                continue
            except KafkaError as exc:
                raise RebuildError(f"consumer group {group} not deleted: {exc}") from exc
            for error in results.values():
                if error is None or isinstance(error, GroupIdNotFoundError):
                    continue
                if getattr(error, "errno", 0) in (0, GroupIdNotFoundError.errno):
                    continue
                raise RebuildError(
                    f"consumer group {group} not deleted ({error}); is a member still running?"
                )

    def delete_topics(self, wanted: list[str], timeout_s: float = 60.0) -> list[str]:
        """Delete those of ``wanted`` that exist and wait until they are gone."""
        existing = set(self.admin.list_topics())
        names = [t for t in wanted if t in existing]
        if names:
            self.admin.delete_topics(names)
        deadline = time.monotonic() + timeout_s
        while set(names) & set(self.admin.list_topics()):
            if time.monotonic() > deadline:
                raise RebuildError(f"topics {names} were not deleted within {timeout_s:.0f} s")
            time.sleep(0.5)
        return names


def aggregator_topics(group: str) -> list[str]:
    """The topics faust makes for the aggregator app ``group``: its state and its leader topic.

    Named exactly, not by prefix, so another deployment's group that merely starts with the
    same name on a shared broker is never touched.
    """
    from queuewatch.aggregator.storage import TABLE_NAME

    return [f"{group}-{TABLE_NAME}-changelog", f"{group}-__assignor-__leader"]


def behind(target: dict[int, int], committed: dict[int, int]) -> int:
    """Records of ``target`` not committed yet, summed over partitions."""
    return sum(max(0, end - committed.get(p, 0)) for p, end in target.items())


# ---------------------------------------------------------------- ClickHouse


def _run(client: Any, sql: str) -> None:
    with ENGINE_LOCK, clickhouse_errors(sql.split("(")[0][:80]):
        client.command(sql)


def _count(client: Any, sql: str) -> int:
    with ENGINE_LOCK, clickhouse_errors("counting rows"):
        return int(client.command(sql))


def make_shadows(client: Any, db: str, plan: RebuildPlan) -> None:
    """Empty shadow tables (and the windows' shadow view), replacing any left by a failed run."""
    _run(client, f"DROP VIEW IF EXISTS {db}.{shadow(WINDOW_LATEST_MV)}")
    for table in plan.tables:
        _run(client, f"DROP TABLE IF EXISTS {db}.{shadow(table)}")
        _run(client, f"CREATE TABLE {db}.{shadow(table)} AS {db}.{table}")
    if plan.windows:
        _run(client, shadow_view_sql(client, db))


def shadow_view_sql(client: Any, db: str) -> str:
    """The windows' materialized view, reading and writing the shadow tables instead."""
    with ENGINE_LOCK, clickhouse_errors("reading the window_latest view"):
        rows = client.query(
            "SELECT as_select FROM system.tables WHERE database = {d:String} AND name = {n:String}",
            parameters={"d": db, "n": WINDOW_LATEST_MV},
        ).result_rows
    if not rows:
        raise RebuildError(f"{db}.{WINDOW_LATEST_MV} is missing; run `queuewatch migrate`")
    select = str(rows[0][0])
    source = f"{db}.crossing_windows"
    if source not in select:
        raise RebuildError(f"{db}.{WINDOW_LATEST_MV} does not read {source}: {select[:200]}")
    select = select.replace(source, f"{db}.{shadow('crossing_windows')}")
    return (
        f"CREATE MATERIALIZED VIEW {db}.{shadow(WINDOW_LATEST_MV)} "
        f"TO {db}.{shadow('window_latest')} AS {select}"
    )


def swap(client: Any, db: str, plan: RebuildPlan) -> list[str]:
    """Exchange each live table with its shadow; keep or drop the old ones. Returns names kept.

    The shadow view goes first, so no write to the old table (now named ``*_rebuild``) reaches
    the new ``window_latest`` through it.
    """
    _run(client, f"DROP VIEW IF EXISTS {db}.{shadow(WINDOW_LATEST_MV)}")
    for table in plan.tables:
        _run(client, f"EXCHANGE TABLES {db}.{table} AND {db}.{shadow(table)}")
    kept = []
    for table in plan.tables:
        if plan.drop_old:
            _run(client, f"DROP TABLE {db}.{shadow(table)}")
        else:
            _run(client, f"RENAME TABLE {db}.{shadow(table)} TO {db}.{before(table, plan.stamp)}")
            kept.append(before(table, plan.stamp))
    return kept


# ---------------------------------------------------------------- the run


@dataclass
class Rebuild:
    """One run of the procedure in the module docstring."""

    common: CommonSettings
    plan: RebuildPlan
    sink_settings: SinkSettings = field(default_factory=SinkSettings)
    query_settings: QuerySettings = field(default_factory=QuerySettings)
    on_progress: Callable[[Progress], None] = lambda _p: None
    python: str = sys.executable

    def run(self) -> RebuildResult:
        """Rebuild; raise RebuildError with the next step to take when it cannot."""
        if not (self.plan.raw or self.plan.windows):
            raise RebuildError("nothing to rebuild: give --raw, --windows or neither (both)")
        started = time.monotonic()
        url = self.common.resolved_clickhouse_url
        db = self.common.clickhouse_database
        kafka = self._kafka()
        lock = self._own_folder(url)
        service: QueryService | None = None
        client = None
        try:
            self._check_stopped(kafka)
            client = connect(url)
            migrate(client, db)
            if self.plan.windows:
                serving.require_stored(client, db, "`queuewatch rebuild --windows`")
            if lock is not None:
                service = QueryService(url, db, self.query_settings)
                lock.serve(
                    socket_path(self.common.home),
                    service.run,
                    workers=self.query_settings.query_concurrency,
                    request_max_bytes=self.query_settings.query_request_max_bytes,
                    timeout_s=self.query_settings.query_socket_timeout_s,
                )
            make_shadows(client, db, self.plan)
            reports_end = kafka.ends(self.common.reports_topic)
            raw_group = f"{self.common.raw_sink_group}-rebuild-{self.plan.stamp}"
            window_group = f"{self.common.window_sink_group}-rebuild-{self.plan.stamp}"
            if self.plan.raw:
                self._rebuild_raw(kafka, url, raw_group, reports_end)
            windows_from: dict[int, int] = {}
            if self.plan.windows:
                windows_from = self._rebuild_windows(kafka, url, window_group, reports_end)
            rows = {t: _count(client, f"SELECT count() FROM {db}.{shadow(t)}") for t in
                    self.plan.tables}  # fmt: skip
            question = (
                "the shadow tables are complete ("
                + ", ".join(f"{shadow(t)}: {n} rows" for t, n in rows.items())
                + "); swap them in?"
            )
            if not self.plan.confirm(question):
                log.warning("not swapped: the live tables are unchanged, the shadows kept")
                return RebuildResult(False, rows, [], time.monotonic() - started)
            kept = swap(client, db, self.plan)
            if self.plan.windows:
                # The live window sink goes on where the rebuild's stopped: after E, new windows.
                kafka.commit(
                    self.common.window_sink_group,
                    self.common.windows_topic,
                    kafka.committed(window_group, self.common.windows_topic) or windows_from,
                )
            if self.plan.raw and lock is None:
                self._catch_up_raw(kafka, url, raw_group)
            used = [(raw_group, self.plan.raw), (window_group, self.plan.windows)]
            kafka.delete_groups([g for g, on in used if on])
            return RebuildResult(True, rows, kept, time.monotonic() - started)
        finally:
            if lock is not None:
                lock.stop_serving()
            if service is not None:
                service.close()
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
            if lock is not None:
                lock.release()
            kafka.close()

    # -- steps ------------------------------------------------------------------------

    def _kafka(self) -> KafkaOffsets:
        from kafka.errors import KafkaError

        try:
            return KafkaOffsets(self.common)
        except (KafkaError, OSError) as exc:
            raise RebuildError(
                f"Kafka does not answer at {self.common.kafka_bootstrap} ({exc}); the rebuild "
                "reads the log, so start the broker first (`queuewatch up` starts one)"
            ) from exc

    def _own_folder(self, url: str) -> embedded.FolderLock | None:
        if not embedded.is_embedded(url):
            return None
        try:
            return embedded.acquire(
                embedded.chdb_folder(url), str(socket_path(self.common.home)), wait_s=5.0
            )
        except QueuewatchError as exc:
            raise RebuildError(
                f"{exc}. The rebuild must own the embedded ClickHouse folder: stop "
                "`queuewatch up` (Ctrl-C), run `queuewatch rebuild`, then start it again; "
                "`queuewatch query` answers from the old tables during the rebuild"
            ) from exc

    def _check_stopped(self, kafka: KafkaOffsets) -> None:
        from queuewatch.settings import AggregatorSettings

        if self.plan.windows and AggregatorSettings().aggregator_output != "windows":
            raise RebuildError(
                "QUEUEWATCH_AGGREGATOR_OUTPUT is contributions: the windows are views over "
                "crossing_contributions, assembled when read, so there are no window rows to "
                "rebuild, and a change of the consensus rules shows once the contributions "
                "sink restarts. Rebuild the raw reports alone (`queuewatch rebuild --raw`); "
                "after a change of the grace, which the contributions carry, re-aggregate with "
                "a new QUEUEWATCH_AGGREGATOR_GROUP and QUEUEWATCH_CONTRIBUTIONS_SINK_GROUP on a "
                "fresh database (docs/architecture.md, output contributions)"
            )
        groups = []
        if self.plan.windows:
            groups += [self.common.aggregator_group, self.common.window_sink_group]
        busy = [g for g in groups if kafka.members(g) > 0]
        if busy:
            raise RebuildError(
                f"{', '.join(busy)} still running (its consumer group has members); the "
                "windows are re-aggregated by the aggregator's own group, so stop the "
                "aggregator and the window sink first (Ctrl-C on `queuewatch up`, or "
                "`docker compose stop aggregator window-sink`)"
            )

    def _sink(self, kind: str, url: str, group: str, topic: str, into_shadow: bool) -> Any:
        """A sink of ``kind`` in ``group``, writing the shadow table or the live one."""
        from queuewatch.sinks.runner import build_checkpointer, default_writer, sink_spec

        spec = sink_spec(kind, self.common, self.sink_settings.sink_max_partitions_per_insert)  # type: ignore[arg-type]
        database, table = spec.table.split(".", 1)
        target = f"{database}.{shadow(table)}" if into_shadow else spec.table
        spec = replace(spec, group=group, table=target, topic=topic)
        client = connect(url)
        checkpointer = build_checkpointer(
            spec, self.common, self.sink_settings, default_writer(client, spec), AlreadyLettered()
        )
        return checkpointer, client

    def _drain(
        self,
        stage: str,
        url: str,
        kind: str,
        group: str,
        topic: str,
        done: Callable[[], tuple[int, int, bool]],
        into_shadow: bool = True,
    ) -> None:
        """Run one sink in a thread until ``done`` says (done, total, finished).

        A sink that fails ends the rebuild with its error, never a wait for ever.
        """
        checkpointer, client = self._sink(kind, url, group, topic, into_shadow)
        stop = threading.Event()
        failures: list[BaseException] = []

        def work() -> None:
            try:
                checkpointer.run(stop)
            except BaseException as exc:  # reported below, never lost
                failures.append(exc)

        thread = threading.Thread(target=work, name=f"rebuild-{kind}", daemon=True)
        thread.start()
        try:
            while True:
                if failures:
                    raise RebuildError(f"the {kind} shadow sink failed: {failures[0]}")
                count, total, finished = done()
                self.on_progress(Progress(stage, count, total))
                if finished:
                    return
                time.sleep(POLL_S)
        finally:
            stop.set()
            thread.join()
            with contextlib.suppress(Exception):
                client.close()

    def _rebuild_raw(
        self,
        kafka: KafkaOffsets,
        url: str,
        group: str,
        target: dict[int, int],
        into_shadow: bool = True,
    ) -> None:
        topic = self.common.reports_topic
        total = behind(target, {})

        def done() -> tuple[int, int, bool]:
            left = behind(target, kafka.committed(group, topic))
            return total - left, total, left == 0

        stage = "raw reports" if into_shadow else "raw reports written meanwhile"
        self._drain(stage, url, "raw", group, topic, done, into_shadow)

    def _catch_up_raw(self, kafka: KafkaOffsets, url: str, group: str) -> None:
        """On a server: what the live raw sink wrote into the old table during the rebuild.

        The rebuild's group goes on from where it stopped, to the end of the log now, into
        the table that is live since the swap (it keeps one row per event id).
        """
        self._rebuild_raw(
            kafka, url, group, kafka.ends(self.common.reports_topic), into_shadow=False
        )

    def _rebuild_windows(
        self, kafka: KafkaOffsets, url: str, group: str, reports_end: dict[int, int]
    ) -> dict[int, int]:
        common = self.common
        windows_from = kafka.ends(common.windows_topic)
        # From the first report, with today's settings: the old state must not be restored.
        kafka.delete_groups([common.aggregator_group])
        deleted = kafka.delete_topics(aggregator_topics(common.aggregator_group))
        log.info("reset the aggregator: group %s and topics %s", common.aggregator_group, deleted)
        shutil.rmtree(
            Path(common.home).resolve() / "aggregator" / common.aggregator_group,
            ignore_errors=True,
        )
        kafka.commit(group, common.windows_topic, windows_from)
        # Its dead letters are on the live dead-letter topic already: a throwaway one here.
        from queuewatch.kafka.topics import TopicSpec, ensure_topics

        letters = f"{common.dlq_topic}-rebuild-{self.plan.stamp}"
        ensure_topics(
            common.kafka_bootstrap, [TopicSpec(letters, 1)], KafkaSecurity.from_settings(common)
        )
        aggregator = self._start_aggregator({"QUEUEWATCH_DLQ_TOPIC": letters})
        total = behind(reports_end, {})
        quiet_since: list[float] = [time.monotonic()]
        last_end: list[dict[int, int]] = [windows_from]

        def done() -> tuple[int, int, bool]:
            if aggregator.poll() is not None:
                raise RebuildError(
                    f"the rebuild's aggregator exited with status {aggregator.returncode}; "
                    f"read {self._aggregator_log()}, fix the cause, then run `queuewatch "
                    "rebuild` again before starting the pipeline (its state was reset)"
                )
            left = behind(reports_end, kafka.committed(common.aggregator_group,
                                                       common.reports_topic))  # fmt: skip
            ends = kafka.ends(common.windows_topic)
            if ends != last_end[0]:
                last_end[0], quiet_since[0] = ends, time.monotonic()
            written = behind(ends, kafka.committed(group, common.windows_topic)) == 0
            quiet = time.monotonic() - quiet_since[0] >= QUIET_S
            return total - left, total, left == 0 and written and quiet

        try:
            self._drain("windows", url, "windows", group, common.windows_topic, done)
        finally:
            aggregator.terminate()
            try:
                aggregator.wait(60)
            except subprocess.TimeoutExpired:
                aggregator.kill()
                aggregator.wait()
            with contextlib.suppress(Exception):
                kafka.delete_topics([letters])
        return windows_from

    def _aggregator_log(self) -> Path:
        return Path(self.common.home).resolve() / "logs" / f"rebuild-{self.plan.stamp}.log"

    def _start_aggregator(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """`queuewatch aggregator` with this process's settings (the new ones) and ``env``."""
        import os

        log_path = self._aggregator_log()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            return subprocess.Popen(
                [self.python, "-m", "queuewatch", "aggregator"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env},
            )


class AlreadyLettered:
    """The shadow sinks' dead-letter topic: none. What cannot be written was dead-lettered by
    the live sink already, so it is counted and logged, not sent a second time."""

    def __init__(self) -> None:
        self.count = 0

    def send(self, message: Any, code: str, reason: str) -> None:
        self.count += 1
        log.warning(
            "rebuild: %s[%d]@%d not written (%s: %s); it is on the dead-letter topic already",
            message.topic,
            message.partition,
            message.offset,
            code,
            reason,
        )

    def flush(self) -> None:
        """Nothing is sent, so nothing to flush."""


def new_stamp() -> str:
    """A name part for this rebuild's tables and groups: the UTC time, to the second."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime())
