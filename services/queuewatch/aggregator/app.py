"""The aggregator process: a faust-streaming app around the pure window logic.

Reads the reports topic as raw bytes (one agent, concurrency 1: faust issue 606), keeps one
state record per crossing in a plain changelog-backed table (not faust's windowed tables:
they expire by wall clock and ``.current()`` ignores event time, faust issues 118 and 428),
writes dead letters, and emits changed windows at most once per flush interval. The order of
writes and acknowledgements is :mod:`queuewatch.aggregator.checkpoint`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time
from pathlib import Path
from typing import Any

import faust
from faust.types import TP

from queuewatch.aggregator import checkpoint
from queuewatch.aggregator.bound import STATE_TOO_LARGE, Step, fit_prefix
from queuewatch.aggregator.consensus import consensus_rules
from queuewatch.aggregator.emit import WindowBatches
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
from queuewatch.aggregator.ordering import LogOrder, Verdict
from queuewatch.aggregator.state import NO_WATERMARK, AggregationConfig, CrossingState, Outcome
from queuewatch.aggregator.state_codec import decode_state, encode_state
from queuewatch.aggregator.transport import SCHEME
from queuewatch.aggregator.window_codec import window_encoder
from queuewatch.contract.schemas import CROSSING_WINDOW, default_registry
from queuewatch.errors import ConfigurationError
from queuewatch.kafka.security import KafkaSecurity, RefusalLog, describe_failure
from queuewatch.kafka.topics import MAX_RECORD_BYTES, max_message_bytes, replication
from queuewatch.platform.liveness import (
    Heartbeat,
    LoopGuard,
    ProgressWatch,
    Stall,
    Steps,
    exit_stalled,
    watch_interval,
)
from queuewatch.settings import AggregatorSettings, CommonSettings

log = logging.getLogger(__name__)

TABLE_NAME = "crossing-state"
#: Largest state record (and so producer request) the aggregator writes: 16 MiB.
STATE_RECORD_MAX_BYTES = MAX_RECORD_BYTES
#: Room left in a record batch for what the producer adds around a dead letter's bytes
#: (batch and record headers, varints: well under 1 KiB), so a letter cut to fit does fit.
_LETTER_OVERHEAD = 16 * 1024
#: Written first in every state record, so a restart finds states with unsent windows
#: without parsing them all.
_CHANGED_MARK = b'{"f":1,"chg":1,'
#: Table key of a reports partition's position record (see :mod:`checkpoint`); the NUL
#: keeps it apart from every crossing id.
_POSITION_KEY = b"\x00position/%d"
#: How often a partition with a hole is sought back again until the missing offset arrives:
#: faust drops re-fetched messages below offsets it is still delivering from an earlier
#: fetch (``Consumer._read_offset``), so one seek is not always enough.
_RESEEK_EVERY_S = 1.0
#: A partition with lag that delivered nothing for this long, while the client has read past
#: what we were given, is silent: faust dropped fetched records (see LogOrder.silent).
_SILENT_AFTER_S = 10.0
#: How often quiet crossings are sealed and dropped from memory, and emitted ones unmarked.
_EVICT_EVERY_S = 10.0
#: A state record's head: watermark, one applied partition, and whether sealed (state_codec
#: writes these keys in this order), read without decoding the whole record.
_HEAD = re.compile(
    rb'"wm":(-?\d+),"n":\[[-\d,]*\],"applied":\[\[(\d+),-?\d+\]\](?:,"sealed":(-?\d+))?'
)


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


class Aggregator:
    """Wires the pure state to faust: the agent, the table, the emission timer."""

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
        self.letter_max_bytes = min(dlq_max_bytes, STATE_RECORD_MAX_BYTES) - _LETTER_OVERHEAD
        #: tells a gap (transaction markers, aborted records) from a hole (see gaps)
        self.gaps = GapProbe(common.kafka_bootstrap, security=KafkaSecurity.from_settings(common))
        self.config = AggregationConfig.from_spec(
            settings.aggregator_windows,
            settings.aggregator_grace,
            settings.aggregator_dedup_horizon,
            consensus_rules(settings),
        )
        self.reader = reader_schema()
        self.window_schema = default_registry().latest(CROSSING_WINDOW)
        self.encode_window = window_encoder(self.window_schema)
        self.states: dict[str, CrossingState] = {}
        self.changed: set[str] = set()
        self.totals = {
            "messages": 0,
            "dead": 0,
            **{o.value: 0 for o in Outcome},
            "redelivered": 0,  # below the partition's next offset: applied before, skipped
            "holes": 0,  # above it: the partition was sought back
            "silent": 0,  # lag, nothing delivered: sought back to the next offset
        }
        self._scan_needed = True
        self._stopping = False
        self._emit_lock = asyncio.Lock()
        #: each owned reports partition's next offset: applied in log order, without holes
        self.order = LogOrder(_RESEEK_EVERY_S)
        #: position records of durable batches, sent with the next batch's writes
        self._positions: dict[int, int] = {}
        #: liveness: the awaits that may hang, and the progress of the input (platform.liveness)
        self.steps = Steps()
        self.watch_interval_s = watch_interval(common.stall_timeout_s)
        self.watch = ProgressWatch(common.stall_timeout_s, self.watch_interval_s)
        self.heartbeat = Heartbeat(common.home, "aggregator", common.aggregator_group)
        self.guard = LoopGuard("aggregator", common.stall_timeout_s, self._stalled_loop)
        #: each owned partition's clock: the newest observed_at applied in it (see sealing in
        #: ``state``); loaded from its position record on first use, dropped on revoke
        self._clocks: dict[int, int] = {}
        #: each owned partition's last delivery (any verdict), and the end offset up to which
        #: the gap probe found nothing we can receive (transaction markers at the end)
        self._delivered_at: dict[int, float] = {}
        self._nothing_before: dict[int, int] = {}
        #: the clock of each queued position record
        self._position_clocks: dict[int, int] = {}
        #: crossings emitted whose record still carries the changed mark (see _evict_idle)
        self._emitted: set[str] = set()
        self.app = self._build_app(partitions)

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
            producer_max_request_size=STATE_RECORD_MAX_BYTES,
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
            help="One state record per crossing: panes, watermark, de-duplication, offsets.",
            extra_topic_configs={"max.message.bytes": str(STATE_RECORD_MAX_BYTES), **replicated},
        )
        self.table.on_recover(self._on_recovered_or_exit)
        app.agent(self.reports, name="aggregate", concurrency=1)(self._agent)
        app.timer(s.aggregator_flush_interval_s)(self._flush_windows)
        app.timer(30.0)(self._log_totals)
        app.timer(self.watch_interval_s)(self._watch_progress)
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
            self.changed.discard(cid)
        for partition in gone:
            self.order.disown(partition)
            self._delivered_at.pop(partition, None)
            self._nothing_before.pop(partition, None)
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
        consumer = self.app.consumer
        fresh = [
            tp
            for tp in consumer.assignment()
            if tp.topic == self.common.reports_topic and not self.order.owns(tp.partition)
        ]
        if not fresh:
            return
        # Below the first offset still in the log (retention deleted it) is nowhere to go.
        earliest = await consumer.earliest_offsets(*fresh)
        starts = {}
        for tp in fresh:
            data = self.table.data.get(_POSITION_KEY % tp.partition)
            start = int(earliest.get(tp) or 0)
            if data:
                start = max(start, checkpoint.decode_position(data))
            self.order.own(tp.partition, start)
            self._delivered_at[tp.partition] = time.monotonic()
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

    def _should_own(self, tp: TP) -> bool:
        """True when ``tp`` is assigned to us and no rebalance is under way: we must own it."""
        return not self.app.rebalancing and tp in self.app.consumer.assignment()

    async def _on_assigned(self, sender: Any, assigned: Any, **_: Any) -> None:
        self._scan_needed = True

    async def _on_shutdown(self, sender: Any, **_: Any) -> None:
        self._stopping = True
        self.guard.stop()
        self.heartbeat.remove()
        await self._log_totals()
        await self.gaps.close()
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
            steps = self.steps
            try:
                with steps.doing("putting the batch in log order (seeking back over a hole)"):
                    fresh = await self._in_log_order(events)
                # Never write a state between an emission's take and its delivery: the state
                # record must keep marking windows whose emission is not yet durable.
                with steps.doing("waiting for a window emission to finish"):
                    await self._emit_lock.acquire()
                try:
                    writes = self._process(fresh)
                    with steps.doing("waiting for the broker to acknowledge the batch's writes"):
                        await checkpoint.wait_durable(writes)
                    self._note_positions(fresh)
                finally:
                    self._emit_lock.release()
            except asyncio.CancelledError:
                raise  # stopping: the batch stays unacked and is replayed on restart
            except BaseException as exc:
                checkpoint.die_unsafe("processing a batch", exc)
            with steps.doing("acknowledging the batch to faust"):
                await checkpoint.release(stream, events)

    async def _in_log_order(self, events: list[Any]) -> list[Any]:
        """The events to apply: each partition's next offsets, in order (see ``ordering``)."""
        fresh: list[Any] = []
        seek: dict[TP, int] = {}
        order = self.order
        now = time.monotonic()
        delivered = self._delivered_at
        for event in events:
            m = event.message
            delivered[m.partition] = now
            holed = order.holes and m.partition in order.holes
            verdict = order.admit(m.partition, m.offset, now)
            if verdict is Verdict.APPLY:
                fresh.append(event)
                if holed:
                    log.info("partition %d: hole repaired at offset %d", m.partition, m.offset)
            elif verdict is Verdict.REDELIVERED:
                self.totals["redelivered"] += 1
            elif verdict is Verdict.HOLE:
                want = order.holes[m.partition].offset
                if await self._skip_gap(m.partition, want):
                    if order.admit(m.partition, m.offset, now) is Verdict.APPLY:
                        fresh.append(event)
                        continue
                    want = order.holes[m.partition].offset
                self.totals["holes"] += 1
                seek[m.tp] = want
                log.warning(
                    "partition %d: got offset %d, expected %d (the client skipped messages); "
                    "seeking back",
                    m.partition,
                    m.offset,
                    want,
                )
            elif verdict is Verdict.NOT_OURS and self._should_own(m.tp):
                # Never dropped and acked in silence: we would idle with no lag showing.
                checkpoint.die_unsafe(
                    "ordering the reports",
                    RuntimeError(
                        f"partition {m.partition} is assigned to this worker but was never "
                        "started at its position (the start after recovery failed?)"
                    ),
                )
        if seek:
            await self._seek(seek)
        return fresh

    async def _skip_gap(self, partition: int, want: int) -> bool:
        """True when offsets from ``want`` on hold no record we can receive (see ``gaps``)."""
        first = await self.gaps.first_at_or_after(self.common.reports_topic, partition, want)
        if first is None or not self.order.skip_gap(partition, first):
            return False
        log.info(
            "partition %d: offsets %d..%d hold no reports (transaction markers or aborted "
            "records); going on at %d",
            partition,
            want,
            first - 1,
            first,
        )
        return True

    async def _seek(self, seek: dict[TP, int]) -> None:
        try:
            await self.app.consumer.seek_wait(seek)
        except Exception:
            if set(seek) & self.app.consumer.assignment():
                raise  # still ours and not sought back: unsafe to go on (exit, replay)
            log.info("partitions %s were revoked while seeking back", sorted(seek))

    async def _repair_holes(self) -> None:
        """Seek partitions with a hole back again until the missing offset arrives.

        A hole is never skipped: only retention can delete an offset for good, and offsets
        that hold no record we can receive (transactional producers' markers and aborted
        records, see ``gaps``) are a gap, not a hole.
        """
        now = time.monotonic()
        due = self.order.due(now)
        if not due:
            return
        tps = {TP(self.common.reports_topic, p): offset for p, offset in due.items()}
        earliest = await self.app.consumer.earliest_offsets(*tps)
        for tp, offset in list(tps.items()):
            first = int(earliest.get(tp) or 0)
            if self.order.skip_deleted(tp.partition, first):
                log.warning(
                    "partition %d: offsets %d..%d were deleted by retention; going on at %d",
                    tp.partition,
                    offset,
                    first - 1,
                    first,
                )
                tps[tp] = first
            elif await self._skip_gap(tp.partition, offset):
                tps[tp] = self.order.holes[tp.partition].offset
            hole = self.order.holes[tp.partition]
            if now - hole.found_at > 30:
                log.error(
                    "partition %d: offset %d still missing after %.0f s of seeking back",
                    tp.partition,
                    hole.offset,
                    now - hole.found_at,
                )
        await self._seek(tps)

    def _note_positions(self, events: list[Any]) -> None:
        """After a batch is durable: queue its partitions' position records.

        They are sent with the next batch's writes (or by the flush timer), so a position
        never reaches the broker before the writes it covers.
        """
        for partition in {event.message.partition for event in events}:
            if self.order.owns(partition):  # else revoked meanwhile: the new owner records it
                self._positions[partition] = self.order.next[partition]
                clock = self._clocks.get(partition)
                if clock is not None:
                    self._position_clocks[partition] = clock

    def _send_positions(self) -> list[Any]:
        """Write the queued position records; returns the writes."""
        positions, self._positions = self._positions, {}
        writes = []
        for partition, offset in positions.items():
            key = _POSITION_KEY % partition
            data = checkpoint.encode_position(offset, self._position_clocks.pop(partition, None))
            self.table.data[key] = data
            writes.append(self.table.send_changelog(partition, key, data, "raw", "raw"))
        return writes

    def _process(self, events: list[Any]) -> list[Any]:
        """Steps 2 and 3 of the checkpoint protocol; returns the writes to wait for."""
        writes: list[Any] = self._send_positions()  # of the previous batch, durable by now
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
        for item in accepted:
            record = item.record
            cid = record["crossing_id"]
            state = self._state(cid)
            partition = item.partition
            clock = clocks.get(partition)
            if clock is None:
                clock = self._clock(partition)
            before.append(clock)
            if item.offset > state.applied.get(partition, -1):  # a replay changes nothing
                state.seal_if_idle(clock)
            outcome = state.apply(record, partition, item.offset)
            if record["observed_at"] > clock:
                clocks[partition] = record["observed_at"]
            totals[outcome.value] += 1
            touched[cid] = partition
            replayed += outcome is Outcome.REPLAYED
        self._emitted.difference_update(touched)  # their records are written below
        if replayed:
            log.info("skipped %d reports applied before a restart (at-least-once replay)", replayed)
        producer = self.app.producer
        for cid, partition in touched.items():
            state = self.states[cid]
            changed = state.has_changes()
            if changed:
                self.changed.add(cid)
            key = cid.encode()
            data = self._encode(state, changed)
            if len(data) > STATE_RECORD_MAX_BYTES:
                state, letters = self._fit(cid, len(data), accepted, before, raw)
                dead += letters
                totals["dead"] += len(letters)
                changed = state.has_changes()
                if changed:
                    self.changed.add(cid)
                data = self._encode(state, changed)
            self.table.data[key] = data
            writes.append(self.table.send_changelog(partition, key, data, "raw", "raw"))
        for letter in dead:
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
        durable = self.table.data.get(cid.encode())

        def restore() -> CrossingState:
            return (
                decode_state(durable, self.config) if durable else CrossingState(cid, self.config)
            )

        steps = [
            Step(a.record, a.partition, a.offset, clock)
            for a, clock in zip(accepted, before, strict=True)
            if a.record["crossing_id"] == cid
        ]
        state, kept = fit_prefix(
            restore,
            steps,
            lambda s: len(self._encode(s, s.has_changes())),
            STATE_RECORD_MAX_BYTES,
        )
        self.states[cid] = state
        messages = {(m.partition, m.offset): m for m in raw}
        why = (
            f"the state of crossing {cid} would be {size / 2**20:.1f} MiB with this batch, over "
            f"the {STATE_RECORD_MAX_BYTES // 2**20} MiB a changelog record may hold, so this "
            "report was not applied: it holds one event id per report within the dedup horizon "
            "(QUEUEWATCH_AGGREGATOR_DEDUP_HORIZON); republish it once the flood is over"
        )
        refused = [
            dead_letter(messages[(st.partition, st.offset)], STATE_TOO_LARGE, why)
            for st in steps[kept:]
        ]
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
            data = self.table.data.get(_POSITION_KEY % partition)
            clock = checkpoint.decode_clock(data) if data else None
            if clock is None:
                clock = NO_WATERMARK
            self._clocks[partition] = clock
        return clock

    @staticmethod
    def _encode(state: CrossingState, changed: bool) -> bytes:
        data = encode_state(state)
        # Mark states holding unsent windows (see _CHANGED_MARK); '{"f":1,' is the prefix.
        return _CHANGED_MARK + data[7:] if changed else data

    @staticmethod
    async def _send(
        producer: Any, topic: str, key: bytes | None, value: bytes | None, headers: Any
    ) -> Any:
        fut = await producer.send(topic, key, value, None, None, headers)
        return await fut

    def _state(self, cid: str) -> CrossingState:
        state = self.states.get(cid)
        if state is None:
            data = self.table.data.get(cid.encode())
            state = decode_state(data, self.config) if data else CrossingState(cid, self.config)
            self.states[cid] = state
            if state.has_changes():
                self.changed.add(cid)
        return state

    # --- emission ------------------------------------------------------------------------------

    def _scan_unsent(self) -> None:
        """After a (re)start or rebalance: find states whose windows were never emitted."""
        assigned = {
            tp.partition
            for tp in self.app.consumer.assignment()
            if tp.topic == self.common.reports_topic
        }
        for key, data in list(self.table.data.items()):
            if not data or not data.startswith(_CHANGED_MARK):
                continue
            cid = key.decode()
            if cid in self.states:
                continue
            state = decode_state(data, self.config)
            if set(state.applied) & assigned:
                self.states[cid] = state
                self.changed.add(cid)

    async def _flush_windows(self) -> None:
        """Emit every changed window once, newest state, keyed by crossing."""
        if (
            self._scan_needed
            and not self.app.rebalancing
            and self.app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
        ):
            self._scan_needed = False
            self._scan_unsent()
        if self.order.holes:
            async with self._emit_lock:
                try:
                    await self._repair_holes()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the hole stays; the next tick seeks again
                    log.warning("seeking back over a hole failed (%s); retrying", exc)
        if self.changed:
            async with self._emit_lock:
                with self.steps.doing("emitting windows (waiting for the broker's acks)"):
                    await self._emit()
        if self._positions:  # traffic stopped after a batch: record where we are
            async with self._emit_lock:
                try:
                    await checkpoint.wait_durable(self._send_positions())
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # harmless: a restart replays a little more
                    log.warning("position record not written (%s); the next batch writes it", exc)

    async def _emit(self) -> None:
        pending, self.changed = self.changed, set()
        now = int(time.time() * 1000)
        try:
            # One record batch per partition (see emit), acknowledged before we return.
            out = await WindowBatches.for_app(self.app.producer, self.common.windows_topic)
            for cid in pending:
                state = self.states.get(cid)
                if state is None:
                    continue
                key = cid.encode()
                for row in state.take_changed():
                    row["updated_at"] = now
                    await out.add(key, self.encode_window(row))
            await out.finish()
            self._emitted.update(pending)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if self._stopping:  # producer closing under us: the states still mark them
                log.warning("windows not emitted at shutdown (%s); re-emitted on restart", exc)
                return
            checkpoint.die_unsafe("emitting windows", exc)

    # --- liveness ------------------------------------------------------------------------------

    async def _watch_progress(self) -> None:
        """Progress or an honest exit (platform.liveness): sample position and lag, judge."""
        self.guard.beat()
        self.guard.start()
        self.watch.begin()
        silent: list[tuple[TP, int, int]] = []
        try:
            position, lag, blocked = await asyncio.wait_for(
                self._sample_progress(silent), timeout=max(2 * self.watch_interval_s, 5.0)
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the broker or faust's consumer thread does not answer
            position = self.watch.position or 0
            lag = max(self.watch.lag or 1, 1)
            why = "no answer in time" if isinstance(exc, TimeoutError) else f"{exc!r}"
            blocked = f"the input's end offsets cannot be read from Kafka ({why})"
        if silent:
            try:
                await self._repair_silent(silent)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next sample finds it silent again
                log.warning("seeking back a silent partition failed (%s); retrying", exc)
        stall = self.watch.observe(position, lag, blocked)
        self.heartbeat.write(
            self.watch,
            reason=blocked,
            details={"owned": sorted(self.order.next), "holes": sorted(self.order.holes)},
        )
        if stall is not None:
            self._stalled(stall)

    async def _sample_progress(
        self, silent: list[tuple[TP, int, int]]
    ) -> tuple[int, int, str | None]:
        """(position, lag, what blocks the work) of this worker's share of the reports topic.

        The position is the sum of the owned partitions' next offsets, the lag how far they
        are from the end. While a rebalance or the state's recovery runs, the restored
        changelog offsets count as position and the work as pending: a rebalance that never
        ends is a stall too. Partitions that look silent (lag, no delivery for
        ``_SILENT_AFTER_S``, the client past our next offset) are added to ``silent``.
        """
        app = self.app
        recovery = app.tables.recovery  # type: ignore[attr-defined]
        position = sum(self.order.next.values())
        blocked = self.steps.blocked(self.watch_interval_s)
        if app.rebalancing or recovery.in_recovery:
            restored = sum(o for o in recovery.active_offsets.values() if o and o > 0)
            pending = 1 + int(recovery.active_remaining_total())
            return (
                position + restored,
                pending,
                blocked or "a rebalance or the state's recovery from the changelog has not ended",
            )
        consumer = app.consumer
        tps = [tp for tp in consumer.assignment() if tp.topic == self.common.reports_topic]
        if not tps:
            return position, 0, blocked
        ends = await consumer.highwaters(*tps)
        now = time.monotonic()
        lag = 0
        unowned = []
        for tp in tps:
            end = int(ends.get(tp) or 0)
            nxt = self.order.next.get(tp.partition)
            if nxt is None:
                unowned.append(tp.partition)
                lag += end
                continue
            behind = end - nxt
            if behind > 0 and self._nothing_before.get(tp.partition) == end:
                behind = 0  # only transaction markers or aborted records left (probed)
            quiet = now - self._delivered_at.get(tp.partition, now)
            if behind > 0 and quiet >= _SILENT_AFTER_S and tp.partition not in self.order.holes:
                fetched = await consumer.position(tp)
                if fetched is not None and fetched > nxt:
                    silent.append((tp, nxt, end))
                elif tp in consumer._paused_partitions:  # type: ignore[attr-defined]
                    # Paused outside a rebalance and nothing fetched: a recovery that ended
                    # early (a new generation) never resumed it.
                    log.warning("partition %d: paused with lag %d; resuming", tp.partition, behind)
                    consumer.resume_partitions({tp})
            lag += max(0, behind)
        if unowned and not blocked:
            blocked = (
                f"partitions {sorted(unowned)} are assigned but were never started at their "
                "position (did the recovery callback fail? see the log above)"
            )
        return position, lag, blocked

    async def _repair_silent(self, silent: list[tuple[TP, int, int]]) -> None:
        """Ask the broker what follows each silent partition's next offset, and act on it.

        Nothing we can receive: the lag is transaction markers or aborted records, so the
        partition is caught up. A record further on: the offsets before it are a gap. A record
        at the next offset (after any gap), never given to us: a silent hole, sought back
        like any hole until it arrives.
        """
        topic = self.common.reports_topic
        async with self._emit_lock:
            seek: dict[TP, int] = {}
            for tp, nxt, end in silent:
                if self.order.next.get(tp.partition) != nxt:
                    continue  # it moved meanwhile
                first = await self.gaps.first_at_or_after(topic, tp.partition, nxt)
                if first is None:
                    self._nothing_before[tp.partition] = end
                    continue
                if first > nxt and self.order.skip_gap(tp.partition, first):
                    log.info(
                        "partition %d: offsets %d..%d hold no reports (transaction markers or "
                        "aborted records); going on at %d",
                        tp.partition,
                        nxt,
                        first - 1,
                        first,
                    )
                    nxt = first
                want = self.order.silent(tp.partition, time.monotonic())
                if want is None:
                    continue
                self.totals["silent"] += 1
                seek[tp] = want
                log.warning(
                    "partition %d: lag %d and nothing delivered for %.0f s although the client "
                    "read past offset %d (faust dropped fetched records); seeking back",
                    tp.partition,
                    end - nxt,
                    time.monotonic() - self._delivered_at.get(tp.partition, 0.0),
                    want,
                )
            if seek:
                await self._seek(seek)

    def _stalled(self, stall: Stall) -> None:
        self.heartbeat.write(self.watch, reason=stall.reason)
        exit_stalled(
            "aggregator",
            f"no report applied for {stall.since_progress_s:.0f} s with lag {stall.lag} "
            f"(QUEUEWATCH_STALL_TIMEOUT_S={self.common.stall_timeout_s:g}): {stall.reason}; "
            f"totals {self.totals}",
        )

    def _stalled_loop(self, reason: str) -> None:
        exit_stalled("aggregator", f"{reason}: the event loop is blocked")

    async def _evict_idle(self) -> None:
        """Seal quiet crossings and free them; unmark crossings whose windows were emitted.

        * A crossing whose partition clock is the dedup horizon past its watermark is sealed
          (``state``): its record shrinks to its counters and offsets and its decoded state
          leaves memory. Only once its windows are emitted, so its final windows go first.
          Sealing is a function of the log, so a record sealed here and one sealed by the
          crossing's next report are the same: a write lost in a crash changes nothing.
        * A crossing emitted and not written since still has the changed mark in its record:
          it is rewritten without it, so a restart does not emit it again.

        The records are written like a batch's, under the emission lock, and waited for.
        """
        if self.app.rebalancing or self._stopping:
            return
        async with self._emit_lock:
            writes: list[Any] = []
            emitted, self._emitted = self._emitted, set()
            for cid in emitted:
                state = self.states.get(cid)
                if state is None or cid in self.changed or state.has_changes():
                    continue
                writes += self._write_quiet(cid, state)
            for key, data in list(self.table.data.items()):
                if not data or key.startswith(b"\x00") or data.startswith(_CHANGED_MARK):
                    continue  # positions; states with unsent windows (emitted first)
                head = _HEAD.search(data, 0, 4096)
                if head is None:
                    continue  # offsets of several partitions (keyed wrongly once): kept
                watermark, partition = int(head[1]), int(head[2])
                if head[3] is not None and int(head[3]) == watermark:
                    continue  # sealed already
                if not self.order.owns(partition):
                    continue
                if self._clock(partition) - watermark < self.config.dedup_horizon:
                    continue
                cid = key.decode()
                if cid in self.changed:
                    continue
                state = self.states.get(cid) or decode_state(data, self.config)
                if state.has_changes():
                    continue
                state.seal_if_idle(self._clock(partition))
                writes += self._write_quiet(cid, state)
                self.states.pop(cid, None)
            try:
                await checkpoint.wait_durable(writes)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # harmless: the log seals them again, the mark re-emits
                log.warning("quiet crossings' records not written (%s); retrying later", exc)

    def _write_quiet(self, cid: str, state: CrossingState) -> list[Any]:
        """Write the record of a crossing with no unsent windows, in its own partition."""
        if len(state.applied) != 1:
            return []
        (partition,) = state.applied
        if not self.order.owns(partition):
            return []
        key = cid.encode()
        data = self._encode(state, False)
        if self.table.data.get(key) == data:
            return []
        self.table.data[key] = data
        return [self.table.send_changelog(partition, key, data, "raw", "raw")]

    async def _log_totals(self) -> None:
        log.info("aggregator totals: %s; crossings cached %d", self.totals, len(self.states))


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


def run(common: CommonSettings, settings: AggregatorSettings) -> None:
    """Run the aggregator worker until SIGTERM/SIGINT."""
    security = KafkaSecurity.from_settings(common)
    partitions = topic_partitions(common.kafka_bootstrap, common.reports_topic, security)
    dlq_max_bytes = max_message_bytes(common.kafka_bootstrap, common.dlq_topic, security)
    aggregator = Aggregator(common, settings, partitions, dlq_max_bytes)
    _tune_gc()
    worker = faust.Worker(
        aggregator.app,
        loglevel=common.log_level,
        quiet=True,
        redirect_stdouts=False,
    )
    worker.execute_from_commandline()
