"""The durability protocol: nothing is acknowledged before the write it covers is durable.

faust commits a source offset once its message is *acked*, on a timer (and on rebalance and
on stop). Its own ordering is not enough for us (checked in faust-streaming 0.15.3):

* ``Consumer._commit_offsets`` does call ``producer.flush()`` before committing, but
  ``ProducerBuffer.flush()`` gives up as soon as one message takes more than 0.1 s to leave
  the buffer (``flush_atmost`` returns on ``asyncio.TimeoutError``), so changelog writes still
  in faust's buffer are not guaranteed to be on the broker when the offset is committed;
* ``Stream.take_events`` acks a yielded batch in a ``finally``: also when the batch was never
  processed (the consuming task was cancelled, or raised, and the generator is closed);
* around a rebalance the consumer can drop fetched messages and re-read from the committed
  offset, so a partition's reports may not reach the agent strictly in log order, and the
  committed offset can pass reports that were never applied. Per-crossing replay detection
  then skips reports it never saw: the SIGKILL chaos test lost the newest reports of one
  crossing after two kills in 3 of 15 runs before this protocol.

So faust's committed offset is only a hint (for lag monitoring); where to resume is ours:

* every batch's changelog writes carry, for each partition it read, a **position record**
  (key ``\0position/<partition>``, same changelog partition as the partition's states): the
  first offset not durably applied. It is the position of the *previous* durable batch, so it
  never reaches the broker before the writes it covers (an idle worker writes it from the
  flush timer);
* after every table recovery, each newly assigned partition starts at its position record
  (else at its first offset), and the agent applies each partition's offsets strictly in
  order: a lower offset is a redelivery (skipped), a higher one is a hole (the partition is
  sought back to the missing offset, again every second until it arrives; see
  :mod:`queuewatch.aggregator.ordering`). In 45 chaos runs since, all green, holes appeared in
  3 and were repaired each time.

Per batch the aggregator does, in this order:

1. take the batch and add one reference to every message (``Message.incref``): faust's own
   ack of the batch can then never be the *final* ack on its own; keep only the partitions'
   next offsets (above);
2. decode, validate and apply every report to the crossings' states (pure, no awaits);
3. write what the batch changed in every touched crossing to the table's changelog (its
   accepted reports' records, then its head, which holds the last applied offset per
   partition: see :mod:`queuewatch.aggregator.storage` for why a crash between them changes
   nothing), every dead letter to the DLQ, the previous batch's position records, and the
   deletes the previous batch's heads made safe;
4. wait until the broker has acknowledged every one of those writes (acks=all);
5. only then drop the extra reference (:func:`release`): the messages become committable.

A failure in 2-4 exits the process at once (:data:`EXIT_UNSAFE`); the next start replays from
the position record, and reports a crossing's state already holds are skipped exactly (see
:mod:`queuewatch.aggregator.state`). Dead letters between the position and the crash can be
written twice (at least once; their headers name the source offset).

Windows are emitted separately (at most once per flush interval); a changed window is marked
in the state itself until emitted, so a crash between 4 and the emission re-emits it after
the restart, with the same version. Emission and steps 2-4 hold one lock, so no state record
is written between taking a window's rows and their delivery: a record on the broker always
still marks every window whose emission is not yet durable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Sequence
from typing import Any

from queuewatch.aggregator.state_codec import StateFormatError

log = logging.getLogger(__name__)

#: Exit status when a write could not be made durable (EX_SOFTWARE); a supervisor restarts us.
EXIT_UNSAFE = 70
#: Format version of a position record.
POSITION_FORMAT = 1


def encode_position(next_offset: int, clock: int | None = None) -> bytes:
    """A position record: the first offset of the partition not durably applied.

    ``clock`` is the partition's event-time clock at that offset (the newest ``observed_at``
    of the reports before it; see sealing in :mod:`queuewatch.aggregator.state`), so a
    restart resumes the clock where it resumes the log.
    """
    if clock is None:
        return b'{"f":%d,"next":%d}' % (POSITION_FORMAT, next_offset)
    return b'{"f":%d,"next":%d,"clock":%d}' % (POSITION_FORMAT, next_offset, clock)


def decode_clock(data: bytes) -> int | None:
    """The partition clock in a position record, None if it has none (an older record)."""
    try:
        clock = json.loads(data).get("clock")
    except (ValueError, AttributeError):
        return None
    return int(clock) if isinstance(clock, int) else None


def decode_position(data: bytes) -> int:
    """The offset in a position record written by :func:`encode_position`."""
    try:
        obj = json.loads(data)
        if obj["f"] != POSITION_FORMAT:
            raise ValueError(f"format {obj['f']!r}")
        return int(obj["next"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StateFormatError(
            f"position record {data[:80]!r} is unreadable ({exc}); run the matching release "
            "or start a new aggregator group (QUEUEWATCH_AGGREGATOR_GROUP)"
        ) from exc


def hold(events: Sequence[Any]) -> None:
    """Step 1: keep faust from treating these messages as done until :func:`release`."""
    for event in events:
        event.message.incref()


async def release(stream: Any, events: Sequence[Any]) -> None:
    """Step 5: the batch's writes are durable; give back the extra reference."""
    for event in events:
        await stream.ack(event)


async def wait_durable(writes: Sequence[Awaitable[Any]]) -> None:
    """Step 4: wait for every write; any failure means the batch is not safe to commit."""
    if writes:
        await asyncio.gather(*writes)


def die_unsafe(what: str, exc: BaseException) -> None:
    """Exit now, before faust can commit offsets the failed writes were meant to cover."""
    log.critical(
        "%s failed (%s: %s); exiting so the batch is replayed on restart",
        what,
        type(exc).__name__,
        exc,
    )
    logging.shutdown()
    os._exit(EXIT_UNSAFE)
