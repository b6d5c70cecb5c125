"""How sure we are: one lane's sources weighed into a consensus, a confidence and its reasons.

Why: in September 2022 the sources disagreed at the same crossing in the same hour (a customs
count of cars, a journalist's miles, a traveller's phone call), and the last value of whoever
spoke last is a poor answer. Everything here is a pure function of a window's *readings*: per
source name, its type and the latest value it gave of each metric. Readings merge like every
other pane component (the later ``(observed_at, seq)`` wins, per metric), so a window's
consensus is the same whatever the partitions, workers, restarts or the order in which equal-time
reports of different sources arrived.

The rule (documented in ``docs/consumers.md``; weights and thresholds are settings):

* **Weight** of a source's value: its type's credibility, halved every ``half_life`` of age and
  linear in between (``credibility * 2 ** -k * (1 - f / 2)`` for an age of ``k + f`` half-lives,
  ``0 <= f < 1``), where the age is event time, from that value's ``observed_at`` to the
  window's newest report (never the wall clock: the log alone decides). Only exactly rounded
  operations (``+ - * /`` and a power of two), so ClickHouse computes the same weights to the
  last bit when it assembles windows from the log (``clickhouse/assembly``); ``0.5 ** x``
  differed from ClickHouse's ``pow`` in 0.5 % of ages, enough to move a median on a tie.
* **Consensus** of a metric: the weighted median of the latest per-source values (values sorted,
  ties by source name; the first value whose running weight reaches half the total). One wild
  value moves it at most to its neighbour, so a crowd report far off the official figure cannot
  drag the consensus away from the officials.
* **Spread**: the lowest and highest latest per-source waits, and ``(max - min) / max``.
* **Confidence** (event time only; ``crossing_status`` lowers it to ``low`` when the lane has
  gone stale by the wall clock):
  - ``high``: at least ``high_min_sources`` sources gave a value within ``recent`` of the
    newest report, one of them official (official feed or statement, or a sensor), and their
    waits agree within ``high_max_spread``;
  - ``low``: no value at all, a single source that is neither official nor a sensor, or
    sources that disagree by more than ``disagree_spread``;
  Agreement is judged among the *weighty* readings: those whose type's credibility is at
  least ``weighty_share`` of the most credible one's, so a lone crowd report far from three agreeing
  official figures neither moves the consensus nor makes the officials look unsure (it still
  shows in the spread). With only crowd reports, every one of them counts.
  - ``medium``: anything else.
  The reasons are data: short sentences saying which rule decided and with what figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from math import ldexp
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from queuewatch.settings import AggregatorSettings

#: ``(observed_at, seq, value)``, as in ``pane``: the larger pair is the later report.
Last = tuple[int, int, Any]

#: Source types the contract knows (``queue_report.avsc``, enum ``SourceType``).
SOURCE_TYPES = (
    "official_feed",
    "official_statement",
    "sensor",
    "satellite",
    "journalist",
    "crowd",
)
#: Types that count as official for the confidence rule (a sensor measures, it does not guess).
OFFICIAL_TYPES = frozenset({"official_feed", "official_statement", "sensor"})

#: Index of each part of a reading: [type, order, wait, vehicles, length_km] (see add_reading).
_TYPE, _ORDER, _WAIT, _VEHICLES, _LENGTH = range(5)

#: One source's latest values in a window: its type (from its latest report), the
#: ``(observed_at, seq)`` of that report, and per metric the latest ``Last`` that had one.
Reading = list[Any]
Readings = dict[str, Reading]


def add_reading(
    readings: Readings,
    name: str,
    source_type: str,
    observed_at: int,
    seq: int,
    wait: int | None,
    vehicles: int | None,
    length_km: float | None,
) -> None:
    """Fold one accepted report of source ``name`` into ``readings`` (in place).

    A source's later report replaces its earlier one metric by metric: a value it leaves out
    (null: unknown, never zero) keeps the one it gave before within the window.
    """
    order = (observed_at, seq)
    r = readings.get(name)
    if r is None:
        readings[name] = [
            source_type,
            order,
            (observed_at, seq, wait) if wait is not None else None,
            (observed_at, seq, vehicles) if vehicles is not None else None,
            (observed_at, seq, length_km) if length_km is not None else None,
        ]
        return
    if order > r[_ORDER]:
        r[_TYPE] = source_type
        r[_ORDER] = order
    for i, value in ((_WAIT, wait), (_VEHICLES, vehicles), (_LENGTH, length_km)):
        if value is not None and (r[i] is None or order > (r[i][0], r[i][1])):
            r[i] = (observed_at, seq, value)


def _later(a: Last | None, b: Last | None) -> Last | None:
    if a is None:
        return b
    if b is None:
        return a
    return b if (b[0], b[1]) > (a[0], a[1]) else a


def merge_readings(into: Readings, other: Mapping[str, Reading]) -> None:
    """Fold ``other``'s readings into ``into`` (commutative and associative)."""
    for name, o in other.items():
        r = into.get(name)
        if r is None:
            into[name] = list(o)
            continue
        if o[_ORDER] > r[_ORDER]:
            r[_TYPE] = o[_TYPE]
            r[_ORDER] = o[_ORDER]
        for i in (_WAIT, _VEHICLES, _LENGTH):
            r[i] = _later(r[i], o[i])


