"""The last resort for a state record that would exceed what a changelog message may hold.

By design no realistic input gets there: a crossing's head record (:mod:`.storage`) holds its
counters and the marks and snapshots of windows not emitted yet, while event ids and what
reports put into panes are records of their own. But one batch can still change windows over
a long span of event time (a backfill), and every one of them waits in the head. Raising
would crash the worker and replay the same batch for ever; so the crossing keeps the longest
prefix of the batch's reports whose record fits, and the rest of its reports in the batch
become dead letters (``state_too_large``).

The prefix is found by bisection over its length, each step rebuilding the state from the
last durable record: a few dozen applications of one batch, only on this rare path. A record
usually grows with every report, and then it is the longest prefix that fits; in any case the
record written fits. Which reports are refused depends on where the batch was cut, so after
a crash a replay can refuse a different few: they are dead letters either way, never lost in
silence (the letter names the partition and offset).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from queuewatch.aggregator.state import CrossingState

#: Dead-letter code of a report refused because its crossing's state would not fit.
STATE_TOO_LARGE = "state_too_large"


@dataclass(frozen=True, slots=True)
class Step:
    """One report applied to a crossing, with its partition clock before it (for sealing)."""

    record: dict[str, Any]
    partition: int
    offset: int
    clock: int


def apply_steps(state: CrossingState, steps: Sequence[Step]) -> CrossingState:
    """Apply ``steps`` as the app does (seal if idle, then apply); returns ``state``."""
    for step in steps:
        if step.offset > state.applied.get(step.partition, -1):
            state.seal_if_idle(step.clock)
        state.apply(step.record, step.partition, step.offset)
    return state


def fit_prefix(
    restore: Callable[[], CrossingState],
    steps: Sequence[Step],
    size: Callable[[CrossingState], int],
    limit: int,
) -> tuple[CrossingState, int]:
    """The state after the longest prefix of ``steps`` found whose record is at most ``limit``.

    ``restore`` gives a fresh copy of the state before the steps (which must itself fit);
    returns that state and the number of steps it holds.
    """
    lo, hi = 0, len(steps)  # the prefix of length lo fits; hi is the largest still possible
    best = restore()
    while lo < hi:
        mid = (lo + hi + 1) // 2
        state = apply_steps(restore(), steps[:mid])
        if size(state) <= limit:
            lo, best = mid, state
        else:
            hi = mid - 1
    return best, lo
