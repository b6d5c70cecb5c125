"""The durability protocol: nothing is acknowledged before the write it covers is durable.

faust commits a source offset once its message is *acked*, on a timer (and on rebalance and
on stop). Its own ordering is not enough for us (checked in faust-streaming 0.15.3):

* ``Consumer._commit_offsets`` does call ``producer.flush()`` before committing, but
  ``ProducerBuffer.flush()`` gives up as soon as one message takes more than 0.1 s to leave
  the buffer (``flush_atmost`` returns on ``asyncio.TimeoutError``), so changelog writes still
  in faust's buffer are not guaranteed to be on the broker when the offset is committed;
* ``Stream.take_events`` acks a yielded batch in a ``finally``: also when the batch was never
  processed (the consuming task was cancelled, or raised, and the generator is closed).

So per batch the aggregator does, in this order:

1. take the batch and add one reference to every message (``Message.incref``): faust's own
   ack of the batch can then never be the *final* ack on its own;
2. decode, validate and apply every report to the crossings' states (pure, no awaits);
3. write the new state of every touched crossing to the table's changelog (the state holds
   the last applied offset per partition, so state and position travel in one record), and
   every dead letter to the DLQ;
4. wait until the broker has acknowledged every one of those writes (acks=all);
5. only then drop the extra reference (:func:`release`): the messages become committable.

A failure in 2-4 exits the process at once (:data:`EXIT_UNSAFE`) so that no later commit can
cover the batch; the next start replays it from the last committed offset, and replayed
positions are skipped exactly (see :mod:`queuewatch.aggregator.state`).

Windows are emitted separately (at most once per flush interval); a changed window is marked
in the state itself until emitted, so a crash between 4 and the emission re-emits it after
the restart, with the same version. Emission and steps 2-4 hold one lock, so no state record
is written between taking a window's rows and their delivery: a record on the broker always
still marks every window whose emission is not yet durable.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Sequence
from typing import Any

log = logging.getLogger(__name__)

#: Exit status when a write could not be made durable (EX_SOFTWARE); a supervisor restarts us.
EXIT_UNSAFE = 70


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
