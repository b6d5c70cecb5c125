"""One chaos soak, start to verdict: what ``make chaos`` and the CI entry run.

The steps:

1. Start the broker and ``queuewatch up --no-simulate`` on it (``soak_pipeline``).
2. Publish the simulator's scenario at a fixed rate (``soak_producer``) while the seeded plan
   (``soak_plan``) kills the aggregator, the sinks and the broker, freezes the sinks and
   scales the aggregator 1 -> 2 -> 1.
3. Stop publishing and wait, bounded, until every consumer group has caught up (lag 0, twice
   in a row). A group still lagging then is a stall: reported as such, with each group's lag
   and how long ago its committed offsets last moved.
4. Read the log back and replay it through the pure core (``soak_oracle``); compare every
   window in ``crossing_windows FINAL``, the raw table and the dead letters with it.
5. Print the verdict (kills survived by kind, reports lost, reports doubled, windows wrong) and
   write it to ``summary.json`` in the work folder. The run passes only if nothing differs.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from queuewatch.aggregator.state import AggregationConfig
from queuewatch.settings import AggregatorSettings
from tests.support import soak_plan as plan_mod
from tests.support.soak_oracle import (
    RawDiff,
    WindowDiff,
    compare_raw,
    compare_windows,
    dead_letter_sources,
    read_topic,
    replay,
)
from tests.support.soak_pipeline import GroupLag, SoakError, SoakPipeline
from tests.support.soak_plan import Action, PlanConfig, describe, make_plan
from tests.support.soak_producer import SoakPublisher

#: Two consecutive checks this far apart with every lag at 0: caught up (the aggregator emits
#: windows a second after it applies reports, so one zero reading is not enough).
SETTLE_CHECK_S = 5.0

WINDOWS_SQL = """
SELECT crossing_id, from_country, to_country, traffic_class, window_size,
       toUnixTimestamp64Milli(window_start) AS window_start,
       toUnixTimestamp64Milli(window_end) AS window_end,
       reports, sources, wait_minutes_min, wait_minutes_max, wait_minutes_avg,
       wait_minutes_p50, wait_minutes_p90, wait_minutes_last, queue_vehicles_max,
       queue_vehicles_avg, queue_vehicles_last, queue_length_km_max, queue_length_km_avg,
       queue_length_km_last, status_last,
       toUnixTimestamp64Milli(last_observed_at) AS last_observed_at, version
FROM {db}.crossing_windows FINAL
"""
RAW_SQL = (
    "SELECT crossing_id, event_id, kafka_partition, kafka_offset FROM {db}.queue_reports FINAL"
)


@dataclass(frozen=True)
class SoakConfig:
    """One soak's parameters (the seed decides the plan and the published stream)."""

    workdir: Path
    kafka_libs: Path
    plan: PlanConfig
    seed: int
    rate: float = 20.0
    invalid_share: float = 0.03
    catch_up_timeout_s: float = 300.0
    #: extra environment of the processors only; the replay reads this process's settings, so
    #: a setting that changes the windows must be set for both (in the soak's environment)
    pipeline_env: dict[str, str] = field(default_factory=dict)


