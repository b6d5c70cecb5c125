"""Both sides of every rule of a queue report, in the record form and in the JSON form."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from queuewatch.contract.schemas import QUEUE_REPORT, default_registry
from queuewatch.contract.validation import (
    MAX_FUTURE_MS,
    MEASUREMENT_FIELDS,
    RECORD_FIELDS,
    ReportInvalid,
    Violation,
    format_ms,
    parse_json_report,
    parse_rfc3339_ms,
    record_to_json,
    validate_record,
)
from queuewatch.errors import QueuewatchError

NOW = 1_664_105_400_000  # 2022-09-25T11:30:00Z


def valid_record(**changes: Any) -> dict[str, Any]:
    """A complete valid record; keyword arguments replace fields."""
    record: dict[str, Any] = {
        "event_id": "4f1c2b9e-0d6a-4c39-9d0e-7b1c3f5a2e10",
        "crossing_id": "ge-ru-verkhny-lars",
        "from_country": "RU",
        "to_country": "GE",
        "traffic_class": "car",
        "observed_at": NOW - 60_000,
        "source": {"type": "journalist", "name": "Reuters", "url": "https://reuters.com/a"},
        "wait_minutes": 2400,
        "queue_vehicles": 3500,
        "queue_persons": None,
        "queue_length_km": 20.0,
        "throughput_per_hour": None,
        "lanes_open": None,
        "status": "delay",
        "location": {"lat": 42.74, "lon": 44.63},
        "note": "queue reaches the tunnel",
    }
    record.update(changes)
    return record


def valid_json(**changes: Any) -> dict[str, Any]:
    """A valid JSON-form report; keyword arguments replace fields."""
    obj: dict[str, Any] = {
        "event_id": "e-1",
        "crossing_id": "kz-ru-syrym",
        "from_country": "RU",
        "to_country": "KZ",
        "traffic_class": "car",
        "observed_at": "2022-09-23T18:00:00+05:00",
        "source": {"type": "crowd", "name": "Uralsk hot-line"},
        "wait_minutes": 720,
    }
    obj.update(changes)
    return obj


def fields_of(violations: list[Violation]) -> list[str]:
    return [v.field for v in violations]


def test_valid_record_has_no_violations() -> None:
    assert validate_record(valid_record(), NOW) == []


def test_record_fields_match_the_latest_schema() -> None:
    schema = default_registry().latest(QUEUE_REPORT)
    assert list(RECORD_FIELDS) == [f["name"] for f in schema.raw["fields"]]


def test_violation_str_names_field_and_message() -> None:
    [violation] = validate_record(valid_record(wait_minutes=30000), NOW)
    assert str(violation) == "wait_minutes: 30000 is above the maximum 20160 (14 days)"
    assert violation.value == 30000


def test_report_invalid_is_a_queuewatch_error_listing_violations() -> None:
    exc = ReportInvalid([Violation("a", 1, "bad"), Violation("b", 2, "worse")])
    assert isinstance(exc, QueuewatchError)
    assert "a: bad" in str(exc) and "b: worse" in str(exc)
    assert fields_of(exc.violations) == ["a", "b"]


def test_non_dict_record_is_one_violation() -> None:
    assert fields_of(validate_record([1, 2], NOW)) == ["report"]  # type: ignore[arg-type]


def test_unknown_field_in_record_is_a_violation() -> None:
    record = valid_record(wait_minuts=30)
    violations = validate_record(record, NOW)
    assert fields_of(violations) == ["wait_minuts"]
    assert "unknown field" in violations[0].message


@pytest.mark.parametrize(
    "missing",
    [
        "event_id",
        "crossing_id",
        "from_country",
        "to_country",
        "traffic_class",
        "observed_at",
        "source",
    ],
)
def test_missing_required_field_is_a_violation(missing: str) -> None:
    record = valid_record()
    del record[missing]
    assert missing in fields_of(validate_record(record, NOW))


@pytest.mark.parametrize(
    ("value", "ok"),
    [("a", True), ("x" * 64, True), ("", False), ("x" * 65, False), ("   ", False), (7, False)],
)
def test_event_id_length_1_to_64(value: Any, ok: bool) -> None:
    assert (validate_record(valid_record(event_id=value), NOW) == []) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("ge-ru-verkhny-lars", True),
        ("0", True),
        ("a" * 64, True),
        ("a" * 65, False),
        ("-lars", False),
        ("Verkhny-Lars", False),
        ("ge_ru", False),
        ("ge ru", False),
        ("", False),
        ("lars\n", False),
        (None, False),
    ],
)
def test_crossing_id_is_a_slug(value: Any, ok: bool) -> None:
    assert (validate_record(valid_record(crossing_id=value), NOW) == []) is ok


@pytest.mark.parametrize("field", ["from_country", "to_country"])
@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("GE", True),
        ("XK", True),
        ("ge", False),
        ("XX", False),
        ("GEO", False),
        (None, False),
        (1, False),
    ],
)
def test_country_is_iso_alpha2_upper_case(field: str, value: Any, ok: bool) -> None:
    assert (validate_record(valid_record(**{field: value}), NOW) == []) is ok


def test_lower_case_country_message_suggests_upper_case() -> None:
    [violation] = validate_record(valid_record(to_country="ge"), NOW)
    assert str(violation) == "to_country: 'ge' must be upper case: GE"


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("car", True),
        ("pedestrian", True),
        ("mixed", True),
        ("Car", False),
        ("tank", False),
        (None, False),
    ],
)
def test_traffic_class_is_an_enum_symbol(value: Any, ok: bool) -> None:
    assert (validate_record(valid_record(traffic_class=value), NOW) == []) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (NOW, True),
        (0, True),
        (NOW + MAX_FUTURE_MS, True),
        (NOW + MAX_FUTURE_MS + 1, False),
        (-1, False),
        (float(NOW), False),
        (True, False),
        ("2022-09-25T11:30:00Z", False),
    ],
)
def test_observed_at_is_ms_and_at_most_ten_minutes_ahead(value: Any, ok: bool) -> None:
    assert (validate_record(valid_record(observed_at=value), NOW) == []) is ok


def test_future_rule_is_relative_to_now_ms_not_the_wall_clock() -> None:
    record = valid_record(observed_at=NOW + 3_600_000)
    assert fields_of(validate_record(record, NOW)) == ["observed_at"]
    assert validate_record(record, NOW + 3_600_000) == []


def test_future_message_names_both_times() -> None:
    [violation] = validate_record(valid_record(observed_at=NOW + 15 * 60_000), NOW)
    assert format_ms(NOW + 15 * 60_000) in violation.message
    assert "15.0 minutes" in violation.message and "10 minutes" in violation.message


@pytest.mark.parametrize(
    ("source", "bad_field"),
    [
        ({"type": "crowd", "name": "hot-line", "url": None}, None),
        ({"type": "crowd", "name": "hot-line"}, None),
        ({"type": "satellite", "name": "x" * 128, "url": "http://a.b/c?d=1"}, None),
        ({"type": "blog", "name": "hot-line"}, "source.type"),
        ({"name": "hot-line"}, "source.type"),
        ({"type": "crowd", "name": ""}, "source.name"),
        ({"type": "crowd", "name": "x" * 129}, "source.name"),
        ({"type": "crowd"}, "source.name"),
        ({"type": "crowd", "name": "a", "url": "ftp://x"}, "source.url"),
        ({"type": "crowd", "name": "a", "url": "not a url"}, "source.url"),
        ({"type": "crowd", "name": "a", "url": 5}, "source.url"),
        ({"type": "crowd", "name": "a", "reliability": 0.3}, "source.reliability"),
        ("hot-line", "source"),
        (None, "source"),
    ],
)
def test_source_rules(source: Any, bad_field: str | None) -> None:
    violations = validate_record(valid_record(source=source), NOW)
    assert fields_of(violations) == ([] if bad_field is None else [bad_field])


MEASUREMENT_LIMITS = [
    ("wait_minutes", 20160, True),
    ("queue_vehicles", 100000, True),
    ("queue_persons", 1000000, True),
    ("queue_length_km", 500, False),
    ("throughput_per_hour", 10000, False),
    ("lanes_open", 200, True),
]


@pytest.mark.parametrize(("field", "maximum", "is_int"), MEASUREMENT_LIMITS)
def test_measurement_range_both_ends(field: str, maximum: int, is_int: bool) -> None:
    for value, ok in [(0, True), (maximum, True), (-1, False), (maximum + 1, False), (None, True)]:
        record = valid_record(**{field: value})
        assert (validate_record(record, NOW) == []) is ok, (field, value)


@pytest.mark.parametrize(("field", "maximum", "is_int"), MEASUREMENT_LIMITS)
def test_measurement_type(field: str, maximum: int, is_int: bool) -> None:
    assert (validate_record(valid_record(**{field: 1.5}), NOW) == []) is (not is_int)
    for bad in ["12", True, float("nan"), float("inf"), [1]]:
        assert fields_of(validate_record(valid_record(**{field: bad}), NOW)) == [field], bad


def test_measurement_messages_name_value_and_rule() -> None:
    msgs = [
        str(v)
        for v in validate_record(
            valid_record(queue_length_km=600.0, lanes_open=-1, queue_vehicles=1.5), NOW
        )
    ]
    assert msgs == [
        "queue_vehicles: 1.5 is not a whole number",
        "queue_length_km: 600.0 is above the maximum 500 km",
        "lanes_open: -1 is below the minimum 0; leave it out (or null) when unknown",
    ]


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("open", True),
        ("closed", True),
        ("unknown", True),
        ("jammed", False),
        (None, False),
        ("OPEN", False),
    ],
)
def test_status_is_an_enum_symbol(value: Any, ok: bool) -> None:
    assert (validate_record(valid_record(status=value), NOW) == []) is ok


def _no_measurements(**changes: Any) -> dict[str, Any]:
    return valid_record(**{**{name: None for name in MEASUREMENT_FIELDS}, **changes})


def test_no_measurement_and_unknown_status_is_invalid() -> None:
    assert fields_of(validate_record(_no_measurements(status="unknown"), NOW)) == ["measurements"]


def test_no_measurement_but_known_status_is_valid() -> None:
    assert validate_record(_no_measurements(status="closed"), NOW) == []


@pytest.mark.parametrize("field", MEASUREMENT_FIELDS)
def test_any_single_measurement_with_unknown_status_is_valid(field: str) -> None:
    assert validate_record(_no_measurements(status="unknown", **{field: 0}), NOW) == []


def test_zero_is_a_measurement_not_unknown() -> None:
    assert validate_record(_no_measurements(status="unknown", wait_minutes=0), NOW) == []


def test_record_without_status_key_defaults_to_unknown() -> None:
    record = valid_record()
    del record["status"]
    assert validate_record(record, NOW) == []


@pytest.mark.parametrize(
    ("location", "bad_fields"),
    [
        (None, []),
        ({"lat": 90.0, "lon": 180.0}, []),
        ({"lat": -90, "lon": -180}, []),
        ({"lat": 90.1, "lon": 0.0}, ["location.lat"]),
        ({"lat": 0.0, "lon": -180.5}, ["location.lon"]),
        ({"lat": 0.0}, ["location.lon"]),
        ({"lat": "42", "lon": 44.0}, ["location.lat"]),
        ({"lat": 1.0, "lon": 1.0, "alt": 3}, ["location.alt"]),
        ([42.0, 44.0], ["location"]),
    ],
)
def test_location_rules(location: Any, bad_fields: list[str]) -> None:
    assert fields_of(validate_record(valid_record(location=location), NOW)) == bad_fields


@pytest.mark.parametrize(
    ("note", "ok"), [(None, True), ("", True), ("x" * 2000, True), ("x" * 2001, False), (3, False)]
)
def test_note_up_to_2000_characters(note: Any, ok: bool) -> None:
    assert (validate_record(valid_record(note=note), NOW) == []) is ok


def test_every_problem_is_listed_at_once() -> None:
    record = valid_record(event_id="", crossing_id="Bad Slug", wait_minutes=-5, status="x")
    assert fields_of(validate_record(record, NOW)) == [
        "event_id",
        "crossing_id",
        "wait_minutes",
        "status",
    ]


# --- the JSON form ---------------------------------------------------------------------------


def test_json_form_becomes_a_complete_record() -> None:
    record = parse_json_report(valid_json())
    assert record == {
        "event_id": "e-1",
        "crossing_id": "kz-ru-syrym",
        "from_country": "RU",
        "to_country": "KZ",
        "traffic_class": "car",
        "observed_at": 1_663_938_000_000,  # 2022-09-23T13:00:00Z
        "source": {"type": "crowd", "name": "Uralsk hot-line", "url": None},
        "wait_minutes": 720,
        "queue_vehicles": None,
        "queue_persons": None,
        "queue_length_km": None,
        "throughput_per_hour": None,
        "lanes_open": None,
        "status": "unknown",
        "location": None,
        "note": None,
    }


def test_json_unknown_field_is_an_error_not_dropped() -> None:
    with pytest.raises(ReportInvalid) as info:
        parse_json_report(valid_json(wait_minuts=30))
    assert fields_of(info.value.violations) == ["wait_minuts"]


def test_json_unknown_nested_field_is_an_error() -> None:
    with pytest.raises(ReportInvalid) as info:
        parse_json_report(valid_json(source={"type": "crowd", "name": "a", "trust": 1}))
    assert fields_of(info.value.violations) == ["source.trust"]


def test_json_lists_every_problem() -> None:
    with pytest.raises(ReportInvalid) as info:
        parse_json_report(
            valid_json(observed_at="2022-09-23 18:00", to_country="kz", wait_minutes=30000, x=1)
        )
    assert sorted(fields_of(info.value.violations)) == [
        "observed_at",
        "to_country",
        "wait_minutes",
        "x",
    ]


def test_json_non_object_is_invalid() -> None:
    with pytest.raises(ReportInvalid) as info:
        parse_json_report([1])  # type: ignore[arg-type]
    assert fields_of(info.value.violations) == ["report"]


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2022-09-25T11:30:00Z", NOW),
        ("2022-09-25T14:30:00+03:00", NOW),
        ("2022-09-25t11:30:00z", NOW),
        ("2022-09-25 06:30:00-05:00", NOW),
        ("2022-09-25T11:30:00.123456789Z", NOW + 123),
        ("2022-09-25T11:30:00.5+00:00", NOW + 500),
    ],
)
def test_rfc3339_with_offset_converts_to_utc_ms(text: str, ms: int) -> None:
    assert parse_rfc3339_ms(text) == ms
    assert parse_json_report(valid_json(observed_at=text))["observed_at"] == ms


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("2022-09-25T11:30:00", "no UTC offset"),
        ("2022-09-25", "not an RFC 3339"),
        ("25.09.2022 11:30", "not an RFC 3339"),
        ("2022-02-30T11:30:00Z", "not a real date"),
        ("2022-09-25T24:30:00Z", "not a real date"),
        ("2022-09-25T11:30:00+25:00", "not a real date"),
    ],
)
def test_observed_at_text_without_offset_or_impossible_is_invalid(text: str, hint: str) -> None:
    with pytest.raises(ReportInvalid) as info:
        parse_json_report(valid_json(observed_at=text))
    [violation] = info.value.violations
    assert violation.field == "observed_at" and hint in violation.message


@pytest.mark.parametrize("value", [1_663_938_000_000, None, 12.5])
def test_json_observed_at_must_be_a_string(value: Any) -> None:
    obj = valid_json(observed_at=value)
    if value is None:
        del obj["observed_at"]
    with pytest.raises(ReportInvalid) as info:
        parse_json_report(obj)
    assert fields_of(info.value.violations) == ["observed_at"]


def test_json_future_rule_applies_only_with_now_ms() -> None:
    obj = valid_json(observed_at=format_ms(NOW + 20 * 60_000))
    assert parse_json_report(obj)["observed_at"] == NOW + 20 * 60_000
    with pytest.raises(ReportInvalid):
        parse_json_report(obj, now_ms=NOW)
    assert parse_json_report(obj, now_ms=NOW + 20 * 60_000)["observed_at"] == NOW + 20 * 60_000


def test_json_null_measurement_is_unknown_not_zero() -> None:
    record = parse_json_report(valid_json(queue_vehicles=None, status="delay"))
    assert record["queue_vehicles"] is None


def test_json_integral_float_is_an_int_and_int_is_a_float_for_doubles() -> None:
    record = parse_json_report(
        valid_json(wait_minutes=30.0, queue_length_km=12, location={"lat": 51, "lon": 51.4})
    )
    assert type(record["wait_minutes"]) is int
    assert type(record["queue_length_km"]) is float
    assert type(record["location"]["lat"]) is float


def test_json_null_status_is_unknown() -> None:
    assert parse_json_report(valid_json(status=None))["status"] == "unknown"


def test_json_with_only_unknown_status_is_invalid() -> None:
    obj = valid_json()
    del obj["wait_minutes"]
    with pytest.raises(ReportInvalid) as info:
        parse_json_report(obj)
    assert fields_of(info.value.violations) == ["measurements"]


def test_parse_does_not_change_its_input() -> None:
    obj = valid_json(location={"lat": 51, "lon": 51})
    before = copy.deepcopy(obj)
    parse_json_report(obj)
    assert obj == before


def test_record_to_json_round_trips() -> None:
    record = valid_record()
    assert parse_json_report(record_to_json(record)) == record