def readings_to_obj(readings: Readings) -> list[Any]:
    """JSON-able and canonical: sorted by source name, tuples as lists."""
    return [
        [name, r[_TYPE], list(r[_ORDER])] + [list(x) if x is not None else None for x in r[2:]]
        for name, r in sorted(readings.items())
    ]


def readings_from_obj(obj: Iterable[list[Any]] | None) -> Readings:
    """Inverse of :func:`readings_to_obj`; ``None`` (a state written before readings) is empty."""
    out: Readings = {}
    for name, source_type, order, *values in obj or ():
        out[name] = [source_type, tuple(order)] + [
            tuple(v) if v is not None else None for v in values
        ]
    return out


@dataclass(frozen=True)
class ConsensusRules:
    """The weights and thresholds of the rule (settings, see ``AggregatorSettings``)."""

    credibility: Mapping[str, float] = field(
        default_factory=lambda: {
            "official_feed": 1.0,
            "sensor": 1.0,
            "official_statement": 0.8,
            "satellite": 0.6,
            "journalist": 0.4,
            "crowd": 0.2,
        }
    )
    half_life_ms: int = 30 * 60_000
    recent_ms: int = 30 * 60_000
    high_min_sources: int = 2
    high_max_spread: float = 0.2
    disagree_spread: float = 0.5
    weighty_share: float = 0.25

    def weight(self, source_type: str, age_ms: int) -> float:
        """Credibility times recency; an unknown type counts as crowd, the least trusted.

        The recency is spelled out operation by operation as ``clickhouse/assembly`` writes it
        in SQL (the same IEEE operations in the same order give the same bits).
        """
        base = self.credibility.get(source_type, self.credibility.get("crowd", 0.0))
        if not self.half_life_ms:
            return base
        k, rest = divmod(max(0, age_ms), self.half_life_ms)
        return base * ldexp(1.0 - (rest / self.half_life_ms) / 2, -k)


@dataclass(frozen=True)
class Consensus:
    """What the rule says about one window's readings (the window row's consensus fields)."""

    wait_minutes: int | None
    queue_vehicles: int | None
    queue_length_km: float | None
    source_wait_min: int | None
    source_wait_max: int | None
    wait_spread: float | None
    confidence: str
    reasons: list[str]
    sources_by_type: dict[str, int]
    newest_official_at: int | None

    def row(self) -> dict[str, Any]:
        """The fields of ``crossing_window.avsc`` v2 that carry it."""
        return {
            "consensus_wait_minutes": self.wait_minutes,
            "consensus_queue_vehicles": self.queue_vehicles,
            "consensus_queue_length_km": self.queue_length_km,
            "source_wait_minutes_min": self.source_wait_min,
            "source_wait_minutes_max": self.source_wait_max,
            "wait_spread": self.wait_spread,
            "confidence": self.confidence,
            "confidence_reasons": self.reasons,
            "sources_by_type": self.sources_by_type,
            "official_observed_at": self.newest_official_at,
        }


