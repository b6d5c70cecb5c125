"""The simulator: deterministic, realistic, and honest about which reports are broken."""

from __future__ import annotations

import collections
import io
import itertools
import json
import statistics
import threading

import pytest

from queuewatch.contract.validation import ReportInvalid, parse_json_report
from queuewatch.producers.publish import (
    SimulationSummary,
    defect_payload,
    publish_lines,
    run_simulation,
    write_json_lines,
)
from queuewatch.producers.scenario import (
    MOBILISATION_MS,
    real_crossings,
    scenario_crossings,
    utc_ms,
)
from queuewatch.producers.simulator import (
    DEFECTS,
    SimulatedReport,
    SimulationConfig,
    format_local,
    generate,
)


@pytest.fixture(scope="module")
def stream() -> list[SimulatedReport]:
    """Ten days of the real crossings: about 60,000 reports."""
    return list(generate(SimulationConfig(seed=7, count=60_000)))


def test_same_seed_gives_the_same_stream() -> None:
    a = [s.report for s in generate(SimulationConfig(seed=3, count=2000))]
    b = [s.report for s in generate(SimulationConfig(seed=3, count=2000))]
    assert a == b


def test_different_seeds_give_different_streams() -> None:
    a = [s.report for s in generate(SimulationConfig(seed=3, count=200))]
    b = [s.report for s in generate(SimulationConfig(seed=4, count=200))]
    assert a != b


def test_count_is_exact() -> None:
    assert len(list(generate(SimulationConfig(count=1234)))) == 1234
    assert list(generate(SimulationConfig(count=0))) == []


def test_without_count_the_stream_does_not_end() -> None:
    assert len(list(itertools.islice(generate(SimulationConfig()), 5000))) == 5000


def test_flags_match_the_validator(stream: list[SimulatedReport]) -> None:
    """Every flagged report fails validation and every other one passes."""
    mismatches = []
    for item in stream:
        try:
            parse_json_report(item.report, item.arrival_ms)
            ok = True
        except ReportInvalid:
            ok = False
        if ok != item.valid:
            mismatches.append(item)
    assert mismatches == []


def test_a_small_share_is_invalid_and_every_defect_occurs(stream: list[SimulatedReport]) -> None:
    invalid = [s for s in stream if s.intentionally_invalid]
    assert 0.005 < len(invalid) / len(stream) < 0.02
    assert {s.defect for s in invalid} == set(DEFECTS)


def test_zero_invalid_share_gives_only_valid_reports() -> None:
    items = generate(SimulationConfig(count=5000, invalid_share=0.0))
    assert all(s.valid for s in items)


def test_stream_is_ordered_by_arrival_but_not_by_event_time(
    stream: list[SimulatedReport],
) -> None:
    arrivals = [s.arrival_ms for s in stream]
    assert arrivals == sorted(arrivals)
    observed = [parse_json_report(s.report)["observed_at"] for s in stream if s.valid]
    inversions = sum(1 for a, b in itertools.pairwise(observed) if b < a)
    assert inversions > len(observed) * 0.05


def test_phone_reports_arrive_hours_late(stream: list[SimulatedReport]) -> None:
    delays = [
        s.arrival_ms - parse_json_report(s.report)["observed_at"]
        for s in stream
        if s.valid and "hot-line" in s.report["source"]["name"]
    ]
    assert delays and min(delays) >= 3_600_000 - 15 * 60_000
    assert statistics.median(delays) > 2 * 3_600_000


def test_resent_reports_reuse_an_event_id_sometimes_with_other_content(
    stream: list[SimulatedReport],
) -> None:
    first: dict[str, dict[str, object]] = {}
    same = changed = 0
    for item in stream:
        if not item.valid:
            continue
        event_id = item.report["event_id"]
        if item.resent:
            assert event_id in first  # a re-send always follows its original
            if first[event_id] == item.report:
                same += 1
            else:
                changed += 1
        else:
            assert event_id not in first  # originals have fresh ids
            first[event_id] = item.report
    assert same > 0 and changed > 0


def test_sources_of_every_kind_report(stream: list[SimulatedReport]) -> None:
    kinds = collections.Counter(s.report["source"]["type"] for s in stream if s.valid)
    assert set(kinds) == {
        "official_feed",
        "official_statement",
        "journalist",
        "crowd",
        "sensor",
        "satellite",
    }
    assert kinds["crowd"] > kinds["official_feed"]


def test_every_real_crossing_reports_in_both_directions_where_modelled(
    stream: list[SimulatedReport],
) -> None:
    seen = {
        (s.report["crossing_id"], s.report["from_country"], s.report["to_country"])
        for s in stream
        if s.valid
    }
    assert ("ge-ru-verkhny-lars", "RU", "GE") in seen
    assert ("ge-ru-verkhny-lars", "GE", "RU") in seen
    assert {c.crossing_id for c in real_crossings()} == {c for c, _, _ in seen}
    pedestrian = {
        s.report["crossing_id"]
        for s in stream
        if s.valid and s.report["traffic_class"] == "pedestrian"
    }
    assert "ee-ru-narva" in pedestrian


