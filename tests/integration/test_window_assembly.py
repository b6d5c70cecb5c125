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
from queuewatch.clickhouse.serving import serve_assembled

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
    rng: random.Random,
    cid: str,
    count: int,
    minutes_per_report: int,
    bus: dict[int, int] | None = None,
) -> tuple[dict[tuple[Any, ...], dict[str, Any]], list[dict[str, Any]]]:
    """The reference windows (newest version of each) and the contributions of one log.

    The contributions come from a second state without panes (output ``contributions``),
    fed the same log: it must decide exactly as the reference does. ``bus``: report ``n``
    is sent instead on the lane of class ``bus``, ``bus[n]`` ms behind the log's time.
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
        if bus and n in bus:
            record = {**report(rng, cid, t - bus[n], n), "traffic_class": "bus"}
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


def test_hostile_crossing_ids_in_contributions_are_data_not_sql(client: Any) -> None:
    """The contributions topic is an entry point: whoever can write it chooses the crossing
    ids. They are data in every query of the assembled layout (no id enters an SQL text):
    ids built to break out of a literal must come back as the same strings through the
    views, and nothing else may run."""
    ids = [
        f"x'); DROP TABLE {DB}.crossing_contributions; --",
        "ends in a backslash\\",
        "\\'",
        "' OR 1=1 --",
        'line\nbreak\ttab"quote',
        "nul\x00byte",
        "ünï©ødé",
        "{{database}}",
        "{since:String}",
        "a" * 5000,
    ]
    contributions = []
    for cid in ids:
        contributions += replay(random.Random(1), cid, 5, 20)[1]
    assembled(client, contributions)
    serve_assembled(client, DB, CONFIG)
    for view in ("crossing_windows", "current_windows", "crossing_status"):
        result = client.query(f"SELECT DISTINCT crossing_id FROM {DB}.{view}")
        assert {r[0] for r in result.result_rows} == set(ids), view
    tables = {r[0] for r in client.query(f"SHOW TABLES FROM {DB}").result_rows}
    assert {"crossing_windows", "crossing_contributions", "window_latest"} <= tables


def test_a_stored_database_switches_to_assembled_windows_and_keeps_its_rows(client: Any) -> None:
    """``serve_assembled`` on a database migrated for stored windows: the window tables
    become views (rows kept as ``*_stored``), every view on them reads the assembled
    windows, a second call changes nothing, and the window sink is refused after it."""
    from queuewatch.clickhouse import serving
    from queuewatch.errors import ConfigurationError

    windows, contributions = replay(random.Random(11), "kz-ru-syrym", 150, 20)
    row = next(iter(windows.values()))
    client.insert(
        f"{DB}.crossing_windows",
        [[row["crossing_id"], row["window_size"]]],
        column_names=["crossing_id", "window_size"],
    )
    assert serving.layout(client, DB) == "stored"
    serving.require_stored(client, DB, "the window sink")  # no complaint yet
    assembled(client, contributions)
    done = serve_assembled(client, DB, CONFIG)
    assert any("crossing_windows_stored" in line for line in done), done
    assert serving.layout(client, DB) == "assembled"
    tables = {r[0] for r in client.query(f"SHOW TABLES FROM {DB}").result_rows}
    assert {"crossing_windows_stored", "window_latest_stored"} <= tables  # both kept
    assert "window_latest_mv" not in tables
    assert serve_assembled(client, DB, CONFIG) == []  # as its settings want: no DDL
    kept = client.command(f"SELECT count() FROM {DB}.crossing_windows_stored")
    assert int(kept) == 1

    got = client.query(f"SELECT * FROM {DB}.crossing_windows FINAL")
    rows = [dict(zip(got.column_names, r, strict=True)) for r in got.result_rows]
    assert not compare(windows, rows) and len(rows) == len(windows)
    current = client.query(f"SELECT * FROM {DB}.current_windows")
    lanes = latest({("kz-ru-syrym", *k): v for k, v in windows.items()})
    assert len(current.result_rows) == len(lanes) == 6  # car and truck, three families
    status = client.query(
        f"SELECT traffic_class, reports_24h, confidence FROM {DB}.crossing_status"
    ).result_rows
    by_class = {r[0]: r for r in status}
    for (_, traffic_class, size), want in lanes.items():
        if size == "24h":
            assert by_class[traffic_class][1] == want["reports"]
        if size == "3h":  # crossing_status's confidence is the 3 h window's (when fresh)
            assert by_class[traffic_class][2] in (want["confidence"], "low")
    with pytest.raises(ConfigurationError, match="view over crossing_contributions"):
        serving.require_stored(client, DB, "the window sink")


def latest(reference: dict[tuple[Any, ...], dict[str, Any]]) -> dict[tuple[Any, ...], dict]:
    """``window_latest``'s rule over the reference windows (0004): per lane and family, the
    row with the latest report, then the soonest end, then the newest version."""
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    for key, row in reference.items():
        lane = (key[0], row["traffic_class"], row["window_size"])
        rank = (row["last_observed_at"], -row["window_end"], row["version"])
        old = best.get(lane)
        if old is None or rank > (old["last_observed_at"], -old["window_end"], old["version"]):
            best[lane] = row
    return best


@pytest.mark.parametrize("seed", [4, 5])
def test_current_windows_are_window_latests_rows(client: Any, seed: int) -> None:
    """``windows_select(current=True)`` (the ``window_latest`` of output contributions) gives,
    per lane and family, exactly the window the materialized ``window_latest`` keeps."""
    rng = random.Random(seed)
    reference: dict[tuple[Any, ...], dict[str, Any]] = {}
    contributions: list[dict[str, Any]] = []
    # The bus lanes get two reports: one in order, then one 3 h 10 min late, later than the
    # grace (2 h), that no 1 h window takes and only the 3 h windows ending after the
    # watermark - grace do. The lane's current 1 h window is then the first report's.
    for cid, count, every, bus in (
        ("ge-ru-verkhny-lars", 600, 1, {300: 0, 599: 190 * MINUTE}),
        ("kz-ru-syrym", 120, 20, {105: 0, 119: 190 * MINUTE}),
    ):
        windows, rows = replay(rng, cid, count, every, bus)
        reference.update({(cid, *k): v for k, v in windows.items()})
        contributions += rows
    assembled(client, contributions)
    sql = windows_select(
        CONFIG.families, CONFIG.consensus, CONFIG.consensus_max_size, DB, current=True
    )
    result = client.query(sql)
    rows = [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]
    want = latest(reference)
    got = {(r["crossing_id"], r["traffic_class"], r["window_size"]): r for r in rows}
    assert set(got) == set(want) and len(want) == 18
    problems = []
    for lane, row in want.items():
        problems += compare(
            {(row["traffic_class"], row["window_size"], row["window_start"]): row},
            [got[lane]],
        )
    assert not problems, "\n".join(problems[:15])


def _row(cid: str, t: int, seq: int, end_after: int, start_after: int) -> dict[str, Any]:
    """A hand-made contribution of lane (cid, RU, GE, car)."""
    return {
        "crossing_id": cid, "from_country": "RU", "to_country": "GE", "traffic_class": "car",
        "observed_at": t, "seq": seq, "event_id": f"{cid}-{seq}", "end_after": end_after,
        "start_after": start_after, "source": f"s{seq}", "source_type": "sensor",
        "wait_minutes": 10 * seq, "wait_bin": float(10 * seq), "queue_vehicles": None,
        "queue_length_km": None, "status": "open", "updated_at": T0,
    }  # fmt: skip


def _current_by_the_rule(rows: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[int, ...]]:
    """0004's rule, by enumeration: per lane and family, among the windows holding an
    accepted report, the one with the latest report, then the soonest end."""
    windows: dict[tuple[str, str, int], list[int]] = {}
    for r in rows:
        t = r["observed_at"]
        for f in CONFIG.families:
            for s in f.window_starts(t):
                if s + f.size > r["end_after"] and s > r["start_after"]:
                    windows.setdefault((r["crossing_id"], f.name, s), []).append(t)
    best: dict[tuple[str, str], tuple[int, ...]] = {}
    for (cid, name, s), ts in windows.items():
        size = next(f.size for f in CONFIG.families if f.name == name)
        rank = (max(ts), -(s + size))
        old = best.get((cid, name))
        if old is None or rank > (old[2], -old[1]):
            best[(cid, name)] = (s, s + size, max(ts), len(ts))
    return best


def test_current_windows_in_the_edge_cases_of_the_rule(client: Any) -> None:
    """Hand-made lanes where a wrong bound would pick another window than 0004's rule:
    reports at the same time with different bounds (the lowest counts), a sealed crossing
    whose bound is the binding one, a lane no 1 h window took, and a report at t = 0."""
    far = -(1 << 62)
    t = T0 + 10 * HOUR + 7 * MINUTE
    rows = [
        # ties: the second report at t came after the watermark moved, later windows only
        _row("tie", t - 40 * MINUTE, 1, far, far),
        _row("tie", t, 2, t - 2 * HOUR - 50 * MINUTE, far),
        _row("tie", t, 3, t + 20 * MINUTE, far),
        # sealed at t - 20 min: windows must start after it
        _row("sealed", t - 30 * MINUTE, 1, far, far),
        _row("sealed", t, 2, t - 2 * HOUR, t - 20 * MINUTE),
        # taken by no 1 h window (end_after beyond t + 1 h), by some 3 h and 24 h ones
        _row("late", t, 1, t + HOUR + 5 * MINUTE, far),
        # the epoch's first millisecond
        _row("epoch", 0, 1, far, far),
    ]
    assembled(client, rows)
    sql = windows_select(
        CONFIG.families, CONFIG.consensus, CONFIG.consensus_max_size, DB, current=True
    )
    result = client.query(sql)
    got = {
        (r[0], r[1]): (ms(r[2]), ms(r[3]), ms(r[4]), r[5])
        for r in client.query(
            f"SELECT crossing_id, window_size, window_start, window_end, last_observed_at, "
            f"reports FROM ({sql})"
        ).result_rows
    }
    want = _current_by_the_rule(rows)
    assert got == want
    assert len(result.result_rows) == len(want) == 11  # "late" has no 1 h window
    assert ("late", "1h") not in got and ("epoch", "1h") in got
    # the tie: the lowest bound among the reports at t picks the window
    assert got[("tie", "1h")][0] == CONFIG.families[0].first_window_start(t)
    assert got[("sealed", "1h")][0] > t - 20 * MINUTE


def test_an_interrupted_switch_is_finished_by_the_next_call(client: Any) -> None:
    """A crash after ``window_latest_mv`` was dropped and the window table renamed: the
    window sink is refused with what to do, and the next ``serve_assembled`` finishes."""
    from queuewatch.clickhouse import serving
    from queuewatch.errors import ConfigurationError

    client.command(f"DROP VIEW {DB}.window_latest_mv")
    with pytest.raises(ConfigurationError, match="window_latest_mv is missing"):
        serving.require_stored(client, DB, "the window sink")
    client.command(f"DROP TABLE {DB}.crossing_windows")  # ... and it was empty
    assert serving.layout(client, DB) == "assembled"
    done = serve_assembled(client, DB, CONFIG)
    assert done == [
        "dropped the empty table window_latest",
        "made the view crossing_windows",
        "made the view window_latest",
    ]
    assert int(client.command(f"SELECT count() FROM {DB}.crossing_status")) == 0


def test_the_two_window_sinks_never_share_a_database() -> None:
    from queuewatch.errors import ConfigurationError
    from queuewatch.sinks.runner import serve_windows

    with pytest.raises(ConfigurationError, match="cannot share a database"):
        serve_windows(None, DB, ["raw", "windows", "contributions"])


class _Crashing:
    """A client that dies (as a killed process would) before its ``n``-th DDL statement."""

    def __init__(self, client: Any, n: int) -> None:
        self.client, self.n = client, n

    def command(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        if sql.lstrip().startswith(("DROP", "RENAME", "CREATE")):
            self.n -= 1
            if self.n <= 0:
                raise RuntimeError("killed")
        return self.client.command(sql, *args, **kwargs)

    def query(self, *args: Any, **kwargs: Any) -> Any:
        return self.client.query(*args, **kwargs)


def test_a_switch_killed_after_every_step_in_a_row_still_ends_in_the_same_schema(
    client: Any,
) -> None:
    """Crashes come in bursts: a database with stored rows is switched by a process killed
    before its first DDL statement, then by processes each killed right after one more
    statement, every one starting where the last stopped, until one gets through. The end
    is that of an uninterrupted switch: the views, the stored rows kept once, no feed."""
    from queuewatch.clickhouse import serving
    from queuewatch.clickhouse.exceptions import ClickHouseError

    _, contributions = replay(random.Random(3), "kz-ru-syrym", 60, 20)
    assembled(client, contributions)
    want = client.query(
        windows_select(CONFIG.families, CONFIG.consensus, CONFIG.consensus_max_size, DB)
    ).result_rows
    db = f"{DB}_burst"
    migrate(client, db)
    client.command(
        f"INSERT INTO {db}.crossing_contributions SELECT * FROM {DB}.crossing_contributions"
    )
    client.command(
        f"INSERT INTO {db}.crossing_windows (crossing_id, window_size) VALUES ('x', '1h')"
    )
    with pytest.raises(ClickHouseError, match="killed"):
        serve_assembled(_Crashing(client, 1), db, CONFIG)  # type: ignore[arg-type]
    kills = 0
    while True:  # MV drop, two renames, two views: each run gets one statement through
        try:
            serve_assembled(_Crashing(client, 2), db, CONFIG)  # type: ignore[arg-type]
            break
        except ClickHouseError:
            kills += 1
            assert kills <= 5, "a run killed after one step made no progress"
    assert kills == 4  # five statements in all: the fifth run finished
    assert serving.layout(client, db) == "assembled"
    tables = {r[0] for r in client.query(f"SHOW TABLES FROM {db}").result_rows}
    assert "window_latest_mv" not in tables
    assert {"crossing_windows_stored", "window_latest_stored"} <= tables
    assert not any(t.startswith("crossing_windows_stored_") for t in tables)
    assert int(client.command(f"SELECT count() FROM {db}.crossing_windows_stored")) == 1
    got = client.query(f"SELECT * FROM {db}.crossing_windows").result_rows
    assert sorted(map(repr, got)) == sorted(map(repr, want))
    assert serve_assembled(client, db, CONFIG) == []
