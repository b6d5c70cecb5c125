"""Micro-benchmark of the aggregator's pure core, without Kafka or faust.

Runs the work one aggregator batch does, stage by stage, on pre-encoded Avro payloads:
decode + validate (``intake``) -> apply -> state serialisation of every touched crossing
(what goes to the changelog) -> window computation (``take_changed``) -> Avro encoding of
the window rows. Windows are taken after every batch (the worst case of the 1 s flush
interval: at tens of thousands of reports/s a real flush coalesces more).

Three inputs: ``dense`` (20 crossings, one report per 5 s of event time per crossing),
``sparse`` (200 crossings, one per minute), ``sim`` (the producers' simulator, valid only).
A fourth, ``long`` (5 crossings, one report per 10 s over 33 h), is run only when asked: it
is the steady state of a long-running aggregator, where the de-duplication horizon (26 h)
is passed and every report also trims old event ids and evicts old panes.
The run prints reports/s per stage and end to end, windows/s, and a SHA-256 digest of every
state record and window payload produced: an optimisation must leave the digest unchanged
(same bytes, same versions), so the benchmark doubles as a regression check.

Usage: ``python -m benchmarks.aggregator_core [--case dense,sparse,sim,long] [--repeat 3]
[--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import pstats
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from queuewatch.aggregator.intake import RawMessage, intake, reader_schema
from queuewatch.aggregator.state import AggregationConfig, CrossingState
from queuewatch.aggregator.storage import StateStore
from queuewatch.aggregator.window_codec import window_encoder
from queuewatch.contract.codec import encode
from queuewatch.contract.schemas import CROSSING_WINDOW, QUEUE_REPORT, default_registry

MINUTE = 60_000
HOUR = 60 * MINUTE
#: Fixed ``updated_at`` so the digest does not depend on the wall clock.
UPDATED_AT = 1_700_000_000_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR
LANES = [("RU", "GE", "car"), ("RU", "GE", "truck"), ("GE", "RU", "car")]
STATUSES = ["open", "delay", "restricted", "closed", "unknown", "unknown"]


@dataclass
class Case:
    """Pre-encoded messages in log order."""

    name: str
    messages: list[RawMessage] = field(default_factory=list)


def _record(rng: random.Random, cid: str, t: int) -> dict[str, Any]:
    lane = rng.choice(LANES)
    wait = rng.choice([None, 0, rng.randint(0, 3000), rng.randint(10, 90)])
    vehicles = rng.choice([None, rng.randint(0, 4000)])
    length = rng.choice([None, round(rng.uniform(0, 40), 1), rng.random() * 7])
    if wait is None and vehicles is None and length is None:
        length = 1.5
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "crossing_id": cid,
        "from_country": lane[0],
        "to_country": lane[1],
        "traffic_class": lane[2],
        "observed_at": t,
        "source": {"type": "crowd", "name": f"src-{rng.randint(0, 6)}", "url": None},
        "wait_minutes": wait,
        "queue_vehicles": vehicles,
        "queue_persons": None,
        "queue_length_km": length,
        "throughput_per_hour": None,
        "lanes_open": None,
        "status": rng.choice(STATUSES),
        "location": None,
        "note": None,
    }


def synthetic(name: str, crossings: int, reports: int, every_ms: int, seed: int = 7) -> Case:
    """Reports spread evenly over crossings, a little out of order, some late, some re-sent."""
    rng = random.Random(seed)
    schema = default_registry().latest(QUEUE_REPORT)
    case = Case(name)
    sent: list[dict[str, Any]] = []
    per = reports // crossings
    for i in range(per):
        for c in range(crossings):
            cid = f"crossing-{c:04d}"
            t = T0 + i * every_ms + rng.randint(-10 * every_ms, every_ms)
            if rng.random() < 0.02:
                t -= rng.randint(HOUR, 4 * HOUR)  # late; some beyond the grace
            rec = _record(rng, cid, t)
            if sent and rng.random() < 0.03:
                rec = rng.choice(sent[-500:])  # a re-send
            else:
                sent.append(rec)
            offset = len(case.messages)
            key = rec["crossing_id"].encode()  # a re-send keeps its crossing's key
            case.messages.append(
                RawMessage("r", 0, offset, T0 + i * every_ms + HOUR, key, encode(rec, schema))
            )
    return case


def simulated(reports: int) -> Case:
    """The producers' simulator (real crossings, lanes and sources), valid reports only."""
    from queuewatch.contract.validation import parse_json_report
    from queuewatch.producers.simulator import SimulationConfig, generate

    schema = default_registry().latest(QUEUE_REPORT)
    case = Case("sim")
    for i, sim in enumerate(generate(SimulationConfig(count=reports, invalid_share=0))):
        rec = parse_json_report(sim.report)
        case.messages.append(
            RawMessage("r", 0, i, sim.arrival_ms, rec["crossing_id"].encode(), encode(rec, schema))
        )
    return case


