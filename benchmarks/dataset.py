"""The benchmark workload: N encoded queue reports over many crossings, seeded and cached.

Every scenario that replays a log (the limit, the aggregator, the Quix peer, the sinks) reads
the same bytes, so their figures compare like with like. The shape follows docs of the domain
(shared DOMAIN.md): hundreds to thousands of crossings, a few sources each, waits from minutes
to days, measurements often missing (null, never 0). The log is in event-time order with the
disorder a real feed has:

* ``OUT_OF_ORDER`` of the reports arrive up to 30 minutes late (inside every window's grace);
* ``VERY_LATE`` arrive 3 to 6 hours late (past the grace of the 1 h windows: counted as late);
* ``DUPLICATES`` are re-sends of an earlier event_id, half of them with different content
  (the first arrival must win).

There are no invalid records (every one passes queuewatch.contract.validation, checked when
the log is generated): the peer would need our validation rules to treat them alike, and
the dead-letter path is a correctness concern covered by the aggregator's tests.

Generating and encoding a million reports takes tens of seconds in Python, so the encoded log
is cached under ``benchmarks/work/datasets`` keyed by its parameters and reused across runs.
"""

from __future__ import annotations

import json
import random
import struct
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from queuewatch.contract.codec import encode
from queuewatch.contract.schemas import QUEUE_REPORT, default_registry
from queuewatch.contract.validation import validate_record

WORK_DIR = Path(__file__).resolve().parent / "work"
HOUR_MS = 3_600_000
OUT_OF_ORDER = 0.05
VERY_LATE = 0.005
DUPLICATES = 0.01

#: Pairs of (from, to) country codes seen on busy land borders (DOMAIN.md).
BORDERS = [
    ("RU", "GE"), ("GE", "RU"), ("RU", "KZ"), ("KZ", "RU"), ("RU", "FI"), ("FI", "RU"),
    ("RU", "EE"), ("EE", "RU"), ("RU", "MN"), ("MN", "RU"), ("UA", "PL"), ("PL", "UA"),
    ("US", "CA"), ("CA", "US"), ("MX", "US"), ("US", "MX"),
]  # fmt: skip
CLASSES = ["car", "car", "car", "truck", "truck", "bus", "pedestrian", "mixed"]
SOURCE_TYPES = ["official_feed", "official_statement", "journalist", "crowd", "sensor", "satellite"]
STATUSES = ["open", "delay", "delay", "restricted", "closed", "unknown"]
_LEN = struct.Struct(">HI")


@dataclass(frozen=True)
class DatasetSpec:
    """What to generate: the cache key of an encoded log."""

    reports: int
    crossings: int = 1000
    span_hours: int = 48
    seed: int = 7

    @property
    def name(self) -> str:
        """File stem of the cached log."""
        return f"reports-v2-{self.reports}-c{self.crossings}-h{self.span_hours}-s{self.seed}"


@dataclass(frozen=True)
class Dataset:
    """An encoded log on disk and what is known about it."""

    spec: DatasetSpec
    path: Path
    start_ms: int
    end_ms: int
    duplicates: int

    def messages(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs in log order."""
        yield from read_log(self.path)

    def load(self) -> list[tuple[bytes, bytes]]:
        """All (key, value) pairs in memory (about 300 bytes each)."""
        return list(read_log(self.path))


def write_log(path: Path, messages: list[tuple[bytes, bytes]]) -> None:
    """Write length-prefixed (key, value) pairs."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as out:
        for key, value in messages:
            out.write(_LEN.pack(len(key), len(value)))
            out.write(key)
            out.write(value)
    tmp.replace(path)


def read_log(path: Path) -> Iterator[tuple[bytes, bytes]]:
    """Read what :func:`write_log` wrote."""
    data = path.read_bytes()
    pos, size = 0, len(data)
    while pos < size:
        klen, vlen = _LEN.unpack_from(data, pos)
        pos += _LEN.size
        key = data[pos : pos + klen]
        pos += klen
        yield key, data[pos : pos + vlen]
        pos += vlen


@dataclass(frozen=True)
class Crossing:
    """One crossing's fixed traits in the workload."""

    crossing_id: str
    directions: list[tuple[str, str]]
    classes: list[str]
    sources: list[tuple[str, str]]
    base_wait: int


def make_crossings(count: int, rng: random.Random) -> list[Crossing]:
    """``count`` crossings with one or two directions, one or two classes, 2-6 sources."""
    out = []
    for i in range(count):
        a, b = BORDERS[(2 * i) % len(BORDERS)]
        directions = [(a, b), (b, a)] if rng.random() < 0.5 else [(a, b)]
        classes = rng.sample(sorted(set(CLASSES)), rng.choice([1, 2]))
        sources = [
            (rng.choice(SOURCE_TYPES), f"source-{rng.randrange(40):02d}")
            for _ in range(rng.randint(2, 6))
        ]
        # Most crossings are quiet; a few carry crisis waits of one to three days (DOMAIN.md).
        base_wait = rng.choice([15, 20, 30, 45, 60, 90, 120]) if rng.random() > 0.05 else 2400
        out.append(
            Crossing(f"{a.lower()}-{b.lower()}-x{i:04d}", directions, classes, sources, base_wait)
        )
    return out


def make_report(c: Crossing, observed_at: int, rng: random.Random) -> dict[str, Any]:
    """One report of crossing ``c`` at ``observed_at``; measurements missing as often as seen."""
    frm, to = rng.choice(c.directions)
    stype, sname = rng.choice(c.sources)
    has_wait = rng.random() < 0.9
    vehicles = rng.random() < 0.7
    length = rng.random() < 0.5
    # A report with no measurement at all is invalid (it must carry one, or a status); the
    # workload holds only valid reports, so such a draw gets a wait.
    has_wait = has_wait or not (vehicles or length)
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "crossing_id": c.crossing_id,
        "from_country": frm,
        "to_country": to,
        "traffic_class": rng.choice(c.classes),
        "observed_at": observed_at,
        "source": {
            "type": stype,
            "name": sname,
            "url": "https://example.org/r" if rng.random() < 0.2 else None,
        },
        "wait_minutes": max(0, int(rng.gauss(c.base_wait, c.base_wait / 3))) if has_wait else None,
        "queue_vehicles": rng.randrange(0, 4000) if vehicles else None,
        "queue_persons": rng.randrange(0, 9000) if rng.random() < 0.2 else None,
        "queue_length_km": round(rng.uniform(0.1, 25.0), 2) if length else None,
        "throughput_per_hour": round(rng.uniform(20, 500), 1) if rng.random() < 0.3 else None,
        "lanes_open": rng.randrange(1, 12) if rng.random() < 0.2 else None,
        "status": rng.choice(STATUSES),
        "location": {"lat": 42.7, "lon": 44.6} if rng.random() < 0.3 else None,
        "note": "queue moving slowly" if rng.random() < 0.05 else None,
    }


