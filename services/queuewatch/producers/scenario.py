"""The September 2022 scenario: which crossings, how their queues grew, who reported them.

Numbers come from /work/shared/DOMAIN.md (press and official figures of September 2022): the
queue at Verkhny Lars grew from a few dozen cars to 3,500-4,000 cars and 20-25 km with waits of
40-50 hours; Syrym toward Uralsk held 500-600 cars and a 12-hour queue; Finnish, Estonian and
Mongolian crossings were busy too, less so. The crisis starts with the mobilisation announcement
(21 September 2022, 07:00 Moscow time), builds over about four days, holds, and fades in early
October; Finland closed to Russian tourists on 30 September, the Baltic states on 19 September.

A *lane* is one queue: a crossing, a direction and a traffic class. Its true state at a moment
is :func:`lane_state`; sources (see :mod:`queuewatch.producers.simulator`) observe it with their
own bias and noise.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def utc_ms(text: str) -> int:
    """An ISO time with offset as UTC milliseconds (for the scenario's fixed dates)."""
    return int(datetime.fromisoformat(text).astimezone(UTC).timestamp() * 1000)


#: Where the default scenario starts: two days of ordinary traffic before the announcement.
SCENARIO_START_MS = utc_ms("2022-09-19T00:00:00+00:00")
MOBILISATION_MS = utc_ms("2022-09-21T07:00:00+03:00")
#: The queues peak about four days after the announcement and ease from early October.
RISE_DAYS = 4.0
FADE_MID_MS = utc_ms("2022-10-03T00:00:00+00:00")
FINLAND_CLOSED_MS = utc_ms("2022-09-30T00:00:00+03:00")
BALTIC_BAN_MS = utc_ms("2022-09-19T00:00:00+03:00")

#: Metres of road a queued vehicle takes (car with the gap to the next one), per class.
METRES_PER_UNIT = {
    "car": 6.5,
    "truck": 18.0,
    "bus": 14.0,
    "motorcycle": 3.0,
    "bicycle": 2.0,
    "pedestrian": 0.6,
    "mixed": 8.0,
}


@dataclass(frozen=True)
class SourceSpec:
    """One reporter of one lane.

    ``kind`` picks the behaviour (what it measures, how late it arrives): feed, statement,
    journalist, chat, hotline, sensor, satellite. ``rate_per_h`` is the report rate in normal
    times (for feeds and sensors: 60 / period in minutes); ``crisis_exponent`` says how the rate
    follows the queue (0: fixed schedule; 0.8: crowds report more the longer the queue).
    """

    kind: str
    source_type: str
    name: str
    url: str | None
    rate_per_h: float
    crisis_exponent: float = 0.0


@dataclass(frozen=True)
class LaneSpec:
    """One queue: direction, traffic class, its normal size and how hard the crisis hits it."""

    from_country: str
    to_country: str
    traffic_class: str
    base_queue: float  # vehicles (persons for pedestrians) at a normal midday
    base_throughput: float  # vehicles or persons processed per hour, normal
    base_lanes: int
    peak: float  # queue multiplier at the height of the crisis (1 = not affected)
    utc_offset_min: int  # local time where the queue stands: reports are written in it
    sources: tuple[SourceSpec, ...] = ()
    restricted_from_ms: int | None = None  # entry restricted from then on (fewer cross)
    open_hours: tuple[int, int] | None = None  # local opening hours; closed outside
    onset_ms: int = MOBILISATION_MS


@dataclass(frozen=True)
class CrossingSpec:
    """A border crossing: its slug, name, position and lanes."""

    crossing_id: str
    name: str
    lat: float
    lon: float
    lanes: tuple[LaneSpec, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class LaneState:
    """The true queue of a lane at a moment (what a perfect observer would report)."""

    queue: float
    throughput: float
    lanes_open: int
    wait_minutes: float
    length_km: float
    status: str
    crisis: float  # 0..1, how far into the crisis


def crisis_level(lane: LaneSpec, t_ms: int) -> float:
    """0 before the announcement, rising to 1 over RISE_DAYS, fading from early October."""
    rise_mid = lane.onset_ms + RISE_DAYS * DAY_MS / 2
    x = (t_ms - rise_mid) / (RISE_DAYS * DAY_MS / 8)
    up = 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, x))))
    y = (t_ms - FADE_MID_MS) / (1.5 * DAY_MS)
    down = 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, y))))
    return up * (1.0 - 0.8 * down)