@dataclass
class SoakResult:
    """The verdict and the figures of one soak."""

    seed: int
    minutes: float
    kills: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    published: dict[str, int] = field(default_factory=dict)
    log_messages: int = 0
    valid_reports: int = 0
    resent_in_log: int = 0
    invalid_in_log: int = 0
    late_reports: int = 0
    #: publishing time: the plan's, plus the time its steps blocked (broker starts)
    publish_s: float = 0.0
    stalled: bool = False
    catch_up_s: float | None = None
    lags: list[dict[str, Any]] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)
    broker_restart_s: list[float] = field(default_factory=list)
    windows: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    dead_letters_missing: int = 0
    examples: list[str] = field(default_factory=list)
    #: plan steps that could not be carried out (a processor not running for minutes)
    skipped: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def reports_lost(self) -> int:
        """Valid reports of the log missing from the raw table."""
        return int(self.raw.get("lost", 0))

    @property
    def reports_doubled(self) -> int:
        """Reports twice in the raw table, plus windows that counted a report twice."""
        return int(self.raw.get("doubled", 0)) + int(self.windows.get("over_counted", 0))

    @property
    def windows_wrong(self) -> int:
        """Windows missing, unexpected or different from the replay."""
        return int(self.windows.get("wrong", 0))

    @property
    def ok(self) -> bool:
        """True when the pipeline ended exactly as the log says it must."""
        return (
            self.error is None
            and not self.stalled
            and self.windows_wrong == 0
            and int(self.raw.get("wrong", 1)) == 0
            and self.dead_letters_missing == 0
            and not self.skipped
        )

    def summary(self) -> str:
        """The verdict for a person."""
        kills = ", ".join(f"{kind} {n}" for kind, n in sorted(self.kills.items())) or "none"
        faults = ", ".join(f"{kind} {n}" for kind, n in sorted(self.faults.items())) or "none"
        lines = [
            f"soak seed {self.seed}, {self.minutes:g} min planned, {self.publish_s:.0f} s of "
            "publishing: " + ("PASSED" if self.ok else "FAILED"),
            f"  kills {'survived' if self.ok else 'made'}: {kills}",
            f"  other faults: {faults}",
            f"  restarts by `up`: {self.restarts}",
            f"  published: {self.published}",
            f"  log: {self.log_messages} messages, {self.valid_reports} distinct valid reports, "
            f"{self.resent_in_log} re-sends, {self.invalid_in_log} invalid, "
            f"{self.late_reports} late",
            "  catch-up: "
            + (
                "STALLED"
                if self.stalled
                else (f"{self.catch_up_s:.0f} s" if self.catch_up_s is not None else "n/a")
            )
            + "; lags "
            + ", ".join(f"{g['group']} {g['lag']}" for g in self.lags),
            f"  reports lost: {self.reports_lost}",
            f"  reports doubled: {self.reports_doubled}",
            f"  raw table: {self.raw}",
            f"  windows wrong: {self.windows_wrong} of {self.windows.get('expected', '?')} "
            f"({self.windows})",
            f"  dead letters missing: {self.dead_letters_missing}",
        ]
        if self.skipped:
            lines.append(f"  plan steps skipped: {len(self.skipped)}")
            lines.extend(f"    {step}" for step in self.skipped)
        if self.error:
            lines.append(f"  error: {self.error}")
        lines.extend(f"    {example}" for example in self.examples[:40])
        return "\n".join(lines)


