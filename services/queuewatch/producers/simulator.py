"""A seeded, realistic stream of queue reports: the September 2022 scenario, as data.

:func:`generate` is a pure, deterministic iterator (same :class:`SimulationConfig`, same
stream; no clock, no I/O), so the aggregator's, the sinks' and the benchmarks' tests can replay
exactly what `queuewatch simulate` publishes. Each item is a :class:`SimulatedReport`: the JSON
form of a report, the simulated moment it reaches the publisher, and flags saying whether it is
a deliberate defect or a re-send.

How the stream is made:

1. Every lane of every crossing (see :mod:`queuewatch.producers.scenario`) has a true queue
   that follows the crisis (10-100x over days) on top of a daily cycle.
2. Each source of a lane reports on its own clock: official feeds and cameras on a schedule
   (a feed sometimes skips an update: stale data), statements, journalists and crowds as Poisson
   processes whose rate grows with the queue (hundreds of crowd reports an hour at Lars at the
   peak).
3. Each source sees the truth through its own lens: officials undercount, journalists and crowds
   exaggerate, every reading is noisy and rounded the way people round.
4. A report reaches the publisher after a source-specific delay (cameras seconds, chats minutes,
   phone hot-lines and satellite images hours), so the stream, ordered by arrival, is out of
   order in event time.
5. A few reports are re-sent with the same ``event_id`` (a phone app retrying), some with
   different content; a small share is deliberately invalid (flagged, with the defect named).
"""

from __future__ import annotations

import heapq
import math
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from queuewatch.producers.scenario import (
    SCENARIO_START_MS,
    CrossingSpec,
    LaneSpec,
    LaneState,
    SourceSpec,
    crisis_level,
    daily_factor,
    lane_state,
    scenario_crossings,
)

_MINUTE = 60_000
_HOUR = 3_600_000
_KM_PER_MILE = 1.609344

