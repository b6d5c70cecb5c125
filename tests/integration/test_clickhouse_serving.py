"""The serving views (migration 0004) on the real embedded engine: ``current_windows`` and
``crossing_status`` read ``window_latest``, which a materialized view keeps from the inserts
into ``crossing_windows``.

The windows come from a tiny plain-Python aggregation of known reports, emitted version by
version (some versions coalesced away), inserted in shuffled batches, one batch replayed with
its token and one with another token, part of them before 0004 is applied (the backfill) and
the rest after (the materialized view). The expected rows follow 0003's definition of the
current window, computed over the newest version of every window: independent of the
packed ``pick_order`` the engine uses.
"""

from __future__ import annotations

import random
import shutil
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from queuewatch.clickhouse.client import connect
from queuewatch.clickhouse.migrations import migrate
from queuewatch.contract.schemas import CROSSING_WINDOW, default_registry
from queuewatch.resources import migrations_dir
from queuewatch.sinks.windows import window_columns
from queuewatch.sinks.writer import ClickHouseWriter

pytestmark = pytest.mark.integration

DB = "qw_serving"
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
#: (name, size, step): the aggregator's default families.
FAMILIES = [
    ("1h", HOUR_MS, 5 * MINUTE_MS),
    ("3h", 3 * HOUR_MS, 15 * MINUTE_MS),
    ("24h", 24 * HOUR_MS, HOUR_MS),
]
BASE_MS = 1_741_564_800_000  # 2025-03-10 00:00 UTC
CROSSING = "ge-ru-verkhny-lars"
KEY_FIELDS = ("crossing_id", "from_country", "to_country", "traffic_class")
Key = tuple[str, str, str, str]


@dataclass(frozen=True)
class Report:
    key: Key
    seq: int  # the crossing's log order: the version the aggregator gives
    at: int  # observed_at, UTC ms
    source: str
    wait: int | None
    vehicles: int | None
    length_km: float | None
    status: str


def reports() -> list[Report]:
    """Two keys of one crossing over about 5 hours; some reports arrive late (log order is
    not time order). Waits grow in the last hour for the first key and shrink for the
    second, so the trend rule has something to say."""
    up: Key = (CROSSING, "RU", "GE", "car")
    down: Key = (CROSSING, "GE", "RU", "truck")
    plan: list[tuple[Key, int, str, int | None, int | None, float | None, str]] = [
        # key, minutes after BASE + 7h, source, wait, vehicles, km, status
        (up, 0, "feed", 30, 100, 1.5, "open"),
        (down, 5, "chat", 200, None, 4.0, "delay"),
        (up, 70, "chat", 35, None, None, "unknown"),
        (up, 130, "feed", 40, 120, 2.0, "delay"),
        (down, 140, "feed", 190, 300, None, "delay"),
        (up, 200, "cam", 90, 150, None, "delay"),
        (down, 210, "chat", 180, 280, 3.5, "unknown"),
        (up, 250, "feed", 120, None, 3.0, "restricted"),
        (down, 100, "cam", 210, 310, 4.5, "delay"),  # late: observed before the previous two
        (up, 265, "chat", None, 170, None, "unknown"),
        (down, 262, "feed", 60, 250, 3.0, "open"),
        (up, 180, "cam", 45, 140, 2.5, "delay"),  # late, inside the current 3h window of up
        (down, 268, "chat", 50, None, None, "unknown"),
    ]
    start = BASE_MS + 7 * HOUR_MS
    return [
        Report(key, seq, start + minutes * MINUTE_MS, source, wait, veh, km, status)
        for seq, (key, minutes, source, wait, veh, km, status) in enumerate(plan, start=1)
    ]


