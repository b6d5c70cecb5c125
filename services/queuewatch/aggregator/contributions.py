"""What an accepted report contributes downstream: one row of ``crossing_contributions``.

Why: a report lies in every hopping window that contains it (48 with the default families),
so emitting windows costs up to 48 rows per report. A contribution is the report as the
state counted it: its ``seq`` in the crossing's log order and the two bounds the lateness
rule fixed when it was accepted. Every window is then a pure function of the contributions
(``clickhouse/assembly`` computes it in SQL), and one row per report is enough.
"""

from __future__ import annotations

from typing import Any

from queuewatch.aggregator.sketch import wait_bin
from queuewatch.aggregator.state import Contribution, CrossingState, Outcome

#: ``crossing_contributions``' columns, in table order (migration 0006).
COLUMNS = (
    "crossing_id",
    "from_country",
    "to_country",
    "traffic_class",
    "observed_at",
    "seq",
    "event_id",
    "end_after",
    "start_after",
    "source",
    "source_type",
    "wait_minutes",
    "wait_bin",
    "queue_vehicles",
    "queue_length_km",
    "status",
    "updated_at",
)


def contribution_row(
    crossing_id: str,
    contribution: Contribution,
    watermark_before: int,
    sealed: int,
    grace: int,
    updated_at: int,
) -> dict[str, Any]:
    """The row of one accepted report (``CrossingState.added``'s newest entry).

    ``watermark_before`` and ``sealed`` are the state's before it applied the report: a
    window counts it when ``window_end > watermark_before - grace`` and
    ``window_start > sealed``, which is the rule ``CrossingState.apply`` used.
    """
    (event_id, _, seq, t, lane, _, source, wait, vehicles, length, status, source_type) = (
        contribution
    )
    return {
        "crossing_id": crossing_id,
        "from_country": lane[0],
        "to_country": lane[1],
        "traffic_class": lane[2],
        "observed_at": t,
        "seq": seq,
        "event_id": event_id,
        "end_after": watermark_before - grace,
        "start_after": sealed,
        "source": source,
        "source_type": source_type,
        "wait_minutes": wait,
        "wait_bin": wait_bin(wait),
        "queue_vehicles": vehicles,
        "queue_length_km": length,
        "status": status,
        "updated_at": updated_at,
    }


def apply_report(
    state: CrossingState,
    record: dict[str, Any],
    partition: int,
    offset: int,
    clock: int,
    contribute: bool,
) -> tuple[Outcome, dict[str, Any] | None]:
    """One report as the agent applies it, and its contribution row when it counts.

    ``clock`` is the partition's newest ``observed_at`` before this report: a crossing idle a
    dedup horizon behind it is sealed first (a replayed offset changes nothing, so it seals
    nothing either). The row (``updated_at`` 0, set when it is sent) is made only with
    ``contribute`` (output ``contributions``) and only for a report the state counted.
    """
    if offset > state.applied.get(partition, -1):
        state.seal_if_idle(clock)
    wm0, sealed = state.watermark, state.sealed
    outcome = state.apply(record, partition, offset)
    if contribute and (outcome is Outcome.ACCEPTED or outcome is Outcome.LATE):
        row = contribution_row(
            state.crossing_id, state.added[-1], wm0, sealed, state.config.grace, 0
        )
        return outcome, row
    return outcome, None
