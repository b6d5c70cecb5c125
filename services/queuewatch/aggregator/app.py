"""The aggregator process: the faust wiring around the pure window logic.

Reads the reports topic as raw bytes (one agent, concurrency 1: faust issue 606), keeps its
state in a plain changelog-backed table (not faust's windowed tables: they expire by wall
clock and ``.current()`` ignores event time, faust issues 118 and 428), writes dead letters,
and emits changed windows at most once per flush interval. The rooms it wires:

* :mod:`queuewatch.aggregator.checkpoint`: the order of writes and acknowledgements;
* :mod:`queuewatch.aggregator.storage`: the table's records and their bytes;
* :mod:`queuewatch.aggregator.emission`: what is emitted when, and quiet crossings sealed;
* :mod:`queuewatch.aggregator.progress`: log order, holes, gaps and the progress watch.

What is left here is a batch's application (checkpoint steps 2-3) and faust's callbacks.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust

from queuewatch.aggregator import checkpoint, storage
from queuewatch.aggregator.bound import STATE_TOO_LARGE, Step, fit_prefix
from queuewatch.aggregator.contributions import apply_report
from queuewatch.aggregator.emission import Emission
from queuewatch.aggregator.emit import WindowBatches, send_records
from queuewatch.aggregator.gaps import GapProbe
from queuewatch.aggregator.intake import (
    Accepted,
    DeadLetter,
    RawMessage,
    dead_letter,
    fit_letter,
    intake,
    reader_schema,
)
from queuewatch.aggregator.progress import InputProgress
from queuewatch.aggregator.state import NO_WATERMARK, AggregationConfig, CrossingState, Outcome
from queuewatch.aggregator.storage import TABLE_NAME, StateStore
from queuewatch.aggregator.transport import SCHEME
from queuewatch.aggregator.window_codec import window_encoder
from queuewatch.contract.schemas import CROSSING_CONTRIBUTION, CROSSING_WINDOW, default_registry
from queuewatch.errors import ConfigurationError
from queuewatch.kafka.security import KafkaSecurity, RefusalLog, describe_failure
from queuewatch.kafka.topics import MAX_RECORD_BYTES, max_message_bytes, replication
from queuewatch.logformat import faust_logging_config
from queuewatch.platform.liveness import Heartbeat
from queuewatch.settings import AggregatorSettings, CommonSettings

log = logging.getLogger(__name__)

#: Room left in a record batch for what the producer adds around a dead letter's bytes
#: (batch and record headers, varints: well under 1 KiB), so a letter cut to fit does fit.
_LETTER_OVERHEAD = 16 * 1024
#: How often quiet crossings are sealed and dropped from memory, and emitted ones unmarked.
_EVICT_EVERY_S = 10.0


def topic_partitions(bootstrap: str, topic: str, security: KafkaSecurity | None = None) -> int:
    """Partition count of ``topic``; the table's changelog must have the same."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    security = security or KafkaSecurity()
    try:
        with RefusalLog() as refusals:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap,
                client_id="queuewatch-aggregator",
                **security.kafka_python(),
            )
    except (KafkaError, OSError) as exc:
        raise ConfigurationError(describe_failure(bootstrap, security, exc, refusals)) from exc
    try:
        described = admin.describe_topics([topic])
    except KafkaError as exc:
        raise ConfigurationError(
            f"topic {topic} is not there ({exc}); create it with `queuewatch topics`"
        ) from exc
    finally:
        admin.close()
    partitions = described[0].get("partitions") or []
    if described[0].get("error_code") or not partitions:
        raise ConfigurationError(
            f"topic {topic} is not there; create it with `queuewatch topics` (or `queuewatch up`)"
        )
    return len(partitions)


@dataclass
class _Batch:
    """What applying a batch left to write: per touched crossing, its partition and whether
    its windows changed; and the dead letters."""

    changes: list[tuple[str, int, bool]]
    dead: list[DeadLetter]