def window_record(
    key: Key, family: str, start: int, size: int, seen: list[Report]
) -> dict[str, Any]:
    """The aggregate of ``seen`` (the window's reports so far), as the contract's record."""

    def last(field: str) -> Any:
        have = [r for r in seen if getattr(r, field) is not None]
        return getattr(max(have, key=lambda r: (r.at, r.seq)), field) if have else None

    waits = [r.wait for r in seen if r.wait is not None]
    vehicles = [r.vehicles for r in seen if r.vehicles is not None]
    lengths = [r.length_km for r in seen if r.length_km is not None]
    statuses = [r for r in seen if r.status != "unknown"]
    return {
        "crossing_id": key[0],
        "from_country": key[1],
        "to_country": key[2],
        "traffic_class": key[3],
        "window_size": family,
        "window_start": start,
        "window_end": start + size,
        "reports": len(seen),
        "sources": len({r.source for r in seen}),
        "wait_minutes_min": min(waits) if waits else None,
        "wait_minutes_max": max(waits) if waits else None,
        "wait_minutes_avg": statistics.fmean(waits) if waits else None,
        "wait_minutes_p50": float(statistics.median(waits)) if waits else None,
        "wait_minutes_p90": float(max(waits)) if waits else None,
        "wait_minutes_last": last("wait"),
        "queue_vehicles_max": max(vehicles) if vehicles else None,
        "queue_vehicles_avg": statistics.fmean(vehicles) if vehicles else None,
        "queue_vehicles_last": last("vehicles"),
        "queue_length_km_max": max(lengths) if lengths else None,
        "queue_length_km_avg": statistics.fmean(lengths) if lengths else None,
        "queue_length_km_last": last("length_km"),
        "status_last": max(statuses, key=lambda r: (r.at, r.seq)).status if statuses else "unknown",
        "last_observed_at": max(r.at for r in seen),
        "version": max(r.seq for r in seen),
        "updated_at": BASE_MS + 10 * 24 * HOUR_MS + max(r.seq for r in seen),
        # v2's consensus fields: stand-ins from the same reports (the rule itself is tested in
        # tests/unit/test_consensus.py); here they only have to travel to crossing_status
        "consensus_wait_minutes": max(waits) if waits else None,
        "consensus_queue_vehicles": min(vehicles) if vehicles else None,
        "consensus_queue_length_km": max(lengths) if lengths else None,
        "source_wait_minutes_min": min(waits) if waits else None,
        "source_wait_minutes_max": max(waits) if waits else None,
        "wait_spread": (max(waits) - min(waits)) / max(waits) if waits and max(waits) else None,
        "confidence": ["low", "medium", "high"][len(seen) % 3],
        "confidence_reasons": [f"{len(seen)} reports in {family}"],
        "sources_by_type": {"crowd": len({r.source for r in seen})},
        "official_observed_at": min(r.at for r in seen),
    }