def _lars_crowd_waits(stream: list[SimulatedReport], day: str) -> list[int]:
    start = utc_ms(f"{day}T00:00:00+00:00")
    out = []
    for s in stream:
        if not s.valid or s.report["crossing_id"] != "ge-ru-verkhny-lars":
            continue
        record = parse_json_report(s.report)
        if (
            record["from_country"] == "RU"
            and record["traffic_class"] == "car"
            and record["source"]["type"] == "crowd"
            and record["wait_minutes"] is not None
            and start <= record["observed_at"] < start + 86_400_000
        ):
            out.append(record["wait_minutes"])
    return out


def test_the_crisis_multiplies_waits_and_report_rates_at_lars(
    stream: list[SimulatedReport],
) -> None:
    before = _lars_crowd_waits(stream, "2022-09-19")
    peak = _lars_crowd_waits(stream, "2022-09-26")
    assert before and peak
    assert statistics.median(peak) > 10 * statistics.median(before)
    assert len(peak) > 10 * len(before)  # crowds report far more in a crisis
    assert 24 * 60 < statistics.median(peak) < 4 * 24 * 60  # waits of one to four days


def test_the_crisis_starts_with_the_mobilisation_announcement() -> None:
    lane = real_crossings()[0].lanes[0]
    from queuewatch.producers.scenario import lane_state

    calm = lane_state(lane, MOBILISATION_MS - 86_400_000).queue
    peak = lane_state(lane, MOBILISATION_MS + 5 * 86_400_000).queue
    assert 10 < peak / calm < 100


def test_reports_carry_local_offsets(stream: list[SimulatedReport]) -> None:
    offsets = {s.report["observed_at"][19:][-6:] for s in stream[:5000] if s.valid}
    assert "+03:00" in offsets and any(o.endswith("Z") for o in offsets)


def test_generated_crossings_add_load_with_unique_slugs() -> None:
    crossings = scenario_crossings(500, seed=1)
    assert len(crossings) == 500
    assert len({c.crossing_id for c in crossings}) == 500
    items = list(generate(SimulationConfig(count=20_000, crossings=500)))
    assert len({s.crossing_id for s in items}) > 300


def test_format_local_writes_rfc3339_with_offset() -> None:
    ms = utc_ms("2022-09-25T11:30:00+00:00")
    assert format_local(ms, 180) == "2022-09-25T14:30:00+03:00"
    assert format_local(ms + 5, 0, millis=True) == "2022-09-25T11:30:00.005Z"


def test_json_lines_output_is_what_publish_reads(stream: list[SimulatedReport]) -> None:
    buf = io.StringIO()
    assert write_json_lines(stream[:3000], buf) == 3000
    invalid_lines: list[int] = []
    summary = publish_lines(buf.getvalue().splitlines(), None, lambda n, v: invalid_lines.append(n))
    expected = [i + 1 for i, s in enumerate(stream[:3000]) if not s.valid]
    assert invalid_lines == expected
    assert summary.published == 3000 - len(expected)


def test_defects_avro_can_carry_are_encoded_the_rest_sent_as_json() -> None:
    items = [
        s
        for s in generate(SimulationConfig(count=20_000, invalid_share=0.2))
        if s.intentionally_invalid
    ]
    kinds: dict[str | None, bool] = {}
    for item in items:
        _, value = defect_payload(item.report)
        kinds.setdefault(item.defect, value[:2] == b"\xc3\x01")
    assert kinds["wait_above_maximum"] is True
    assert kinds["misspelt_field"] is False
    assert kinds["no_utc_offset"] is False


class _Recorder:
    def __init__(self) -> None:
        self.valid: list[dict[str, object]] = []
        self.raw: list[bytes] = []

    def publish(self, report: dict[str, object]) -> None:
        self.valid.append(report)

    def publish_raw(self, key: bytes | None, value: bytes) -> None:
        self.raw.append(value)


def test_run_simulation_publishes_valid_and_raw_defects_in_order() -> None:
    items = list(generate(SimulationConfig(count=3000)))
    sink = _Recorder()
    summary = run_simulation(items, sink, speed=0, rate=0, stop=threading.Event())
    assert summary == SimulationSummary(
        published=sum(s.valid for s in items),
        invalid_published=sum(not s.valid for s in items),
        resent=sum(s.resent for s in items),
    )
    assert sink.valid == [s.report for s in items if s.valid]


def test_run_simulation_stops_when_asked() -> None:
    stop = threading.Event()
    stop.set()
    sink = _Recorder()
    summary = run_simulation(generate(SimulationConfig()), sink, speed=0, rate=0, stop=stop)
    assert summary.published == 0 and sink.valid == []


def test_run_simulation_paces_by_compressed_time() -> None:
    """With a fake clock: reports one simulated hour apart wait 1 s at speed 3600."""
    items = [SimulatedReport({"n": i}, arrival_ms=i * 3_600_000) for i in range(3)]
    now = [0.0]
    waits: list[float] = []

    class Stop(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout or 0.0)
            now[0] += timeout or 0.0
            return False

    run_simulation(items, _Recorder(), speed=3600, rate=0, stop=Stop(), monotonic=lambda: now[0])
    assert waits == pytest.approx([1.0, 1.0])


def test_json_lines_are_valid_json_objects(stream: list[SimulatedReport]) -> None:
    buf = io.StringIO()
    write_json_lines(stream[:100], buf)
    assert all(isinstance(json.loads(line), dict) for line in buf.getvalue().splitlines())