#: The consensus fields of a window that gets none (longer than ``consensus_max_size``).
UNJUDGED: dict[str, Any] = {
    "consensus_wait_minutes": None,
    "consensus_queue_vehicles": None,
    "consensus_queue_length_km": None,
    "source_wait_minutes_min": None,
    "source_wait_minutes_max": None,
    "wait_spread": None,
    "confidence": "unknown",
    "confidence_reasons": [],
    "sources_by_type": {},
    "official_observed_at": None,
}


def weighted_median(values: list[tuple[Any, str, float]]) -> Any | None:
    """The lower weighted median of ``(value, source name, weight)``; None when no weight.

    Sorted by value, then name, so equal values from different sources are in one fixed order:
    the result depends on the set of readings only.
    """
    items = sorted((v, name, w) for v, name, w in values if w > 0)
    if not items:
        return None
    # One left-to-right running sum, the total its last term: what SQL's arrayCumSum gives
    # (``sum`` of floats is compensated from Python 3.12 on, so it could differ in the last bit).
    running = list(accumulate(w for _, _, w in items))
    half = running[-1] / 2
    for (value, _, _), r in zip(items, running, strict=True):
        if r >= half:
            return value
    return items[-1][0]  # pragma: no cover - running ends at its total, which is >= half


def _metric(readings: Readings, index: int, ref_ms: int, rules: ConsensusRules) -> Any | None:
    values = [
        (r[index][2], name, rules.weight(r[_TYPE], ref_ms - r[index][0]))
        for name, r in readings.items()
        if r[index] is not None
    ]
    return weighted_median(values)


def _spread(values: list[Any]) -> float | None:
    """``(max - min) / max`` of the values; 0 when all are 0, None when there are none."""
    if not values:
        return None
    hi = max(values)
    return (hi - min(values)) / hi if hi else 0.0


def _minutes(value: int) -> str:
    """A wait (whole minutes) for a sentence: minutes below two hours, else hours.

    Hours are rounded half up in integers (123 min is 2.1 h), which SQL can say the same way;
    a float's ``:.1f`` rounds the binary value of ``123 / 60`` instead (2.0 h).
    """
    if value < 120:
        return f"{value} min"
    tenths = (value * 10 + 30) // 60
    return f"{tenths // 10}.{tenths % 10} h"