def emissions(all_reports: list[Report], rng: random.Random) -> list[dict[str, Any]]:
    """Every version of every window as the aggregator could emit it: after each report that
    changes the window, with about a third of the intermediate versions coalesced away."""
    out: list[dict[str, Any]] = []
    for family, size, step in FAMILIES:
        for key in {r.key for r in all_reports}:
            mine = [r for r in all_reports if r.key == key]
            starts = {r.at // step * step - k * step for r in mine for k in range(size // step)}
            for start in starts:
                inside = [r for r in mine if start <= r.at < start + size]
                for n in range(1, len(inside) + 1):
                    if n < len(inside) and rng.random() < 0.33:
                        continue  # coalesced: a later version of the window replaced it
                    out.append(window_record(key, family, start, size, inside[:n]))
    return out


def newest_versions(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """crossing_windows read with FINAL: the largest version of each window key."""
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = tuple(row[f] for f in (*KEY_FIELDS, "window_size", "window_start"))
        if key not in best or best[key]["version"] < row["version"]:
            best[key] = row
    return list(best.values())


def expected_current(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """0003's rule: per key and family, among the windows ending after the key's latest
    report, the one that starts first."""
    families: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in newest_versions(rows):
        families.setdefault(tuple(row[f] for f in (*KEY_FIELDS, "window_size")), []).append(row)
    current = {}
    for fam, windows in families.items():
        latest = max(w["last_observed_at"] for w in windows)
        current[fam] = min(
            (w for w in windows if w["window_end"] > latest), key=lambda w: w["window_start"]
        )
    return current


def trend(p50_1h: float | None, p50_3h: float | None) -> str:
    """The documented rule: the hour's median against the 3 hours' median."""
    if p50_1h is None or p50_3h is None:
        return "unknown"
    threshold = max(5.0, 0.1 * p50_3h)
    if p50_1h - p50_3h > threshold:
        return "rising"
    if p50_3h - p50_1h > threshold:
        return "falling"
    return "steady"


def expected_status(current: dict[tuple[Any, ...], dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for key in sorted({fam[:4] for fam in current}):
        by = {fam[4]: row for fam, row in current.items() if fam[:4] == key}
        row: dict[str, Any] = dict(zip(KEY_FIELDS, key, strict=True))
        row["last_report_at"] = max(w["last_observed_at"] for w in by.values())
        row["status"] = by["24h"]["status_last"]
        row["wait_minutes"] = by["24h"]["wait_minutes_last"]
        row["queue_vehicles"] = by["24h"]["queue_vehicles_last"]
        row["queue_length_km"] = by["24h"]["queue_length_km_last"]
        for family in ("1h", "3h", "24h"):
            w = by[family]
            row[f"reports_{family}"] = w["reports"]
            row[f"sources_{family}"] = w["sources"]
            row[f"wait_minutes_p50_{family}"] = w["wait_minutes_p50"]
            row[f"wait_minutes_p90_{family}"] = w["wait_minutes_p90"]
            row[f"wait_minutes_max_{family}"] = w["wait_minutes_max"]
            row[f"queue_vehicles_max_{family}"] = w["queue_vehicles_max"]
            row[f"queue_length_km_max_{family}"] = w["queue_length_km_max"]
        row["wait_trend"] = trend(row["wait_minutes_p50_1h"], row["wait_minutes_p50_3h"])
        three = by["3h"]
        for name in (
            "consensus_wait_minutes",
            "consensus_queue_vehicles",
            "consensus_queue_length_km",
        ):
            row[name] = three[name]
        row["consensus_wait_minutes_1h"] = by["1h"]["consensus_wait_minutes"]
        for name in (
            "source_wait_minutes_min",
            "source_wait_minutes_max",
            "wait_spread",
            "sources_by_type",
            "official_observed_at",
        ):
            row[name] = three[name]
        row["usual_interval_s"] = max(60, 86400 // max(1, by["24h"]["reports"]))
        row["stale"] = True  # the data is from 2025: far more than 3 usual intervals old
        row["confidence_event_time"] = three["confidence"]
        row["confidence"] = "low"  # stale lowers whatever the window said
        out.append(row)
    return out


def as_ms(value: Any) -> Any:
    """DateTime64 values as UTC milliseconds, the contract's unit; other values unchanged."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return round(aware.timestamp() * 1000)
    return value


def fetch(client: Any, sql: str) -> list[dict[str, Any]]:
    result = client.query(sql)
    return [
        {name: as_ms(v) for name, v in zip(result.column_names, row, strict=True)}
        for row in result.result_rows
    ]


@pytest.fixture
def client(chdb_url: str) -> Iterator[Any]:
    c = connect(chdb_url)
    try:
        yield c
    finally:
        c.close()


@dataclass
class Loaded:
    client: Any
    emitted: list[dict[str, Any]]


#: The fields crossing_window.avsc v2 added, with their defaults.
V2_ONLY = (
    default_registry()
    .latest(CROSSING_WINDOW)
    .raw["fields"][len(default_registry().versions(CROSSING_WINDOW)[0].raw["fields"]) :]
)


@pytest.fixture
def loaded(client: Any, tmp_path: Path) -> Loaded:
    """A database built with 0001-0003, given a third of the windows, migrated to 0004,
    then given the rest: shuffled batches, one replayed with its token, one with another."""
    rng = random.Random(7)
    emitted = emissions(reports(), rng)
    rng.shuffle(emitted)
    old = tmp_path / "migrations-0003"
    old.mkdir()
    for path in sorted(migrations_dir().glob("000[123]_*.sql")):
        shutil.copy(path, old / path.name)
    migrate(client, DB, old)
    v1 = default_registry().versions(CROSSING_WINDOW)[0]
    columns = window_columns(v1)  # what a sink of that release wrote
    writer = ClickHouseWriter(client, f"{DB}.crossing_windows", columns)
    batches = [emitted[i : i + 40] for i in range(0, len(emitted), 40)]
    before = len(batches) // 3
    for n, batch in enumerate(batches):
        if n == before:
            assert [m.version for m in migrate(client, DB)] == [4, 5, 6]
            columns = window_columns()
            writer = ClickHouseWriter(client, f"{DB}.crossing_windows", columns)
        if n < before:  # v1 rows read v2's defaults
            for r in batch:
                r.update({f["name"]: f["default"] for f in V2_ONLY})
        writer.write([[r[c] for c in columns] for r in batch], f"windows:0:{n}")
    writer.write([[r[c] for c in columns] for r in batches[-1]], f"windows:0:{len(batches) - 1}")
    writer.write([[r[c] for c in columns] for r in batches[-2]], "windows:0:replay-other-bounds")
    return Loaded(client, emitted)


def test_current_windows_is_the_window_ending_soonest_after_each_keys_latest_report(
    loaded: Loaded,
) -> None:
    want = sorted(
        expected_current(loaded.emitted).values(),
        key=lambda w: tuple(w[f] for f in (*KEY_FIELDS, "window_size")),
    )
    got = fetch(
        loaded.client,
        f"SELECT * FROM {DB}.current_windows "
        "ORDER BY crossing_id, from_country, to_country, traffic_class, window_size",
    )
    assert len(want) == 6  # 2 keys x 3 families
    assert got == want


def test_crossing_status_holds_the_current_figures_latest_values_and_trend_of_each_key(
    loaded: Loaded,
) -> None:
    want = expected_status(expected_current(loaded.emitted))
    got = fetch(
        loaded.client,
        f"SELECT * EXCEPT (last_report_age_s, freshness_s) FROM {DB}.crossing_status "
        "ORDER BY crossing_id, from_country, to_country, traffic_class",
    )
    assert {r["wait_trend"] for r in want} == {"rising", "falling"}  # the data says something
    # The stale reason leads (its age is the wall clock's), then the 3-hour window's own.
    for row, expected in zip(got, want, strict=True):
        stale_reason, *window_reasons = row.pop("confidence_reasons")
        assert (
            stale_reason.startswith("no report for ") and "(stale: usually every " in stale_reason
        )
        key = (*(expected[f] for f in KEY_FIELDS), "3h")
        assert window_reasons == current_reasons(loaded.emitted)[key]
    assert got == want


def current_reasons(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], list[str]]:
    return {fam: w["confidence_reasons"] for fam, w in expected_current(rows).items()}


def test_crossing_status_age_is_seconds_since_the_latest_report(loaded: Loaded) -> None:
    rows = fetch(
        loaded.client,
        f"SELECT last_report_at, last_report_age_s, toUnixTimestamp64Milli(now64(3)) AS now_ms "
        f"FROM {DB}.crossing_status",
    )
    for row in rows:
        assert abs(row["last_report_age_s"] - (row["now_ms"] - row["last_report_at"]) / 1000) <= 2


def test_window_latest_holds_one_row_per_key_and_family_once_merged(loaded: Loaded) -> None:
    loaded.client.command(f"OPTIMIZE TABLE {DB}.window_latest FINAL")
    rows = loaded.client.query(f"SELECT count() FROM {DB}.window_latest").result_rows
    assert rows == [(6,)]


def test_serving_views_answer_on_a_fresh_database_with_no_rows(client: Any) -> None:
    migrate(client, DB)
    for view in ("crossing_status", "current_windows", "crossing_report_summary"):
        assert client.query(f"SELECT * FROM {DB}.{view}").result_rows == []