@dataclass
class Timings:
    """Seconds per stage and what came out."""

    intake: float = 0.0
    apply: float = 0.0
    state: float = 0.0
    windows: float = 0.0
    encode: float = 0.0
    windows_out: int = 0
    state_bytes: int = 0


class _Table:
    """The table as :class:`StateStore` uses it: its ``data``."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}


def run(case: Case, config: AggregationConfig, batch: int) -> tuple[Timings, str]:
    """Process the case batch by batch; return stage timings and the output digest."""
    reader = reader_schema()
    encode_window = window_encoder(default_registry().latest(CROSSING_WINDOW))
    states: dict[str, CrossingState] = {}
    store = StateStore(_Table(), config)
    digest = hashlib.sha256()
    windows_digest = hashlib.sha256()
    tm = Timings()
    clock = time.perf_counter
    msgs = case.messages
    for b in range(0, len(msgs), batch):
        t0 = clock()
        accepted, _dead = intake(msgs[b : b + batch], reader)
        t1 = clock()
        touched: dict[str, None] = {}
        for item in accepted:
            cid = item.record["crossing_id"]
            st = states.get(cid)
            if st is None:
                st = states[cid] = CrossingState(cid, config)
            st.apply(item.record, item.partition, item.offset)
            touched[cid] = None
        t2 = clock()
        for cid in touched:
            st = states[cid]
            store.write(0, st, st.has_changes())
            store.commit()
            for _, key, data in store.take():
                tm.state_bytes += len(key) + len(data or b"")
                digest.update(key + (data or b""))
        t3 = clock()
        rows: list[dict[str, Any]] = []
        for cid in touched:
            rows.extend(states[cid].take_changed())
        t4 = clock()
        for row in rows:
            row["updated_at"] = UPDATED_AT
            digest.update(encode_window(row))
            windows_digest.update(encode_window(row))
        t5 = clock()
        tm.windows_out += len(rows)
        tm.intake += t1 - t0
        tm.apply += t2 - t1
        tm.state += t3 - t2
        tm.windows += t4 - t3
        tm.encode += t5 - t4
    print(f"{case.name}: windows digest {windows_digest.hexdigest()[:16]}")
    return tm, digest.hexdigest()


def _total(tm: Timings) -> float:
    return tm.intake + tm.apply + tm.state + tm.windows + tm.encode


def make_case(name: str, scale: float) -> Case:
    """One of the named inputs."""
    if name == "dense":
        return synthetic("dense", 20, int(60_000 * scale), 5_000)
    if name == "sparse":
        return synthetic("sparse", 200, int(30_000 * scale), MINUTE)
    if name == "sim":
        return simulated(int(30_000 * scale))
    if name == "long":
        return synthetic("long", 5, int(60_000 * scale), 10_000)
    raise SystemExit(f"unknown case {name!r}; choose dense, sparse, sim or long")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen cases and print one line per case."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="dense,sparse,sim")
    parser.add_argument("--batch", type=int, default=5000, help="reports per batch")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the input sizes")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the fastest is shown")
    parser.add_argument("--profile", action="store_true", help="print a cProfile summary")
    args = parser.parse_args(argv)
    config = AggregationConfig.from_spec("1h:1h:5m,3h:3h:15m,24h:24h:1h", "2h")
    for name in args.case.split(","):
        case = make_case(name.strip(), args.scale)
        n = len(case.messages)
        prof = cProfile.Profile() if args.profile else None
        if prof:
            prof.enable()
        best: tuple[Timings, str] | None = None
        for _ in range(max(args.repeat, 1)):  # a shared machine is noisy: keep the fastest
            tm, digest = run(case, config, args.batch)
            if best is None or _total(tm) < _total(best[0]):
                best = (tm, digest)
        assert best is not None
        tm, digest = best
        if prof:
            prof.disable()
            pstats.Stats(prof).sort_stats("cumulative").print_stats(35)
        total = _total(tm)
        print(
            f"{case.name:6s} reports={n} windows={tm.windows_out} "
            f"total={n / total:,.0f} reports/s ({tm.windows_out / total:,.0f} windows/s) | "
            f"intake {n / tm.intake:,.0f}/s apply {n / tm.apply:,.0f}/s "
            f"state {n / tm.state:,.0f}/s ({tm.state_bytes / 1e6:.1f} MB) "
            f"window-compute {tm.windows_out / max(tm.windows, 1e-9):,.0f} rows/s "
            f"window-encode {tm.windows_out / max(tm.encode, 1e-9):,.0f} rows/s | "
            f"digest {digest[:16]}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
