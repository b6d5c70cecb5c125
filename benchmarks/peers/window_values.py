"""What both peers compute the same way: the Avro framing and a closed window's values.

The Quix Streams and the Bytewax peers differ in how they window a stream, not in what a
window's figures are, so those live here once. The module needs only fastavro and ddsketch:
both peer venvs have them, and it imports nothing from queuewatch, whose pins the peers
cannot share. Nothing here does I/O.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import fastavro
from ddsketch.mapping import LogarithmicMapping
from fastavro.schema import fingerprint, to_parsing_canonical_form

MAGIC = b"\xc3\x01"
MINUTE = 60_000
HOUR = 60 * MINUTE
#: name -> (size, step), as the aggregator's defaults (issue 4).
WINDOWS = {"1h": (HOUR, 5 * MINUTE), "3h": (3 * HOUR, 15 * MINUTE), "24h": (24 * HOUR, HOUR)}
GRACE_MS = 2 * HOUR
MAPPING = LogarithmicMapping(0.01)

#: A report as the windows keep it (see :func:`compact`): positions in that list.
GROUP, OBSERVED_AT, SOURCE, WAIT, VEHICLES, LENGTH_KM, STATUS = range(7)


def load_schema(path: Path) -> tuple[Any, bytes]:
    """A parsed schema and its 8-byte CRC-64-AVRO fingerprint, as queuewatch computes it."""
    raw = json.loads(path.read_text())
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO"))
    return fastavro.parse_schema(raw), fp


class ReportDecoder:
    """Single-object Avro bytes -> QueueReport dict (only the schema version we know)."""

    def __init__(self, schemas_dir: Path) -> None:
        self.schema, self.fp = load_schema(schemas_dir / "queue_report.avsc")

    def __call__(self, value: bytes) -> dict[str, Any]:
        if value[:2] != MAGIC or value[2:10] != self.fp:
            raise ValueError("not a QueueReport v1 single-object payload")
        record = fastavro.schemaless_reader(io.BytesIO(value[10:]), self.schema, None)
        if not isinstance(record, dict):
            raise ValueError("a QueueReport payload that does not decode to a record")
        return record


class WindowEncoder:
    """CrossingWindow dict -> single-object Avro bytes."""

    def __init__(self, schemas_dir: Path) -> None:
        self.schema, self.fp = load_schema(schemas_dir / "crossing_window.avsc")

    def __call__(self, value: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(self.fp)
        fastavro.schemaless_writer(buf, self.schema, value)
        return buf.getvalue()


def compact(r: dict[str, Any]) -> list[Any]:
    """The fields the windows need, as a short list: it is stored once per report per window
    family, so a small value keeps the peers' window state small."""
    group = f"{r['from_country']}|{r['to_country']}|{r['traffic_class']}"
    return [group, r["observed_at"], r["source"]["name"], r["wait_minutes"],
            r["queue_vehicles"], r["queue_length_km"], r["status"]]  # fmt: skip


def quantile(values: list[int], q: float) -> float | None:
    """DDSketch's answer (1 % relative accuracy): rank q·(n-1) over the zero bucket, then bins."""
    if not values:
        return None
    zero = 0
    bins: dict[int, int] = {}
    for w in values:
        if w > MAPPING.min_possible:
            k = MAPPING.key(w)
            bins[k] = bins.get(k, 0) + 1
        else:
            zero += 1
    rank = q * (len(values) - 1)
    if rank < zero:
        return 0.0
    rank -= zero
    running = 0
    for k in sorted(bins):
        running += bins[k]
        if running > rank:
            return float(MAPPING.value(k))
    return float(MAPPING.value(max(bins)))


def _last(pairs: list[tuple[int, Any]]) -> Any:
    """Value with the latest observed_at; ties go to the later one in the log (max is stable
    on the first maximum, so scan for the last)."""
    best_t, best = None, None
    for t, v in pairs:
        if best_t is None or t >= best_t:
            best_t, best = t, v
    return best


def summarize(group: list[list[Any]]) -> dict[str, Any]:
    """The metrics of one window for one (direction, class), from its reports in log order."""
    waits = [(r[OBSERVED_AT], r[WAIT]) for r in group if r[WAIT] is not None]
    vehicles = [(r[OBSERVED_AT], r[VEHICLES]) for r in group if r[VEHICLES] is not None]
    lengths = [(r[OBSERVED_AT], r[LENGTH_KM]) for r in group if r[LENGTH_KM] is not None]
    statuses = [(r[OBSERVED_AT], r[STATUS]) for r in group if r[STATUS] != "unknown"]
    w = [v for _, v in waits]
    veh = [v for _, v in vehicles]
    km = [v for _, v in lengths]
    return {
        "reports": len(group),
        "sources": len({r[SOURCE] for r in group}),
        "wait_minutes_min": min(w) if w else None,
        "wait_minutes_max": max(w) if w else None,
        "wait_minutes_avg": sum(w) / len(w) if w else None,
        "wait_minutes_p50": quantile(w, 0.5),
        "wait_minutes_p90": quantile(w, 0.9),
        "wait_minutes_last": _last(waits),
        "queue_vehicles_max": max(veh) if veh else None,
        "queue_vehicles_avg": sum(veh) / len(veh) if veh else None,
        "queue_vehicles_last": _last(vehicles),
        "queue_length_km_max": max(km) if km else None,
        "queue_length_km_avg": sum(km) / len(km) if km else None,
        "queue_length_km_last": _last(lengths),
        "status_last": _last(statuses) or "unknown",
        "last_observed_at": max(r[OBSERVED_AT] for r in group),
    }


def window_records(
    size_name: str, crossing: str, start: int, end: int, reports: list[list[Any]]
) -> list[dict[str, Any]]:
    """One CrossingWindow record per (direction, class) of a closed window of one crossing."""
    now = int(time.time() * 1000)
    groups: dict[str, list[list[Any]]] = {}
    for r in reports:
        groups.setdefault(r[GROUP], []).append(r)
    out = []
    for group, members in groups.items():
        frm, to, cls = group.split("|")
        out.append(
            {
                "crossing_id": crossing,
                "from_country": frm,
                "to_country": to,
                "traffic_class": cls,
                "window_size": size_name,
                "window_start": start,
                "window_end": end,
                **summarize(members),
                "version": 1,
                "updated_at": now,
            }
        )
    return out
