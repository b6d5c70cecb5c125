"""What the aggregator emits, and when: the emission policy.

* A crossing whose batch changed a window is *changed*; every flush interval the changed
  crossings' changed windows are taken (:meth:`CrossingState.take_changed`, newest state) and
  sent, one record batch per partition (:mod:`queuewatch.aggregator.emit`), acknowledged
  before the crossings are forgotten. A failure exits (the states still mark them, so a
  restart re-emits them with the same versions).
* A window that closed in a batch (a *snapshot*, final) is emitted as soon as the batch is
  durable (:meth:`Emission.emit_closed`), not at the flush: it can change no more, and a
  head that no longer holds it is small again.
* After a (re)start or rebalance, states whose records carry the changed mark
  (:mod:`queuewatch.aggregator.storage`) were never emitted: they are found and emitted.
* A crossing emitted and not written since still has the mark in its record; it is rewritten
  without it (so a restart does not emit it again), and a crossing quiet for the dedup
  horizon is sealed and leaves memory: :meth:`Emission.quiet_writes`.

Emission and a batch's writes hold one lock (the caller's), so a state record on the broker
always still marks every window whose emission is not yet durable (see ``checkpoint``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from queuewatch.aggregator import checkpoint
from queuewatch.aggregator.emit import WindowBatches
from queuewatch.aggregator.state import CrossingState
from queuewatch.aggregator.storage import StateStore

log = logging.getLogger(__name__)


class Emission:
    """The changed crossings, and their emission to the windows topic."""

    def __init__(self, topic: str, encode_window: Callable[[dict[str, Any]], bytes]) -> None:
        self.topic = topic
        self.encode_window = encode_window
        #: crossings with windows not emitted yet
        self.changed: set[str] = set()
        #: crossings emitted whose record still carries the changed mark (see quiet_writes)
        self.emitted: set[str] = set()
        #: the table may hold marked states not in memory (a start or a rebalance)
        self.scan_needed = True

    def scan_unsent(
        self, store: StateStore, states: dict[str, CrossingState], partitions: set[int]
    ) -> None:
        """After a (re)start or rebalance: find states whose windows were never emitted."""
        for state in store.unsent(partitions, skip=states):
            states[state.crossing_id] = state
            self.changed.add(state.crossing_id)

    async def emit(
        self, producer: Any, states: dict[str, CrossingState], stopping: Callable[[], bool]
    ) -> None:
        """Emit every changed window once, newest state, keyed by crossing."""
        pending, self.changed = self.changed, set()
        now = int(time.time() * 1000)
        try:
            # One record batch per partition (see emit), acknowledged before we return.
            out = await WindowBatches.for_app(producer, self.topic)
            for cid in pending:
                state = states.get(cid)
                if state is None:
                    continue
                key = cid.encode()
                for row in state.take_changed():
                    row["updated_at"] = now
                    await out.add(key, self.encode_window(row))
            await out.finish()
            self.emitted.update(pending)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if stopping():  # producer closing under us: the states still mark them
                log.warning("windows not emitted at shutdown (%s); re-emitted on restart", exc)
                return
            checkpoint.die_unsafe("emitting windows", exc)

    async def emit_closed(
        self,
        producer: Any,
        states: dict[str, CrossingState],
        crossings: list[str],
        stopping: Callable[[], bool],
    ) -> None:
        """Emit the windows of ``crossings`` that closed in the batch just made durable.

        Closed windows are final, so sending them now instead of at the next flush costs no
        message, and the next heads need not carry them (they are the bulk of a replay's
        changelog: every head written before the flush held them again).
        """
        now = int(time.time() * 1000)
        try:
            out = await WindowBatches.for_app(producer, self.topic)
            for cid in crossings:
                state = states.get(cid)
                if state is None:
                    continue
                key = cid.encode()
                for row in state.take_snapshots():
                    row["updated_at"] = now
                    await out.add(key, self.encode_window(row))
            await out.finish()
            self.emitted.update(crossings)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if stopping():  # the heads still hold them: re-emitted on restart
                log.warning("windows not emitted at shutdown (%s); re-emitted on restart", exc)
                return
            checkpoint.die_unsafe("emitting closed windows", exc)

    def quiet_writes(
        self,
        store: StateStore,
        states: dict[str, CrossingState],
        owns: Callable[[int], bool],
        clock_of: Callable[[int], int],
    ) -> None:
        """Seal quiet crossings and free them; unmark crossings whose windows were emitted.

        * A crossing whose partition clock is the dedup horizon past its watermark is sealed
          (``state``): its record shrinks to its counters and offsets and its decoded state
          leaves memory. Only once its windows are emitted, so its final windows go first.
          Sealing is a function of the log, so a record sealed here and one sealed by the
          crossing's next report are the same: a write lost in a crash changes nothing.
        * A crossing emitted and not written since still has the changed mark in its record:
          it is rewritten without it, so a restart does not emit it again.

        The records go to the store's outbox, for the caller to send and wait for under the
        emission lock.
        """
        emitted, self.emitted = self.emitted, set()
        for cid in emitted:
            state = states.get(cid)
            if state is None or cid in self.changed or state.has_changes():
                continue
            self._write_quiet(store, state, owns)
        for cid, data, partition in store.quiet(clock_of, owns):
            if cid in self.changed:
                continue
            state = states.get(cid) or store.decode(cid, data)
            if state.has_changes():
                continue
            state.seal_if_idle(clock_of(partition))
            self._write_quiet(store, state, owns)
            states.pop(cid, None)

    @staticmethod
    def _write_quiet(store: StateStore, state: CrossingState, owns: Callable[[int], bool]) -> None:
        """Write the record of a crossing with no unsent windows, in its own partition."""
        if len(state.applied) != 1:
            return
        (partition,) = state.applied
        if owns(partition):
            store.write_if_changed(partition, state)