#: The defects of the invalid share: each breaks one rule of the contract.
DEFECTS = (
    "wait_above_maximum",
    "negative_queue",
    "lower_case_country",
    "observed_in_the_future",
    "misspelt_field",
    "no_utc_offset",
    "unknown_traffic_class",
    "bad_crossing_slug",
    "no_measurement",
    "empty_source_name",
    "latitude_out_of_range",
)


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate; two equal configs give the same stream."""

    seed: int = 2022
    start_ms: int = SCENARIO_START_MS
    count: int | None = None  # None: an endless stream
    crossings: int = 0  # 0: the real crossings; more: generated ones added for load
    invalid_share: float = 0.01
    duplicate_share: float = 0.03
    rate_scale: float = 1.0  # multiplies every source's report rate


@dataclass(frozen=True, slots=True)
class SimulatedReport:
    """One simulated report, as a producer would send it."""

    report: dict[str, Any]  # the JSON form (what `queuewatch publish` reads)
    arrival_ms: int  # simulated UTC ms when it reaches the publisher (>= its observed time)
    intentionally_invalid: bool = False
    defect: str | None = None  # which rule it breaks, when intentionally invalid
    resent: bool = False  # a re-send of an earlier event_id (content may differ)

    @property
    def valid(self) -> bool:
        """True unless the report was made to break a rule."""
        return not self.intentionally_invalid

    @property
    def crossing_id(self) -> Any:
        """The crossing the report is about (whatever the field holds, even if invalid)."""
        return self.report.get("crossing_id")


@dataclass
class _Stream:
    crossing: CrossingSpec
    lane: LaneSpec
    source: SourceSpec
    periodic: bool
    rate_max_per_ms: float  # for Poisson streams: the thinning envelope
    period_ms: int
    bias: float  # persistent over- or under-statement of this source on this lane
    pending_resends: list[Any] = field(default_factory=list)


_ZONES: dict[int, timezone] = {}


def format_local(ms: int, offset_min: int, millis: bool = False) -> str:
    """RFC 3339 in the local offset where the report was written (``Z`` for UTC)."""
    zone = _ZONES.get(offset_min)
    if zone is None:
        zone = _ZONES.setdefault(offset_min, timezone(timedelta(minutes=offset_min)))
    dt = datetime.fromtimestamp(ms / 1000, UTC).astimezone(zone)
    text = dt.isoformat(timespec="milliseconds" if millis else "seconds")
    return text[:-6] + "Z" if offset_min == 0 else text


class _Simulation:
    """The event-driven simulation behind :func:`generate` (one per iteration)."""

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.streams: list[_Stream] = []
        self.observations: list[tuple[int, int, int]] = []  # (observe at, seq, stream)
        self.arrivals: list[tuple[int, int, SimulatedReport]] = []
        self.seq = 0
        for crossing in scenario_crossings(config.crossings, config.seed):
            for lane in crossing.lanes:
                for source in lane.sources:
                    self._add_stream(crossing, lane, source)

    def _add_stream(self, crossing: CrossingSpec, lane: LaneSpec, source: SourceSpec) -> None:
        rng = self.rng
        rate = source.rate_per_h * self.config.rate_scale
        if rate <= 0:
            return
        periodic = source.kind in ("feed", "sensor")
        bias = {
            "feed": rng.uniform(0.75, 0.95),
            "statement": rng.uniform(0.6, 0.9),
            "journalist": rng.uniform(1.0, 1.4),
            "chat": rng.uniform(0.9, 1.5),
            "hotline": rng.uniform(1.0, 1.6),
            "sensor": rng.uniform(0.97, 1.03),
            "satellite": rng.uniform(0.95, 1.05),
        }[source.kind]
        period_ms = int(_HOUR / rate)
        rate_max = rate * max(1.0, lane.peak) ** source.crisis_exponent * 1.45 / _HOUR
        stream = _Stream(crossing, lane, source, periodic, rate_max, period_ms, bias)
        index = len(self.streams)
        self.streams.append(stream)
        first = self.config.start_ms + (
            rng.randrange(period_ms) if periodic else int(rng.expovariate(rate_max))
        )
        self._schedule(first, index)

    def _schedule(self, at_ms: int, index: int) -> None:
        self.seq += 1
        heapq.heappush(self.observations, (at_ms, self.seq, index))

    def _arrive(self, report: SimulatedReport) -> None:
        self.seq += 1
        heapq.heappush(self.arrivals, (report.arrival_ms, self.seq, report))

    def run(self) -> Iterator[SimulatedReport]:
        count = self.config.count
        emitted = 0
        if count is not None and count <= 0:
            return
        while self.observations:
            next_obs = self.observations[0][0]
            while self.arrivals and self.arrivals[0][0] <= next_obs:
                yield heapq.heappop(self.arrivals)[2]
                emitted += 1
                if count is not None and emitted >= count:
                    return
            t_ms, _, index = heapq.heappop(self.observations)
            self._observe(t_ms, self.streams[index])
            self._schedule(self._next_time(t_ms, self.streams[index]), index)

    def _next_time(self, t_ms: int, stream: _Stream) -> int:
        if stream.periodic:
            jitter = self.rng.uniform(-0.02, 0.02) * stream.period_ms
            return t_ms + max(1000, int(stream.period_ms + jitter))
        return t_ms + max(1, int(self.rng.expovariate(stream.rate_max_per_ms)))

    def _observe(self, t_ms: int, stream: _Stream) -> None:
        rng = self.rng
        lane, source = stream.lane, stream.source
        if stream.periodic:
            if rng.random() < 0.05:
                return  # the feed skipped an update: consumers see stale data
        else:
            crisis = crisis_level(lane, t_ms)
            level = (1.0 + (max(1.0, lane.peak) - 1.0) * crisis) ** source.crisis_exponent
            rate = source.rate_per_h * self.config.rate_scale * level * daily_factor(lane, t_ms)
            if rng.random() * stream.rate_max_per_ms * _HOUR > rate:
                return  # thinning: the envelope over-proposes, the true rate decides
            if source.kind == "satellite" and crisis < 0.3:
                return  # nobody buys satellite images of an ordinary queue
        state = lane_state(lane, t_ms)
        report, delay_ms = self._report(t_ms, stream, state)
        # From the moment of observation, not from the (rounded-down) time the report states:
        # arrivals must never go back before what the stream has already yielded.
        arrival = t_ms + delay_ms
        if rng.random() < self.config.invalid_share:
            defect = DEFECTS[rng.randrange(len(DEFECTS))]
            self._arrive(SimulatedReport(_break(report, defect, rng), arrival, True, defect))
            return
        self._arrive(SimulatedReport(report, arrival))
        if rng.random() < self.config.duplicate_share:
            resend = dict(report)
            if rng.random() < 0.3:  # a re-send with edited content: first arrival must win
                if "wait_minutes" in resend:
                    resend["wait_minutes"] = min(20160, resend["wait_minutes"] + 10)
                else:
                    resend["note"] = "corrected report"
            later = arrival + int(rng.uniform(5_000, 2 * _HOUR))
            self._arrive(SimulatedReport(resend, later, resent=True))

    def _report(self, t_ms: int, stream: _Stream, state: LaneState) -> tuple[dict[str, Any], int]:
        """The JSON form of what this source says, and how long it takes to arrive."""
        rng = self.rng
        lane, source, crossing = stream.lane, stream.source, stream.crossing
        kind = source.kind
        bias = stream.bias
        persons = lane.traffic_class == "pedestrian"
        queue_field = "queue_persons" if persons else "queue_vehicles"
        closed = state.status == "closed"
        body: dict[str, Any] = {}
        observed = t_ms
        millis = False
        offset = lane.utc_offset_min
        if kind == "feed":
            observed = t_ms - t_ms % _MINUTE
            delay = int(rng.uniform(1, 5) * _MINUTE)
            body["status"] = state.status
            body["lanes_open"] = 0 if closed else state.lanes_open
            if not closed:
                body[queue_field] = round(state.queue * bias * rng.gauss(1.0, 0.05))
                body["wait_minutes"] = round(state.wait_minutes * bias * rng.gauss(1.0, 0.1))
                body["throughput_per_hour"] = round(state.throughput * rng.gauss(1.0, 0.1), 1)
        elif kind == "statement":
            observed = t_ms - t_ms % _HOUR
            delay = int(rng.uniform(30, 180) * _MINUTE)
            body["status"] = state.status
            if not closed:
                vehicles = round(state.queue * bias / 100) * 100
                body[queue_field] = vehicles
                body["note"] = f"About {vehicles:,} {'people' if persons else 'vehicles'} wait."
                if rng.random() < 0.5:
                    body["wait_minutes"] = round(state.wait_minutes * bias / 60) * 60
        elif kind == "journalist":
            observed = t_ms - t_ms % (15 * _MINUTE)
            delay = int(rng.uniform(60, 360) * _MINUTE)
            km = state.length_km * bias * rng.gauss(1.0, 0.15)
            if rng.random() < 0.4:
                miles = max(1, round(km / _KM_PER_MILE))
                body["queue_length_km"] = round(miles * _KM_PER_MILE, 1)
                body["note"] = f"A line of nearly {miles} miles at {crossing.name}."
            else:
                body["queue_length_km"] = float(max(1, round(km)))
                body["note"] = f"Queue of about {round(km)} km at {crossing.name}."
            if rng.random() < 0.5:
                body["wait_minutes"] = max(60, round(state.wait_minutes * bias / 60) * 60)
            if source.url:
                body["source_url"] = f"{source.url}/news/{rng.getrandbits(40):x}"
        elif kind in ("chat", "hotline"):
            wait = state.wait_minutes * bias * rng.lognormvariate(0.0, 0.35)
            if kind == "hotline":
                observed = t_ms - t_ms % (15 * _MINUTE)
                delay = int(rng.uniform(1, 6) * _HOUR)  # phoned in hours later
                body["wait_minutes"] = max(60, round(wait / 60) * 60)
                body["note"] = f"Caller reports about {max(1, round(wait / 60))} hours of waiting."
                offset = 0 if rng.random() < 0.2 else offset
            else:
                delay = int(rng.expovariate(1 / (3 * _MINUTE)))
                step = 30 if wait > 120 else 5
                body["wait_minutes"] = round(wait / step) * step
                if closed and rng.random() < 0.5:
                    body["status"] = "closed"
            if rng.random() < 0.3:
                body["queue_length_km"] = round(state.length_km * bias * rng.gauss(1, 0.2), 1)
            if rng.random() < 0.5:
                body["location"] = self._queue_end(crossing, state.length_km * bias)
        elif kind == "sensor":
            millis = True
            offset = 0
            delay = int(rng.uniform(5, 60) * 1000)
            body["status"] = state.status
            if not closed:
                body[queue_field] = round(state.queue * rng.gauss(1.0, 0.05))
                body["queue_length_km"] = round(state.length_km * rng.gauss(1.0, 0.03), 2)
                body["throughput_per_hour"] = round(state.throughput * rng.gauss(1.0, 0.05), 1)
        else:  # satellite
            observed = t_ms - t_ms % _MINUTE
            offset = 0
            delay = int(rng.uniform(3, 12) * _HOUR)
            body["queue_length_km"] = round(state.length_km * rng.gauss(1.0, 0.03), 1)
            body[queue_field] = round(state.queue * rng.gauss(1.0, 0.15))
            body["note"] = "Estimated from a satellite image."
        for name in ("wait_minutes", "queue_vehicles", "queue_persons"):
            if name in body:
                body[name] = max(0, body[name])
        for name in ("queue_length_km", "throughput_per_hour"):
            if name in body:
                body[name] = max(0.0, body[name])
        if "wait_minutes" in body:
            body["wait_minutes"] = min(20160, body["wait_minutes"])
        src: dict[str, Any] = {"type": source.source_type, "name": source.name}
        url = body.pop("source_url", None) or source.url
        if url:
            src["url"] = url
        report: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "crossing_id": crossing.crossing_id,
            "from_country": lane.from_country,
            "to_country": lane.to_country,
            "traffic_class": lane.traffic_class,
            "observed_at": format_local(observed, offset, millis),
            "source": src,
            **body,
        }
        if "wait_minutes" not in body and "status" not in body and queue_field not in body:
            report["status"] = state.status  # every report says something
        return report, delay

    def _queue_end(self, crossing: CrossingSpec, length_km: float) -> dict[str, float]:
        """Where a person standing at the end of the queue is: up the road from the crossing."""
        bearing = self.rng.uniform(0, 2 * math.pi)
        d = min(length_km, 60.0) / 111.0
        lat = max(-90.0, min(90.0, crossing.lat + d * math.cos(bearing)))
        lon_scale = max(0.1, math.cos(math.radians(crossing.lat)))
        lon = crossing.lon + d * math.sin(bearing) / lon_scale
        lon = (lon + 180.0) % 360.0 - 180.0
        return {"lat": round(lat, 5), "lon": round(lon, 5)}


def _break(report: dict[str, Any], defect: str, rng: random.Random) -> dict[str, Any]:
    """A copy of ``report`` that breaks one rule, the way real clients get it wrong."""
    bad = dict(report)
    if defect == "wait_above_maximum":
        bad["wait_minutes"] = 30000
    elif defect == "negative_queue":
        bad["queue_vehicles"] = -rng.randint(1, 500)
    elif defect == "lower_case_country":
        bad["to_country"] = bad["to_country"].lower()
    elif defect == "observed_in_the_future":
        bad["observed_at"] = "2099" + bad["observed_at"][4:]
    elif defect == "misspelt_field":
        bad["wait_minuts"] = bad.pop("wait_minutes", 60)
    elif defect == "no_utc_offset":
        bad["observed_at"] = bad["observed_at"][:19]
    elif defect == "unknown_traffic_class":
        bad["traffic_class"] = "tank"
    elif defect == "bad_crossing_slug":
        bad["crossing_id"] = bad["crossing_id"].replace("-", " ").title()
    elif defect == "no_measurement":
        for name in (
            "wait_minutes",
            "queue_vehicles",
            "queue_persons",
            "queue_length_km",
            "throughput_per_hour",
            "lanes_open",
            "status",
        ):
            bad.pop(name, None)
    elif defect == "empty_source_name":
        bad["source"] = {**bad["source"], "name": ""}
    elif defect == "latitude_out_of_range":
        bad["location"] = {"lat": 142.7, "lon": 44.6}
    return bad


def generate(config: SimulationConfig | None = None) -> Iterator[SimulatedReport]:
    """The simulated stream for ``config``, ordered by arrival; deterministic for a config."""
    return _Simulation(config or SimulationConfig()).run()


__all__ = ["DEFECTS", "SimulatedReport", "SimulationConfig", "format_local", "generate"]