def generate(spec: DatasetSpec, end_ms: int) -> tuple[list[tuple[bytes, bytes]], int, int]:
    """The encoded log, its first event time and its number of re-sent duplicates."""
    rng = random.Random(spec.seed)
    schema = default_registry().latest(QUEUE_REPORT)
    crossings = make_crossings(spec.crossings, rng)
    start_ms = end_ms - spec.span_hours * HOUR_MS
    step = (end_ms - start_ms) / spec.reports
    records: list[tuple[float, dict[str, Any]]] = []
    sent: list[dict[str, Any]] = []
    duplicates = 0
    for i in range(spec.reports):
        t = int(start_ms + i * step + rng.random() * step)
        c = crossings[rng.randrange(len(crossings))]
        roll = rng.random()
        if roll < DUPLICATES and sent:
            duplicates += 1
            first = sent[rng.randrange(max(0, len(sent) - 5000), len(sent))]
            rec = dict(first)
            if rng.random() < 0.5:  # a conflicting re-send: same id, other content
                rec["wait_minutes"] = (rec["wait_minutes"] or 0) + 7
            records.append((i + rng.random() * 50, rec))
            continue
        rec = make_report(c, t, rng)
        sent.append(rec)
        # Position in the log: on time, a little late, or hours late.
        if roll < DUPLICATES + VERY_LATE:
            delay = rng.uniform(3, 6) * HOUR_MS
        elif roll < DUPLICATES + VERY_LATE + OUT_OF_ORDER:
            delay = rng.uniform(0, 0.5) * HOUR_MS
        else:
            delay = 0.0
        records.append((i + delay / step, rec))
    records.sort(key=lambda pair: pair[0])
    bad = [v for _, r in records for v in validate_record(r, end_ms)]
    if bad:
        raise ValueError(f"the generator made invalid reports, e.g. {bad[0]}; fix make_report")
    messages = [(r["crossing_id"].encode(), encode(r, schema)) for _, r in records]
    return messages, start_ms, duplicates


def dataset(spec: DatasetSpec, work_dir: Path = WORK_DIR) -> Dataset:
    """The cached log for ``spec``, generated on first use.

    The event times end an hour before the moment of generation, so no report is "in the
    future" for the Kafka timestamp it gets when published (now or later).
    """
    folder = work_dir / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec.name}.log"
    meta_path = folder / f"{spec.name}.json"
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        return Dataset(spec, path, meta["start_ms"], meta["end_ms"], meta["duplicates"])
    import time

    end_ms = (int(time.time() * 1000) // HOUR_MS - 1) * HOUR_MS
    messages, start_ms, duplicates = generate(spec, end_ms)
    write_log(path, messages)
    meta = {"spec": asdict(spec), "start_ms": start_ms, "end_ms": end_ms, "duplicates": duplicates}
    meta_path.write_text(json.dumps(meta))
    return Dataset(spec, path, start_ms, end_ms, duplicates)
