"""The chaos soak's timeline: which fault happens when, drawn from a seed (pure, no I/O).

A plan is a sorted list of :class:`Action`. Every fault that lasts (a broker that is down, a
frozen sink, a second aggregator worker) is two actions, its start and its end, so the runner
only ever does one thing at a time in order, and a plan printed with its seed can be replayed.

The faults, per :class:`PlanConfig`:

* ``kill aggregator`` / ``kill sink``: SIGKILL of one processor (``queuewatch up`` restarts it);
* ``kill broker`` then ``start broker`` a few seconds later: SIGKILL of the Kafka broker;
* ``burst``: the aggregator and the sinks killed together, then the aggregator again seconds
  later (what a supervisor restarting two processes at once, or an OOM killer, does);
* ``freeze sink`` / ``thaw sink``: SIGSTOP then SIGCONT of the sink process, a ClickHouse write
  outage as the pipeline sees it (see ``soak_pipeline``);
* ``scale up`` / ``scale down``: a second aggregator worker joins the group, later leaves it,
  by SIGTERM or (every second cycle) by SIGKILL.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

KILL_AGGREGATOR = "kill aggregator"
KILL_SINK = "kill sink"
KILL_BROKER = "kill broker"
START_BROKER = "start broker"
BURST = "burst"  # aggregator and sink together
KILL_AGGREGATOR_AGAIN = "kill aggregator again"  # the second half of a burst
FREEZE_SINK = "freeze sink"
THAW_SINK = "thaw sink"
SCALE_UP = "scale up"
SCALE_DOWN = "scale down"
SCALE_DOWN_KILL = "scale down by SIGKILL"

#: Which actions are kills, and of what, for the survival count.
KILLS = {
    KILL_AGGREGATOR: ("aggregator",),
    KILL_SINK: ("sink",),
    KILL_BROKER: ("broker",),
    BURST: ("aggregator", "sink"),
    KILL_AGGREGATOR_AGAIN: ("aggregator",),
    SCALE_DOWN_KILL: ("aggregator",),
}


@dataclass(frozen=True)
class PlanConfig:
    """How many faults of each kind a soak of ``duration_s`` seconds gets."""

    duration_s: float
    aggregator_kills: int
    sink_kills: int
    broker_kills: int
    bursts: int
    outages: int
    scale_cycles: int
    outage_s: tuple[float, float] = (20.0, 60.0)
    broker_down_s: tuple[float, float] = (3.0, 10.0)
    #: the restarted aggregator is killed again anywhere from before it starts (1-2 s of
    #: restart pause) to its first rebalance and recovery (5-15 s on a loaded machine)
    burst_gap_s: tuple[float, float] = (2.0, 12.0)
    second_worker_s: tuple[float, float] = (25.0, 60.0)
    #: Quiet time at the start (the pipeline is warming up) and at the end (every fault is
    #: over before publishing stops, so the catch-up is measured on a whole pipeline).
    lead_in_s: float = 15.0
    lead_out_s: float = 10.0

    @classmethod
    def for_minutes(cls, minutes: float) -> PlanConfig:
        """The full soak's mix: per 10 minutes about 6 kills of each processor, 2 broker kills,
        2 bursts, one outage and one scale cycle; never less than one of each."""
        duration = minutes * 60.0
        per = duration / 600.0
        return cls(
            duration_s=duration,
            aggregator_kills=max(1, round(6 * per)),
            sink_kills=max(1, round(6 * per)),
            broker_kills=max(1, round(2 * per)),
            bursts=max(1, round(2 * per)),
            outages=max(1, round(per)),
            scale_cycles=max(1, round(per)),
        )

    @classmethod
    def ci(cls, duration_s: float = 150.0) -> PlanConfig:
        """The CI-sized soak: two kills of each processor, one broker kill, one burst, a
        20-30 s outage and one scale cycle in about 2.5 minutes."""
        return cls(
            duration_s=duration_s,
            aggregator_kills=2,
            sink_kills=2,
            broker_kills=1,
            bursts=1,
            outages=1,
            scale_cycles=1,
            outage_s=(20.0, 30.0),
            broker_down_s=(3.0, 6.0),
            burst_gap_s=(3.0, 10.0),
            second_worker_s=(25.0, 35.0),
            lead_in_s=10.0,
            lead_out_s=10.0,
        )


@dataclass(frozen=True, order=True)
class Action:
    """One step of the plan, ``at_s`` seconds after publishing started."""

    at_s: float
    what: str
    #: the step that ends this fault (thaw for freeze, start for a broker kill), if any
    detail: str = ""


def make_plan(config: PlanConfig, seed: int) -> list[Action]:
    """The timeline for ``config``: faults spread over the run in a seeded random order.

    The run (less lead-in and lead-out) is cut into one slot per fault; each fault starts at
    a random point of the first half of its slot, so faults never pile up on one moment but
    their spacing still varies. A fault's end comes within its own slot or later, never after
    the lead-out begins.
    """
    rng = random.Random(seed)
    kinds = (
        [KILL_AGGREGATOR] * config.aggregator_kills
        + [KILL_SINK] * config.sink_kills
        + [KILL_BROKER] * config.broker_kills
        + [BURST] * config.bursts
        + [FREEZE_SINK] * config.outages
        + [SCALE_UP] * config.scale_cycles
    )
    rng.shuffle(kinds)
    start = config.lead_in_s
    end = config.duration_s - config.lead_out_s
    slot = (end - start) / len(kinds)
    actions: list[Action] = []
    scale_cycle = 0
    for index, kind in enumerate(kinds):
        at = start + index * slot + rng.uniform(0.0, slot / 2)
        if kind == KILL_BROKER:
            down = rng.uniform(*config.broker_down_s)
            actions.append(Action(at, KILL_BROKER, f"down {down:.0f} s"))
            actions.append(Action(min(at + down, end), START_BROKER))
        elif kind == BURST:
            gap = rng.uniform(*config.burst_gap_s)
            actions.append(Action(at, BURST, f"aggregator again after {gap:.1f} s"))
            actions.append(Action(min(at + gap, end), KILL_AGGREGATOR_AGAIN))
        elif kind == FREEZE_SINK:
            length = rng.uniform(*config.outage_s)
            actions.append(Action(at, FREEZE_SINK, f"for {length:.0f} s"))
            actions.append(Action(min(at + length, end), THAW_SINK))
        elif kind == SCALE_UP:
            length = rng.uniform(*config.second_worker_s)
            leave = SCALE_DOWN_KILL if scale_cycle % 2 else SCALE_DOWN
            scale_cycle += 1
            actions.append(Action(at, SCALE_UP, f"for {length:.0f} s"))
            actions.append(Action(min(at + length, end), leave))
        else:
            actions.append(Action(at, kind))
    return sorted(actions)


def describe(plan: list[Action]) -> str:
    """The plan as lines for a person (printed with the seed before the run)."""
    return "\n".join(
        f"  {a.at_s:7.1f} s  {a.what}" + (f" ({a.detail})" if a.detail else "") for a in plan
    )