def _age(ms: int) -> str:
    minutes = ms / 60_000
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def judge(readings: Readings, ref_ms: int | None, rules: ConsensusRules) -> Consensus:
    """The consensus, spread, confidence and reasons of one window's readings.

    ``ref_ms`` is the window's newest report (event time); with no readings (or no reference)
    everything is empty and the confidence is ``low``.
    """
    by_type: dict[str, int] = {}
    for r in readings.values():
        by_type[r[_TYPE]] = by_type.get(r[_TYPE], 0) + 1
    if not readings or ref_ms is None:
        return Consensus(None, None, None, None, None, None, "low", ["no reports"], by_type, None)
    wait = _metric(readings, _WAIT, ref_ms, rules)
    vehicles = _metric(readings, _VEHICLES, ref_ms, rules)
    length = _metric(readings, _LENGTH, ref_ms, rules)
    waits = [r[_WAIT][2] for r in readings.values() if r[_WAIT] is not None]
    lo = min(waits) if waits else None
    hi = max(waits) if waits else None
    spread = _spread(waits)
    officials = [r for r in readings.values() if r[_TYPE] in OFFICIAL_TYPES]
    newest_official = max((r[_ORDER][0] for r in officials), default=None)

    weights = {  # credibility alone: a stale official figure is still an official one
        name: rules.weight(r[_TYPE], 0) for name, r in readings.items() if r[_WAIT] is not None
    }
    heaviest = max(weights.values(), default=0.0)
    weighty = [
        readings[name][_WAIT][2]
        for name, w in weights.items()
        if w > 0 and w >= rules.weighty_share * heaviest
    ]
    disagree = _spread(weighty)
    recent = [
        (name, r)
        for name, r in readings.items()
        if ref_ms - r[_ORDER][0] <= rules.recent_ms
        and (r[_WAIT] is not None or r[_VEHICLES] is not None or r[_LENGTH] is not None)
    ]
    recent_waits = [
        r[_WAIT][2]
        for name, r in recent
        if r[_WAIT] is not None and weights[name] >= rules.weighty_share * heaviest
    ]
    recent_spread = _spread(recent_waits) or 0.0
    recent_official = any(r[_TYPE] in OFFICIAL_TYPES for _, r in recent)
    n = len(readings)
    within = _age(rules.recent_ms)
    reasons: list[str] = []
    if wait is None and vehicles is None and length is None:
        confidence = "low"
        reasons.append(f"{n} source{'s' if n > 1 else ''}, none gives a wait or a queue")
    elif disagree is not None and disagree > rules.disagree_spread:
        confidence = "low"
        reasons.append(f"sources disagree: {_minutes(min(weighty))}–{_minutes(max(weighty))}")
    elif n == 1 and not officials:
        confidence = "low"
        only = next(iter(readings.values()))
        reasons.append(f"single {only[_TYPE].replace('_', ' ')} source")
    elif (
        len(recent) >= rules.high_min_sources
        and recent_official
        and recent_spread <= rules.high_max_spread
    ):
        confidence = "high"
        reasons.append(
            f"{len(recent)} sources incl. official within {within} agree within "
            f"{rules.high_max_spread:.0%}".replace("%", " %")
        )
    else:
        confidence = "medium"
        if len(recent) < rules.high_min_sources:
            reasons.append(f"{len(recent)} of {n} sources within {within} of the newest report")
        if not recent_official:
            reasons.append(
                f"no official source within {within}" if officials else "no official source"
            )
        if recent_spread > rules.high_max_spread and recent_waits:
            reasons.append(
                f"sources differ by {recent_spread:.0%}".replace("%", " %")
                + f": {_minutes(min(recent_waits))}–{_minutes(max(recent_waits))}"
            )
    return Consensus(
        wait_minutes=wait,
        queue_vehicles=vehicles,
        queue_length_km=length,
        source_wait_min=lo,
        source_wait_max=hi,
        wait_spread=spread,
        confidence=confidence,
        reasons=reasons,
        sources_by_type=dict(sorted(by_type.items())),
        newest_official_at=newest_official,
    )


def consensus_rules(settings: AggregatorSettings) -> ConsensusRules:
    """The rules the settings describe (``QUEUEWATCH_AGGREGATOR_CREDIBILITY`` and the rest)."""
    from queuewatch.aggregator.windows import parse_duration_ms
    from queuewatch.errors import ConfigurationError

    weights = dict(ConsensusRules().credibility)
    for part in filter(None, (p.strip() for p in settings.aggregator_credibility.split(","))):
        name, _, value = (x.strip() for x in part.partition("="))
        if name not in SOURCE_TYPES:
            raise ConfigurationError(
                f"QUEUEWATCH_AGGREGATOR_CREDIBILITY names {name!r}; the source types are "
                f"{', '.join(SOURCE_TYPES)}"
            )
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not weight >= 0:
            raise ConfigurationError(
                f"QUEUEWATCH_AGGREGATOR_CREDIBILITY: {part!r} is not type=weight with a weight "
                "of 0 or more, e.g. crowd=0.2"
            )
        weights[name] = weight
    return ConsensusRules(
        credibility=weights,
        half_life_ms=parse_duration_ms(settings.aggregator_consensus_half_life),
        recent_ms=parse_duration_ms(settings.aggregator_confidence_recent),
        high_min_sources=settings.aggregator_confidence_high_sources,
        high_max_spread=settings.aggregator_confidence_high_spread,
        disagree_spread=settings.aggregator_confidence_disagree_spread,
    )