def run_soak(config: SoakConfig, echo: Callable[[str], None] = print) -> SoakResult:
    """Run one soak (see the module docstring); never raises for a pipeline failure."""
    plan = make_plan(config.plan, config.seed)
    result = SoakResult(seed=config.seed, minutes=config.plan.duration_s / 60)
    echo(f"soak seed {config.seed} in {config.workdir}; plan:\n{describe(plan)}")
    pipeline = SoakPipeline(config.workdir, config.kafka_libs, extra_env=config.pipeline_env)
    t_start = time.monotonic()

    def say(text: str) -> None:
        echo(f"[{time.monotonic() - t_start:7.1f} s] {text}")

    try:
        pipeline.start()
        say(f"pipeline ready: broker {pipeline.bootstrap}, home {pipeline.home}")
        publisher = SoakPublisher(
            pipeline.bootstrap, config.seed, config.rate, config.invalid_share
        )
        publisher.start()
        t0 = published_from = time.monotonic()
        try:
            for action in plan:
                pause = t0 + action.at_s - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                else:  # a step blocked (a broker start under load): shift the rest, so a
                    t0 -= pause  # burst's kills stay seconds apart instead of collapsing
                try:
                    say(_act(pipeline, action, result))
                except SoakError as exc:  # e.g. a processor `up` has not restarted yet
                    result.skipped.append(f"{action.at_s:.0f} s {action.what}: {exc}"[:500])
                    say(f"{action.what} skipped: {exc}")
            pause = t0 + config.plan.duration_s - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        finally:
            counts = publisher.stop()
            result.publish_s = round(time.monotonic() - published_from, 1)
            result.published = {
                "valid": counts.valid,
                "invalid": counts.invalid,
                "resent": counts.resent,
                "producer_failures": counts.producer_failures,
            }
            pipeline.thaw_sink()
            if not pipeline.broker_running():
                result.broker_restart_s.append(pipeline.start_broker())
        say(f"publishing stopped: {result.published}; waiting for every group to catch up")
        wait_caught_up(pipeline, config.catch_up_timeout_s, result, say)
        result.restarts = {
            c["name"]: int(c.get("restarts", 0)) for c in pipeline.state()["children"]
        }
        _check(pipeline, result, say)
    except Exception as exc:  # the soak's machinery: reported, never hidden
        result.error = f"{type(exc).__name__}: {exc}"
        say(f"soak error: {result.error}")
    finally:
        pipeline.stop()
        (config.workdir / "summary.json").write_text(
            json.dumps(
                {**asdict(result), "ok": result.ok, "plan": [asdict(a) for a in plan]},
                indent=2,
                default=str,
            )
        )
    echo(result.summary())
    if not result.ok:
        echo("logs: " + ", ".join(str(p) for p in pipeline.logs()))
    return result


def _act(pipeline: SoakPipeline, action: Action, result: SoakResult) -> str:
    """Carry out one step of the plan; what happened, for the log."""
    what = action.what
    kills = Counter(result.kills)
    faults = Counter(result.faults)
    text: str
    if what in (plan_mod.KILL_AGGREGATOR, plan_mod.KILL_AGGREGATOR_AGAIN):
        text = f"{what}: SIGKILL pid {pipeline.kill_child('aggregator')}"
    elif what == plan_mod.KILL_SINK:
        text = f"{what}: SIGKILL pid {pipeline.kill_child('sink-all')}"
    elif what == plan_mod.BURST:
        agg = pipeline.kill_child("aggregator")
        sink = pipeline.kill_child("sink-all")
        text = f"{what}: SIGKILL aggregator pid {agg} and sink-all pid {sink} together"
    elif what == plan_mod.KILL_BROKER:
        text = f"{what}: SIGKILL pid {pipeline.kill_broker()}"
    elif what == plan_mod.START_BROKER:
        took = pipeline.start_broker()
        result.broker_restart_s.append(round(took, 1))
        text = f"{what}: answering after {took:.1f} s"
    elif what == plan_mod.FREEZE_SINK:
        faults["sink outage (SIGSTOP)"] += 1
        text = f"{what}: SIGSTOP sink-all pid {pipeline.freeze_sink()} {action.detail}"
    elif what == plan_mod.THAW_SINK:
        text = f"{what}: " + ("SIGCONT" if pipeline.thaw_sink() else "it was killed meanwhile")
    elif what == plan_mod.SCALE_UP:
        faults["scale 1 -> 2 -> 1"] += 1
        text = f"{what}: second aggregator worker pid {pipeline.scale_up()} {action.detail}"
    elif what in (plan_mod.SCALE_DOWN, plan_mod.SCALE_DOWN_KILL):
        pid, status = pipeline.scale_down(kill=what == plan_mod.SCALE_DOWN_KILL)
        text = f"{what}: worker pid {pid} exited with {status}"
    else:
        raise ValueError(f"unknown action {what!r}")
    for kind in plan_mod.KILLS.get(what, ()):
        kills[kind] += 1
    result.kills = dict(kills)
    result.faults = dict(faults)
    return text


class LagSource(Protocol):
    """What the catch-up wait needs of a pipeline."""

    def lags(self) -> list[GroupLag]:
        """Each processor group's lag now."""
        ...