class Aggregator:
    """Wires the pure state to faust: the agent, the table, the timers, the callbacks."""

    def __init__(
        self,
        common: CommonSettings,
        settings: AggregatorSettings,
        partitions: int,
        dlq_max_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        self.common = common
        self.settings = settings
        #: a dead letter larger than this is cut to fit (intake.fit_letter): the DLQ topic's
        #: limit, and never more than a producer request may hold
        self.letter_max_bytes = (
            min(dlq_max_bytes, storage.STATE_RECORD_MAX_BYTES) - _LETTER_OVERHEAD
        )
        self.config = AggregationConfig.from_settings(settings)
        #: output ``contributions``: each accepted report once, sent before its state is
        #: written (so a durable state never holds a report whose contribution was lost)
        self.contributions = settings.aggregator_output == "contributions"
        self.encode_contribution = window_encoder(default_registry().latest(CROSSING_CONTRIBUTION))
        #: (partition, offset) -> contribution row of the batch being applied
        self._pending: dict[tuple[int, int], dict[str, Any]] = {}
        self.reader = reader_schema()
        self.window_schema = default_registry().latest(CROSSING_WINDOW)
        #: decoded states of the crossings in memory (the table holds their records)
        self.states: dict[str, CrossingState] = {}
        self.totals = {
            "messages": 0,
            "dead": 0,
            **{o.value: 0 for o in Outcome},
            "redelivered": 0,  # below the partition's next offset: applied before, skipped
            "holes": 0,  # above it: the partition was sought back
            "silent": 0,  # lag, nothing delivered: sought back to the next offset
        }
        self._stopping = False
        #: metrics (platform.metrics): the last batch acknowledged, and the batch latency
        self.last_ack_at: float | None = None
        self.batch_seconds: Any = None
        self._emit_lock = asyncio.Lock()
        self.emission = Emission(common.windows_topic, window_encoder(self.window_schema))
        self.progress = InputProgress(
            common.reports_topic,
            GapProbe(common.kafka_bootstrap, security=KafkaSecurity.from_settings(common)),
            Heartbeat(common.home, "aggregator", common.aggregator_group),
            common.stall_timeout_s,
            self.totals,
            self._emit_lock,
        )
        #: position records of durable batches, sent with the next batch's writes
        self._positions: dict[int, int] = {}
        #: each owned partition's clock: the newest observed_at applied in it (see sealing in
        #: ``state``); loaded from its position record on first use, dropped on revoke
        self._clocks: dict[int, int] = {}
        #: the clock of each queued position record
        self._position_clocks: dict[int, int] = {}
        #: crossings whose windows closed in the batch being written (emitted once durable)
        self._closed: list[str] = []
        self.app = self._build_app(partitions)
        self.progress.app = self.app
        self.store = StateStore(self.table, self.config)

    # --- wiring -------------------------------------------------------------------------------

    def _build_app(self, partitions: int) -> faust.App:
        common, s = self.common, self.settings
        datadir = Path(common.home).resolve() / "aggregator" / common.aggregator_group
        datadir.mkdir(parents=True, exist_ok=True)
        # Our transport: faust's aiokafka one, reading only committed records (see transport).
        brokers = [
            f"{SCHEME}://{b.strip()}" for b in common.kafka_bootstrap.split(",") if b.strip()
        ]
        # The same replication as the topics queuewatch creates (kafka/topics.py): the
        # changelog holds the only durable copy of the aggregator's state.
        factor, replicated = replication(common)
        app = faust.App(
            common.aggregator_group,
            broker=brokers,
            # Every client faust makes (consumer, producer, the admin calls that create the
            # changelog) logs in with these: SASL and/or TLS from the settings.
            broker_credentials=KafkaSecurity.from_settings(common).faust_credentials(),
            datadir=str(datadir),
            store="memory://",  # the changelog is the durable copy; recovery replays it
            processing_guarantee="at_least_once",
            topic_allow_declare=True,  # the broker never auto-creates: faust creates its own
            topic_disable_leader=True,
            topic_partitions=partitions,
            topic_replication_factor=factor,
            table_standby_replicas=0,
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            # A crossing's state record holds the snapshots of windows that closed since the
            # last flush; a replay over days of event time grew one past Kafka's 1 MB default
            # and the worker died on MessageSizeTooLargeError. Mitigation, not a bound.
            producer_max_request_size=storage.STATE_RECORD_MAX_BYTES,
            broker_commit_interval=1.0,
            broker_session_timeout=10.0,
            broker_heartbeat_interval=1.0,
            stream_buffer_maxsize=max(4 * s.aggregator_batch_size, 4096),
            web_enabled=s.aggregator_web_port != 0,
            web_port=s.aggregator_web_port or 6066,
            web_bind="127.0.0.1",
            web_host="127.0.0.1",
        )
        self.reports = app.topic(
            common.reports_topic,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )
        self.table = app.Table(
            TABLE_NAME,
            default=None,
            partitions=partitions,
            key_type=bytes,
            value_type=bytes,
            help="Per crossing a head (counters, watermark, offsets) and one record per report.",
            extra_topic_configs={
                "max.message.bytes": str(storage.STATE_RECORD_MAX_BYTES),
                **replicated,
            },
        )
        self.table.on_recover(self._on_recovered_or_exit)
        app.agent(self.reports, name="aggregate", concurrency=1)(self._agent)
        app.timer(s.aggregator_flush_interval_s)(self._flush_windows)
        app.timer(30.0)(self._log_totals)
        app.timer(self.progress.watch_interval_s)(self.progress.watch_progress)
        app.timer(_EVICT_EVERY_S)(self._evict_idle)
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]
        app.on_before_shutdown.connect(self._on_shutdown)  # type: ignore[arg-type]
        return app

    async def _on_revoked(self, sender: Any, revoked: Any, **_: Any) -> None:
        """Forget cached states of partitions we no longer own (their new owner has them)."""
        gone = {tp.partition for tp in revoked if tp.topic == self.common.reports_topic}
        for cid in [c for c, st in self.states.items() if set(st.applied) & gone]:
            del self.states[cid]
            self.emission.changed.discard(cid)
        self.store.forget_partitions(gone)
        for partition in gone:
            self.progress.disown(partition)
            self._positions.pop(partition, None)
            self._clocks.pop(partition, None)

    async def _on_recovered(self) -> None:
        """The table holds every durable record again: start each new partition at its position.

        Runs after faust restored the changelog and before it resumes the reports partitions.
        A partition's start is its position record (the first offset not durably applied),
        else the partition's first offset: never faust's committed offset, which can be ahead
        of what is durable (see checkpoint); the start is committed for the group, so faust's
        seek lands there. Partitions kept through a rebalance keep their in-memory position.
        """
        self.store.invalidate()  # the table holds what the changelog held
        consumer = self.app.consumer
        order = self.progress.order
        fresh = [
            tp
            for tp in consumer.assignment()
            if tp.topic == self.common.reports_topic and not order.owns(tp.partition)
        ]
        if not fresh:
            return
        # Below the first offset still in the log (retention deleted it) is nowhere to go.
        earliest = await consumer.earliest_offsets(*fresh)
        starts = {}
        for tp in fresh:
            position = self.store.position(tp.partition)
            start = int(earliest.get(tp) or 0)
            if position is not None:
                start = max(start, position)
            self.progress.own(tp.partition, start)
            starts[tp] = start
        # faust seeks every partition to the group's committed offset right after this
        # callback: make that offset ours (faust has no public hook after its seek).
        await consumer._commit(starts)  # type: ignore[attr-defined]
        log.info(
            "starting reports partitions at %s",
            {tp.partition: offset for tp, offset in sorted(starts.items())},
        )

    async def _on_recovered_or_exit(self) -> None:
        """:meth:`_on_recovered`, exiting the process if it fails.

        faust runs recovery callbacks under ``asyncio.wait``, which keeps their exceptions to
        itself: a failed start would leave the worker owning no partition, dropping every
        message and showing no lag, for ever. A restart (by ``up`` or Docker) retries it.
        """
        try:
            await self._on_recovered()
        except asyncio.CancelledError:
            raise  # a new rebalance or a stop: faust starts over
        except BaseException as exc:
            checkpoint.die_unsafe("starting the reports partitions after the table's recovery", exc)

    async def _on_assigned(self, sender: Any, assigned: Any, **_: Any) -> None:
        self.emission.scan_needed = True

    async def _on_shutdown(self, sender: Any, **_: Any) -> None:
        self._stopping = True
        self.progress.guard.stop()
        self.progress.heartbeat.remove()
        await self._log_totals()
        await self.progress.gaps.close()
        try:
            await self._flush_windows()
        except Exception:  # best effort: unsent windows stay marked in the changelog
            log.exception("final window flush failed; the windows are re-emitted on restart")

    # --- the agent ---------------------------------------------------------------------------

    async def _agent(self, stream: Any) -> None:
        s = self.settings
        async for events in stream.take_events(
            s.aggregator_batch_size, s.aggregator_batch_timeout_s
        ):
            checkpoint.hold(events)
            steps = self.progress.steps
            began = time.monotonic()
            try:
                with steps.doing("putting the batch in log order (seeking back over a hole)"):
                    fresh = await self.progress.in_log_order(events)
                # Never write a state between an emission's take and its delivery: the state
                # record must keep marking windows whose emission is not yet durable.
                with steps.doing("waiting for a window emission to finish"):
                    await self._emit_lock.acquire()
                try:
                    batch = self._apply(fresh)
                    if self._pending:
                        with steps.doing("waiting for the broker to acknowledge contributions"):
                            await self._send_contributions()
                    writes = self._write(batch)
                    with steps.doing("waiting for the broker to acknowledge the batch's writes"):
                        await checkpoint.wait_durable(writes)
                    self.store.commit()
                    self._note_positions(fresh)
                    if self._closed:
                        closed, self._closed = self._closed, []
                        with steps.doing("emitting closed windows (waiting for the broker)"):
                            await self.emission.emit_closed(
                                self.app.producer, self.states, closed, self._is_stopping
                            )
                finally:
                    self._emit_lock.release()
            except asyncio.CancelledError:
                raise  # stopping: the batch stays unacked and is replayed on restart
            except BaseException as exc:
                checkpoint.die_unsafe("processing a batch", exc)
            with steps.doing("acknowledging the batch to faust"):
                await checkpoint.release(stream, events)
            self.last_ack_at = now = time.monotonic()
            if self.batch_seconds is not None:
                self.batch_seconds.observe(now - began)

    def _note_positions(self, events: list[Any]) -> None:
        """After a batch is durable: queue its partitions' position records.

        They are sent with the next batch's writes (or by the flush timer), so a position
        never reaches the broker before the writes it covers.
        """
        order = self.progress.order
        for partition in {event.message.partition for event in events}:
            if order.owns(partition):  # else revoked meanwhile: the new owner records it
                self._positions[partition] = order.next[partition]
                clock = self._clocks.get(partition)
                if clock is not None:
                    self._position_clocks[partition] = clock

    def _send_positions(self) -> None:
        """Write the queued position records (to the store's outbox)."""
        positions, self._positions = self._positions, {}
        for partition, offset in positions.items():
            self.store.write_position(partition, offset, self._position_clocks.pop(partition, None))

    def _ship(self) -> Any:
        """Send the store's outbox in record batches; the awaitable to wait for (checkpoint)."""
        return send_records(
            self.app.producer, self.table.changelog_topic.get_topic_name(), self.store.take()
        )

    async def _send_contributions(self) -> None:
        """Send the batch's contributions and wait for the broker's acks (before its state)."""
        pending, self._pending = self._pending, {}
        now = int(time.time() * 1000)
        topic = self.common.contributions_topic
        out = await WindowBatches.for_app(self.app.producer, topic)
        encode = self.encode_contribution
        for row in pending.values():
            row["updated_at"] = now
            await out.add(row["crossing_id"].encode(), encode(row))
        await out.finish()

    def _apply(self, events: list[Any]) -> _Batch:
        """Step 2 of the checkpoint protocol: decode, validate, apply; bound the states."""
        raw = []
        for event in events:
            m = event.message
            raw.append(
                RawMessage(
                    m.topic,
                    m.partition,
                    m.offset,
                    round(m.timestamp * 1000),
                    m.key,
                    m.value,
                    list(m.headers or ()),
                )
            )
        accepted, dead = intake(raw, self.reader)
        totals = self.totals
        totals["messages"] += len(raw)
        totals["dead"] += len(dead)
        touched: dict[str, int] = {}
        replayed = 0
        clocks = self._clocks
        before: list[int] = []  # each report's partition clock before it (see bound)
        contribute = self.contributions
        for item in accepted:
            record = item.record
            cid = record["crossing_id"]
            state = self._state(cid)
            partition = item.partition
            clock = clocks.get(partition)
            if clock is None:
                clock = self._clock(partition)
            before.append(clock)
            outcome, row = apply_report(state, record, partition, item.offset, clock, contribute)
            if row is not None:
                self._pending[(partition, item.offset)] = row
            if record["observed_at"] > clock:
                clocks[partition] = record["observed_at"]
            totals[outcome.value] += 1
            touched[cid] = partition
            replayed += outcome is Outcome.REPLAYED
        self.emission.emitted.difference_update(touched)  # their records are written below
        if replayed:
            log.info("skipped %d reports applied before a restart (at-least-once replay)", replayed)
        changed_set = self.emission.changed
        limit = storage.STATE_RECORD_MAX_BYTES
        changes: list[tuple[str, int, bool]] = []
        for cid, partition in touched.items():
            state = self.states[cid]
            changed = state.has_changes()
            if changed:
                changed_set.add(cid)
            size = self.store.size(state)
            if size > limit:
                state, letters = self._fit(cid, size, accepted, before, raw)
                dead += letters
                totals["dead"] += len(letters)
                changed = state.has_changes()
                if changed:
                    changed_set.add(cid)
            changes.append((cid, partition, changed))
        return _Batch(changes, dead)

    def _write(self, batch: _Batch) -> list[Any]:
        """Step 3 of the checkpoint protocol: the states' writes and the dead letters."""
        writes: list[Any] = []
        self._send_positions()  # of the previous batch, durable by now
        producer = self.app.producer
        for cid, partition, changed in batch.changes:
            state = self.states[cid]
            self.store.write(partition, state, changed)
            if state.snapshots:
                self._closed.append(cid)
        writes.append(self._ship())
        for letter in batch.dead:
            letter = fit_letter(letter, self.letter_max_bytes)
            writes.append(
                self._send(
                    producer, self.common.dlq_topic, letter.key, letter.value, letter.headers
                )
            )
        return writes

    def _fit(
        self,
        cid: str,
        size: int,
        accepted: list[Accepted],
        before: list[int],
        raw: list[RawMessage],
    ) -> tuple[CrossingState, list[DeadLetter]]:
        """The crossing's state would not fit a record: keep what fits, refuse the rest (bound)."""

        def restore() -> CrossingState:
            return self.store.load_or_new(cid)

        steps = [
            Step(a.record, a.partition, a.offset, clock)
            for a, clock in zip(accepted, before, strict=True)
            if a.record["crossing_id"] == cid
        ]
        state, kept = fit_prefix(
            restore,
            steps,
            self.store.size,
            storage.STATE_RECORD_MAX_BYTES,
        )
        self.states[cid] = state
        messages = {(m.partition, m.offset): m for m in raw}
        why = (
            f"the head record of crossing {cid} would be {size / 2**20:.1f} MiB with this batch, "
            f"over the {storage.STATE_RECORD_MAX_BYTES // 2**20} MiB a changelog record may hold, "
            "so this report was not applied: the head holds the changed windows not emitted yet, "
            "and this batch changed too many (a backfill over a long span of event time); "
            "republish it in smaller steps once the flood is over"
        )
        refused = [
            dead_letter(messages[(st.partition, st.offset)], STATE_TOO_LARGE, why)
            for st in steps[kept:]
        ]
        for st in steps[kept:]:  # not counted by the state: no contribution either
            self._pending.pop((st.partition, st.offset), None)
        log.error(
            "crossing %s: %d reports of this batch dead-lettered (%s): %s",
            cid,
            len(refused),
            STATE_TOO_LARGE,
            why,
        )
        return state, refused

    def _clock(self, partition: int) -> int:
        """The partition's clock, from its position record when not known yet."""
        clock = self._clocks.get(partition)
        if clock is None:
            clock = self.store.clock(partition)
            if clock is None:
                clock = NO_WATERMARK
            self._clocks[partition] = clock
        return clock

    @staticmethod
    async def _send(
        producer: Any, topic: str, key: bytes | None, value: bytes | None, headers: Any
    ) -> Any:
        fut = await producer.send(topic, key, value, None, None, headers)
        return await fut

    def _state(self, cid: str) -> CrossingState:
        state = self.states.get(cid)
        if state is None:
            state = self.states[cid] = self.store.load_or_new(cid)
            if state.has_changes():
                self.emission.changed.add(cid)
        return state

    async def _flush_windows(self) -> None:
        """Emit every changed window once, newest state, keyed by crossing."""
        if (
            self.emission.scan_needed
            and not self.app.rebalancing
            and self.app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
        ):
            self.emission.scan_needed = False
            self._scan_unsent()
        if self.progress.order.holes:
            async with self._emit_lock:
                try:
                    await self.progress.repair_holes()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the hole stays; the next tick seeks again
                    log.warning("seeking back over a hole failed (%s); retrying", exc)
        if self.emission.changed:
            async with self._emit_lock:
                with self.progress.steps.doing("emitting windows (waiting for the broker's acks)"):
                    await self.emission.emit(self.app.producer, self.states, self._is_stopping)
        if self._positions or self.store.has_due():  # traffic stopped after a batch
            async with self._emit_lock:
                try:  # record where we are, delete what the last heads made obsolete
                    self._send_positions()
                    self.store.send_due()
                    await checkpoint.wait_durable([self._ship()])
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # harmless: a restart replays a little more
                    log.warning("position record not written (%s); the next batch writes it", exc)

    async def _log_totals(self) -> None:
        log.info("aggregator totals: %s; crossings cached %d", self.totals, len(self.states))

    def _is_stopping(self) -> bool:
        return self._stopping

    def _scan_unsent(self) -> None:
        """After a (re)start or rebalance: find states whose windows were never emitted."""
        assigned = {
            tp.partition
            for tp in self.app.consumer.assignment()
            if tp.topic == self.common.reports_topic
        }
        self.emission.scan_unsent(self.store, self.states, assigned)

    async def _evict_idle(self) -> None:
        """Seal quiet crossings and unmark emitted ones (``Emission.quiet_writes``).

        The records are written like a batch's, under the emission lock, and waited for.
        """
        if self.app.rebalancing or self._stopping:
            return
        async with self._emit_lock:
            self.emission.quiet_writes(
                self.store, self.states, self.progress.order.owns, self._clock
            )
            try:
                await checkpoint.wait_durable([self._ship()])
                self.store.commit()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # harmless: the log seals them again, the mark re-emits
                self.store.abandon()
                log.warning("quiet crossings' records not written (%s); retrying later", exc)