def daily_factor(lane: LaneSpec, t_ms: int) -> float:
    """Queues swell in the afternoon and shrink before dawn (local time): 0.55..1.45."""
    local_hour = ((t_ms // 60_000 + lane.utc_offset_min) % 1440) / 60.0
    return 1.0 + 0.45 * math.sin(2 * math.pi * (local_hour - 9.0) / 24.0)


def is_open(lane: LaneSpec, t_ms: int) -> bool:
    """Whether the crossing works at this local hour."""
    if lane.open_hours is None:
        return True
    local_hour = ((t_ms // 60_000 + lane.utc_offset_min) % 1440) // 60
    start, end = lane.open_hours
    return start <= local_hour < end


def lane_state(lane: LaneSpec, t_ms: int) -> LaneState:
    """The true state of ``lane`` at ``t_ms`` (UTC ms)."""
    crisis = crisis_level(lane, t_ms)
    level = 1.0 + (lane.peak - 1.0) * crisis
    restricted = lane.restricted_from_ms is not None and t_ms >= lane.restricted_from_ms
    if restricted:
        level *= 0.3
    queue = lane.base_queue * level * daily_factor(lane, t_ms)
    # Border services open extra booths as the queue grows (Georgia did at Lars).
    extra = round(lane.base_lanes * crisis * min(1.0, (lane.peak - 1.0) / 10.0))
    lanes_open = lane.base_lanes + extra
    throughput = lane.base_throughput * lanes_open / lane.base_lanes
    wait = queue / throughput * 60.0 + 10.0  # plus the ten minutes of the inspection itself
    length_km = queue * METRES_PER_UNIT[lane.traffic_class] / 1000.0
    if not is_open(lane, t_ms):
        status = "closed"
    elif restricted or (lane.traffic_class == "truck" and crisis > 0.5 and lane.peak > 5):
        status = "restricted"
    elif wait > 60:
        status = "delay"
    else:
        status = "open"
    return LaneState(queue, throughput, lanes_open, wait, length_km, status, crisis)


# --- the real crossings -----------------------------------------------------------------------


def _crowd(name: str, rate: float, hotline: str | None = None) -> tuple[SourceSpec, ...]:
    chat = SourceSpec("chat", "crowd", name, None, rate, 0.8)
    if hotline is None:
        return (chat,)
    return (chat, SourceSpec("hotline", "crowd", hotline, None, rate / 4, 0.8))


def _press(rate_per_day: float) -> tuple[SourceSpec, ...]:
    # Journalists write rarely in normal times and a lot in a crisis (rate ~ queue^0.9).
    return (
        SourceSpec(
            "journalist",
            "journalist",
            "Reuters",
            "https://www.reuters.com",
            rate_per_day / 24 / 2,
            0.9,
        ),
        SourceSpec(
            "journalist", "journalist", "Meduza", "https://meduza.io", rate_per_day / 24 / 2, 0.9
        ),
    )


_LARS_FEED = SourceSpec(
    "statement", "official_statement", "North Ossetia-Alania government", None, 0.05, 0.8
)
_GE_MIA = SourceSpec(
    "statement",
    "official_statement",
    "Ministry of Internal Affairs of Georgia",
    "https://police.ge",
    0.03,
    0.8,
)
_MAXAR = SourceSpec("satellite", "satellite", "Maxar Technologies", None, 0.004, 1.0)
_KGD = SourceSpec(
    "feed",
    "official_feed",
    "Kazakhstan State Revenue Committee checkpoint queues",
    "https://kgd.gov.kz",
    1.0,
)
_RAJA = SourceSpec(
    "feed", "official_feed", "Finnish Border Guard waiting times", "https://raja.fi", 1.0
)
_GOSWIFT = SourceSpec(
    "feed", "official_feed", "GoSwift electronic queue Narva", "https://www.eestipiir.ee", 2.0
)


def _camera(name: str) -> SourceSpec:
    return SourceSpec("sensor", "sensor", name, None, 12.0)  # one reading every 5 minutes


def real_crossings() -> tuple[CrossingSpec, ...]:
    """The crossings of the September 2022 scenario, with their lanes and sources."""
    lars_chat = _crowd("Telegram: Verkhny Lars queue", 4.0, "Vladikavkaz hot-line")
    uralsk_chat = _crowd("Telegram: Uralsk border", 1.5, "Uralsk hot-line")
    ru, msk, ge_tz = "RU", 180, 240
    lars = CrossingSpec(
        "ge-ru-verkhny-lars",
        "Verkhny Lars - Dariali",
        42.7407,
        44.6325,
        (
            LaneSpec(
                ru,
                "GE",
                "car",
                45,
                45,
                4,
                80,
                msk,
                (*lars_chat, *_press(2.0), _LARS_FEED, _GE_MIA, _MAXAR),
            ),
            LaneSpec(
                ru,
                "GE",
                "truck",
                60,
                25,
                2,
                12,
                msk,
                (
                    SourceSpec("chat", "crowd", "Telegram: truckers Lars", None, 0.5, 0.8),
                    _LARS_FEED,
                ),
            ),
            LaneSpec(
                ru,
                "GE",
                "pedestrian",
                20,
                200,
                2,
                60,
                msk,
                (*_crowd("Telegram: Verkhny Lars queue", 0.5), _GE_MIA),
            ),
            LaneSpec(
                ru, "GE", "bicycle", 2, 60, 1, 100, msk, _crowd("Telegram: Verkhny Lars queue", 0.1)
            ),
            LaneSpec(
                "GE",
                ru,
                "car",
                20,
                60,
                2,
                1.2,
                ge_tz,
                (*_crowd("Telegram: Lars to Russia", 0.3), _GE_MIA),
            ),
            LaneSpec(
                "GE", ru, "truck", 40, 25, 1, 1.0, ge_tz, _crowd("Telegram: truckers Lars", 0.2)
            ),
        ),
    )

    def kz(
        slug: str,
        name: str,
        lat: float,
        lon: float,
        base: float,
        thr: float,
        peak: float,
        tz: int,
        chat: tuple[SourceSpec, ...],
    ) -> CrossingSpec:
        return CrossingSpec(
            slug,
            name,
            lat,
            lon,
            (
                LaneSpec(ru, "KZ", "car", base, thr, 3, peak, tz, (*chat, _KGD, *_press(0.5))),
                LaneSpec(ru, "KZ", "truck", 2 * base, thr / 3, 1, 3, tz, (_KGD,)),
                LaneSpec("KZ", ru, "car", base / 2, thr, 2, 1.0, tz, (_KGD,)),
            ),
        )

    syrym = kz(
        "kz-ru-syrym",
        "Mashtakovo - Syrym (toward Uralsk)",
        51.4667,
        52.2833,
        15,
        50,
        40,
        240,
        (*uralsk_chat, _MAXAR),
    )
    taskala = kz(
        "kz-ru-taskala",
        "Ozinki - Taskala (toward Uralsk)",
        51.1064,
        50.2906,
        20,
        60,
        30,
        240,
        uralsk_chat,
    )
    zhaisan = kz(
        "kz-ru-zhaisan",
        "Sagarchin - Zhaisan",
        50.6167,
        57.1000,
        15,
        50,
        20,
        300,
        _crowd("Telegram: Aktobe border", 0.8),
    )
    kairak = kz(
        "kz-ru-kairak",
        "Petukhovo - Kairak",
        55.1300,
        67.8800,
        10,
        40,
        15,
        300,
        _crowd("Telegram: Petropavl border", 0.5),
    )
    auyl = kz(
        "kz-ru-auyl",
        "Veseloyarsk - Auyl",
        51.0200,
        81.4500,
        12,
        40,
        25,
        420,
        _crowd("Telegram: Semey border", 0.6, "Semey hot-line"),
    )

    vaalimaa = CrossingSpec(
        "fi-ru-vaalimaa",
        "Torfyanovka - Vaalimaa",
        60.5867,
        27.8150,
        (
            LaneSpec(
                ru,
                "FI",
                "car",
                60,
                120,
                6,
                5,
                msk,
                (
                    _RAJA,
                    _camera("Vaalimaa traffic camera"),
                    *_crowd("Telegram: Finland border", 1.0),
                    *_press(0.5),
                ),
                restricted_from_ms=FINLAND_CLOSED_MS,
            ),
            LaneSpec(
                ru, "FI", "bus", 5, 10, 1, 3, msk, (_RAJA,), restricted_from_ms=FINLAND_CLOSED_MS
            ),
            LaneSpec(ru, "FI", "truck", 100, 40, 3, 1.2, msk, (_RAJA,)),
            LaneSpec("FI", ru, "car", 30, 120, 4, 1.0, 180, (_RAJA,)),
        ),
    )
    nuijamaa = CrossingSpec(
        "fi-ru-nuijamaa",
        "Brusnichnoye - Nuijamaa",
        60.9640,
        28.5340,
        (
            LaneSpec(
                ru,
                "FI",
                "car",
                40,
                80,
                4,
                6,
                msk,
                (
                    _RAJA,
                    _camera("Nuijamaa traffic camera"),
                    *_crowd("Telegram: Finland border", 0.6),
                ),
                restricted_from_ms=FINLAND_CLOSED_MS,
            ),
        ),
    )
    narva = CrossingSpec(
        "ee-ru-narva",
        "Ivangorod - Narva",
        59.3760,
        28.2050,
        (
            LaneSpec(
                ru,
                "EE",
                "car",
                80,
                30,
                3,
                3,
                msk,
                (_GOSWIFT, _camera("Narva bridge camera"), *_crowd("Telegram: Narva border", 0.8)),
                restricted_from_ms=BALTIC_BAN_MS,
            ),
            LaneSpec(
                ru,
                "EE",
                "pedestrian",
                100,
                300,
                4,
                6,
                msk,
                (*_crowd("Telegram: Narva border", 1.0), _camera("Narva bridge camera")),
            ),
            LaneSpec("EE", ru, "car", 40, 30, 2, 1.0, 180, (_GOSWIFT,)),
        ),
    )
    kyakhta = CrossingSpec(
        "mn-ru-kyakhta",
        "Kyakhta - Altanbulag",
        50.3500,
        106.4500,
        (
            LaneSpec(
                ru,
                "MN",
                "car",
                20,
                30,
                2,
                15,
                480,
                (
                    *_crowd("Telegram: Buryatia border", 0.6),
                    SourceSpec(
                        "statement", "official_statement", "Government of Buryatia", None, 0.05, 0.8
                    ),
                    *_press(0.3),
                ),
                open_hours=(8, 22),
            ),
            LaneSpec(ru, "MN", "truck", 50, 15, 1, 2, 480, (), open_hours=(8, 20)),
        ),
    )
    return (lars, syrym, taskala, zhaisan, kairak, auyl, vaalimaa, nuijamaa, narva, kyakhta)


#: Pairs of neighbouring countries for generated (load) crossings.
_NEIGHBOURS = (
    ("PL", "UA"),
    ("BY", "PL"),
    ("BY", "LT"),
    ("MX", "US"),
    ("CA", "US"),
    ("GE", "TR"),
    ("AM", "GE"),
    ("KZ", "RU"),
    ("KZ", "UZ"),
    ("CN", "KZ"),
    ("MN", "RU"),
    ("RO", "UA"),
    ("MD", "UA"),
    ("HU", "UA"),
    ("SK", "UA"),
    ("DE", "PL"),
    ("NO", "RU"),
    ("LV", "RU"),
    ("AZ", "GE"),
    ("KG", "KZ"),
)


def generated_crossings(count: int, seed: int) -> tuple[CrossingSpec, ...]:
    """``count`` made-up crossings for load tests, deterministic for a seed.

    Their ids (``pl-ua-x0007``) cannot clash with real ones; their queues and report rates are
    drawn from the ranges of DOMAIN.md, and about a third of them feel the crisis.
    """
    rng = random.Random(f"crossings-{seed}")
    out: list[CrossingSpec] = []
    for i in range(count):
        a, b = rng.choice(_NEIGHBOURS)
        src, dst = (a, b) if rng.random() < 0.5 else (b, a)
        slug = f"{a.lower()}-{b.lower()}-x{i:04d}"
        tz = rng.choice((0, 60, 120, 180, 240, 300, -300, -420, 480))
        peak = rng.choice((1.0, 1.0, 2.0, 5.0, 10.0, 20.0))
        base = rng.uniform(5, 80)
        thr = rng.uniform(20, 500)
        sources: list[SourceSpec] = [
            SourceSpec("chat", "crowd", f"Crowd reports {slug}", None, rng.uniform(0.2, 3.0), 0.8)
        ]
        if rng.random() < 0.5:
            sources.append(
                SourceSpec(
                    "feed",
                    "official_feed",
                    f"Border service {src}",
                    None,
                    rng.choice((1.0, 4.0, 12.0)),
                )
            )
        if rng.random() < 0.1:
            sources.append(_camera(f"Camera {slug}"))
        lanes = [
            LaneSpec(
                src,
                dst,
                "car",
                base,
                thr,
                rng.randint(1, 8),
                peak,
                tz,
                tuple(sources),
                onset_ms=MOBILISATION_MS + rng.randint(0, 2) * DAY_MS,
            )
        ]
        if rng.random() < 0.5:
            lanes.append(LaneSpec(src, dst, "truck", base * 2, thr / 4, 2, 1.0, tz, (sources[0],)))
        if rng.random() < 0.5:
            lanes.append(LaneSpec(dst, src, "car", base / 2, thr, 2, 1.0, tz, (sources[0],)))
        lat = rng.uniform(-40, 65)
        lon = rng.uniform(-120, 130)
        out.append(CrossingSpec(slug, f"Generated crossing {i}", lat, lon, tuple(lanes)))
    return tuple(out)


def scenario_crossings(total: int, seed: int) -> tuple[CrossingSpec, ...]:
    """The real crossings, plus generated ones up to ``total`` (0 or fewer: the real ones)."""
    real = real_crossings()
    if total <= len(real):
        return real if total <= 0 else real[:total]
    return real + generated_crossings(total - len(real), seed)