def wait_caught_up(
    pipeline: LagSource,
    timeout_s: float,
    result: SoakResult,
    say: Callable[[str], None],
    check_every_s: float = SETTLE_CHECK_S,
) -> None:
    """Wait until every group's lag is 0 twice in a row; a timeout marks a stall."""
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    zero_readings = 0
    last: list[GroupLag] = []
    moved_at: dict[str, float] = {}
    committed: dict[str, dict[int, int]] = {}
    next_note = t0 + 30
    while time.monotonic() < deadline:
        try:
            last = pipeline.lags()
        except Exception as exc:  # a broker that just restarted: ask again
            say(f"lag not readable yet ({type(exc).__name__}: {exc})")
            time.sleep(2)
            continue
        now = time.monotonic()
        for g in last:
            if committed.get(g.group) != g.committed:
                committed[g.group] = g.committed
                moved_at[g.group] = now
        if all(g.lag == 0 for g in last):
            zero_readings += 1
            if zero_readings >= 2:
                result.catch_up_s = round(now - t0, 1)
                result.lags = [{"group": g.group, "lag": 0} for g in last]
                say(f"caught up after {result.catch_up_s} s")
                return
        else:
            zero_readings = 0
        if now >= next_note:
            next_note = now + 30
            say("still catching up: " + ", ".join(f"{g.group} lag {g.lag}" for g in last))
        time.sleep(check_every_s)
    result.stalled = True
    now = time.monotonic()
    result.lags = [
        {
            "group": g.group,
            "topic": g.topic,
            "lag": g.lag,
            "last_progress_s_ago": round(now - moved_at.get(g.group, t0), 1),
        }
        for g in last
    ]
    say(f"STALLED: not caught up within {timeout_s:.0f} s of publishing's end: {result.lags}")


def _check(pipeline: SoakPipeline, result: SoakResult, say: Callable[[str], None]) -> None:
    """Compare ClickHouse and the DLQ with an offline replay of the log."""
    s = pipeline.settings
    agg = AggregatorSettings()
    config = AggregationConfig.from_spec(
        agg.aggregator_windows, agg.aggregator_grace, agg.aggregator_dedup_horizon
    )
    log = read_topic(pipeline.bootstrap, s.reports_topic)
    expected = replay(log, config)
    result.log_messages = expected.messages
    result.valid_reports = len(expected.reports)
    result.resent_in_log = expected.resent
    result.invalid_in_log = len(expected.invalid)
    result.late_reports = expected.late
    say(
        f"replayed {expected.messages} messages: {len(expected.windows)} windows, "
        f"{len(expected.reports)} reports, {len(expected.invalid)} invalid"
    )
    windows: WindowDiff = compare_windows(
        expected.windows, pipeline.query(WINDOWS_SQL.format(db=s.clickhouse_database))
    )
    raw: RawDiff = compare_raw(
        expected.reports, pipeline.query(RAW_SQL.format(db=s.clickhouse_database))
    )
    letters = dead_letter_sources(read_topic(pipeline.bootstrap, s.dlq_topic))
    result.dead_letters_missing = len(expected.invalid - letters)
    result.windows = {
        "expected": windows.expected,
        "got": windows.got,
        "wrong": windows.wrong,
        "missing": windows.missing,
        "unexpected": windows.unexpected,
        "different": windows.different,
        "over_counted": windows.over_counted,
    }
    result.raw = {
        "expected": raw.expected,
        "got": raw.got,
        "wrong": raw.wrong,
        "lost": raw.lost,
        "doubled": raw.doubled,
        "unexpected": raw.unexpected,
        "wrong_copy": raw.wrong_copy,
    }
    result.examples = windows.examples + raw.examples
    for position in sorted(expected.invalid - letters)[:10]:
        result.examples.append(f"no dead letter for the invalid message at {position}")