def _tune_gc() -> None:
    """Collect the young generation less often.

    Every report allocates a few dicts and tuples that die with its batch, so with Python's
    default threshold (700 allocations) the collector runs several times per batch and walks
    the long-lived state each time it reaches the older generations. Objects built at start-up
    (faust, schemas, settings) are frozen out of collection altogether.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _serve_metrics(
    aggregator: Aggregator, common: CommonSettings, settings: AggregatorSettings
) -> None:
    """Prometheus metrics on QUEUEWATCH_AGGREGATOR_METRICS_PORT (0: none), read at scrape."""
    if settings.aggregator_metrics_port <= 0:
        return
    from prometheus_client import CollectorRegistry

    from queuewatch.platform import metrics

    registry = CollectorRegistry()
    registry.register(
        metrics.AggregatorCollector(
            aggregator.totals,
            aggregator.states,
            lambda: aggregator.progress.partition_lag,
            lambda: aggregator.last_ack_at,
        )
    )
    aggregator.batch_seconds = metrics.batch_histogram(
        registry,
        "queuewatch_aggregator_batch_seconds",
        "Seconds from a batch's arrival to its acknowledgement (applied, durable, emitted).",
    )
    metrics.serve(registry, common.metrics_address, settings.aggregator_metrics_port, "aggregator")


def run(common: CommonSettings, settings: AggregatorSettings) -> None:
    """Run the aggregator worker until SIGTERM/SIGINT."""
    security = KafkaSecurity.from_settings(common)
    partitions = topic_partitions(common.kafka_bootstrap, common.reports_topic, security)
    dlq_max_bytes = max_message_bytes(common.kafka_bootstrap, common.dlq_topic, security)
    aggregator = Aggregator(common, settings, partitions, dlq_max_bytes)
    _serve_metrics(aggregator, common, settings)
    _tune_gc()
    worker = faust.Worker(
        aggregator.app,
        loglevel=common.log_level,
        logging_config=faust_logging_config(common.log_level, common.log_format, "aggregator"),
        quiet=True,
        redirect_stdouts=False,
    )
    worker.execute_from_commandline()
