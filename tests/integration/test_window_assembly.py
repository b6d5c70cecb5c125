"""Windows assembled in ClickHouse from contributions equal the aggregator's own, field by field.

The reference is ``CrossingState``: random logs (late reports within and beyond the grace,
re-sent duplicates, a quiet spell that seals the crossing, six source types that agree and
disagree) are applied as the app applies them, and every window it emits is kept at its
newest version. The subject is the same log's contributions, inserted into a real embedded
ClickHouse and read back through ``assembly.windows_select``. Equality is exact: floats
to the bit, reason sentences to the letter.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from queuewatch.aggregator.contributions import COLUMNS, contribution_row
from queuewatch.aggregator.state import AggregationConfig, CrossingState, Outcome
from queuewatch.clickhouse.assembly import windows_select
from queuewatch.clickhouse.client import connect
from queuewatch.clickhouse.migrations import migrate

pytestmark = pytest.mark.integration

HOUR = 3_600_000
MINUTE = 60_000
T0 = 1_663_977_600_000  # 2022-09-24T00:00:00Z
CONFIG = AggregationConfig.from_spec("1h:1h:5m,3h:3h:15m,24h:24h:1h", "2h")
#: The aggregator with output ``contributions``: no panes, the same decisions.
LEAN = AggregationConfig.from_spec("1h:1h:5m,3h:3h:15m,24h:24h:1h", "2h", panes=False)
DB = "qw_assembly"
TYPES = ["official_feed", "official_statement", "sensor", "satellite", "journalist", "crowd"]
#: A quiet spell longer than the dedup horizon: the crossing is sealed, then wakes up.
SILENCE = 30 * HOUR


def report(rng: random.Random, cid: str, t: int, n: int) -> dict[str, Any]:
    name = rng.randrange(6)
    return {
        "event_id": f"{cid}-{n}" if rng.random() > 0.05 else f"{cid}-{rng.randrange(n + 1)}",
        "crossing_id": cid,
        "from_country": "RU",
        "to_country": "GE",
        "traffic_class": rng.choice(["car", "truck"]),
        "observed_at": t,
        # a source keeps its type most of the time, and sometimes reports as another
        "source": {
            "type": TYPES[name] if rng.random() > 0.1 else rng.choice(TYPES),
            "name": f"src-{name}",
            "url": None,
        },
        "wait_minutes": rng.choice([None, 0, rng.randrange(20), rng.randrange(3000)]),
        "queue_vehicles": rng.choice([None, rng.randrange(3000)]),
        "queue_length_km": rng.choice([None, 0.0, rng.random() * 40, rng.randrange(30) * 1.609]),
        "status": rng.choice(["open", "unknown", "closed", "delay"]),
    }


def replay(
    rng: random.Random, cid: str, count: int, minutes_per_report: int
) -> tuple[dict[tuple[Any, ...], dict[str, Any]], list[dict[str, Any]]]:
    """The reference windows (newest version of each) and the contributions of one log.

    The contributions come from a second state without panes (output ``contributions``),
    fed the same log: it must decide exactly as the reference does.
    """
    state = CrossingState(cid, CONFIG)
    lean = CrossingState(cid, LEAN)
    windows: dict[tuple[Any, ...], dict[str, Any]] = {}
    contributions: list[dict[str, Any]] = []

    def take() -> None:
        for row in state.take_changed():
            key = tuple(row[k] for k in ("traffic_class", "window_size", "window_start"))
            if key not in windows or windows[key]["version"] <= row["version"]:
                windows[key] = row

    t = T0
    clock = T0
    for n in range(count):
        t += minutes_per_report * MINUTE
        if n == count // 2:
            t += SILENCE
        # mostly in order; some up to 90 min late (within the grace), a few 3-6 h late
        late = rng.choice([0] * 12 + [rng.randrange(90 * MINUTE), rng.randrange(3, 6) * HOUR])
        record = report(rng, cid, t - late, n)
        if record["observed_at"] - clock > SILENCE // 2:
            clock = record["observed_at"] - 1  # other crossings move the partition's clock
        state.seal_if_idle(clock)
        lean.seal_if_idle(clock)
        wm0, sealed = lean.watermark, lean.sealed
        outcome = state.apply(record, 0, n)
        assert lean.apply(record, 0, n) is outcome
        if outcome in (Outcome.ACCEPTED, Outcome.LATE):
            assert lean.added[-1] == state.added[-1]
            contributions.append(
                contribution_row(cid, lean.added[-1], wm0, sealed, CONFIG.grace, T0)
            )
        clock = max(clock, record["observed_at"])
        if rng.random() < 0.2:
            take()
    take()
    return windows, contributions


@pytest.fixture
def client(chdb_url: str) -> Iterator[Any]:
    c = connect(chdb_url)
    c.command(f"CREATE DATABASE IF NOT EXISTS {DB}")
    migrate(c, DB)
    try:
        yield c
    finally:
        c.close()


def ms(value: Any) -> Any:
    if isinstance(value, datetime):
        return int(value.replace(tzinfo=value.tzinfo or UTC).timestamp() * 1000)
    return value


def assembled(client: Any, contributions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    columns = [
        [
            datetime.fromtimestamp(r[c] / 1000, UTC) if c in ("observed_at", "updated_at") else r[c]
            for r in contributions
        ]
        for c in COLUMNS
    ]
    client.insert(
        f"{DB}.crossing_contributions", columns, column_names=list(COLUMNS), column_oriented=True
    )
    sql = windows_select(CONFIG.families, CONFIG.consensus, CONFIG.consensus_max_size, DB)
    result = client.query(sql)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def compare(
    reference: dict[tuple[Any, ...], dict[str, Any]], rows: list[dict[str, Any]]
) -> list[str]:
    got = {(r["traffic_class"], r["window_size"], ms(r["window_start"])): r for r in rows}
    problems = []
    for key in sorted(set(reference) | set(got)):
        if key not in got:
            problems.append(f"{key}: missing from the assembled windows")
            continue
        if key not in reference:
            problems.append(f"{key}: assembled, but the aggregator has no such window")
            continue
        want, have = reference[key], got[key]
        for field, value in want.items():
            if field == "updated_at":
                continue
            other = ms(have[field])
            if field == "sources_by_type":
                other = dict(other)
            if field == "confidence_reasons":
                other = list(other)
            if other != value or type(other) is not type(value):  # 1 != 1.0 here
                problems.append(f"{key} {field}: aggregator {value!r}, assembled {other!r}")
    return problems


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_assembled_windows_equal_the_aggregators_to_the_bit(client: Any, seed: int) -> None:
    rng = random.Random(seed)
    reference: dict[tuple[Any, ...], dict[str, Any]] = {}
    contributions: list[dict[str, Any]] = []
    # a busy crossing (a report every minute) and a sparse one (every 20 minutes)
    for cid, count, every in (("ge-ru-verkhny-lars", 1500, 1), ("kz-ru-syrym", 300, 20)):
        windows, rows = replay(rng, cid, count, every)
        reference.update({(cid, *k): v for k, v in windows.items()})
        contributions += rows
    rows = assembled(client, contributions)
    problems = []
    for cid in ("ge-ru-verkhny-lars", "kz-ru-syrym"):
        problems += compare(
            {k[1:]: v for k, v in reference.items() if k[0] == cid},
            [r for r in rows if r["crossing_id"] == cid],
        )
    assert not problems, f"{len(problems)} differences, first ones:\n" + "\n".join(problems[:15])
    assert len(rows) == len(reference) > 500
    confidences = {r["confidence"] for r in rows}
    assert {"high", "medium", "low", "unknown"} <= confidences, confidences


def test_the_contributions_sink_counts_every_row_its_assemblies_write(client: Any) -> None:
    """``AssemblingWriter.windows_written`` is what `rows written downstream` reports: on
    chdb it comes from the engine's insert counter, so it must equal the rows that landed
    (crossing_windows and, through its view, window_latest), and count a rewrite again."""
    from queuewatch.sinks.contributions import AssemblingWriter
    from queuewatch.sinks.writer import ClickHouseWriter

    _, contributions = replay(random.Random(7), "kz-ru-syrym", 200, 20)
    rows = [tuple(c[k] for k in COLUMNS) for c in contributions]  # as the sink decodes them
    inner = ClickHouseWriter(client, f"{DB}.crossing_contributions", COLUMNS)
    writer = AssemblingWriter(client, inner, CONFIG, DB)
    writer.write(rows, "batch-1")

    def count(table: str, final: str = "") -> int:
        return int(client.command(f"SELECT count() FROM {DB}.{table} {final}"))

    first = writer.windows_written
    assert first == count("crossing_windows") + count("window_latest") > len(rows)
    windows = count("crossing_windows", "FINAL")
    writer.write(rows, "batch-1")  # a replay after a crash: the contributions are deduplicated,
    assert writer.windows_written == 2 * first  # the windows written again, the same rows
    assert count("crossing_windows", "FINAL") == windows


def test_hostile_crossing_ids_in_contributions_are_data_not_sql(client: Any) -> None:
    """The contributions topic is an entry point: whoever can write it chooses the crossing
    ids the assembly puts into its SQL (the batch's lanes are a literal). Ids built to break
    out of that literal must come back as the same strings, and nothing else may run."""
    from queuewatch.sinks.contributions import AssemblingWriter
    from queuewatch.sinks.writer import ClickHouseWriter

    ids = [
        f"x'); DROP TABLE {DB}.crossing_windows; --",
        "ends in a backslash\\",
        "\\'",
        "' OR 1=1 --",
        'line\nbreak\ttab"quote',
        "nul\x00byte",
        "ünï©ødé",
        "{{database}}",
        "a" * 5000,
    ]
    rows = []
    for cid in ids:
        _, contributions = replay(random.Random(1), cid, 5, 20)
        rows += [tuple(c[k] for k in COLUMNS) for c in contributions]
    writer = AssemblingWriter(
        client, ClickHouseWriter(client, f"{DB}.crossing_contributions", COLUMNS), CONFIG, DB
    )
    writer.write(rows, "hostile")
    result = client.query(f"SELECT DISTINCT crossing_id FROM {DB}.crossing_windows")
    assert {r[0] for r in result.result_rows} == set(ids)
    tables = {r[0] for r in client.query(f"SHOW TABLES FROM {DB}").result_rows}
    assert {"crossing_windows", "crossing_contributions", "window_latest"} <= tables
