"""The rules a queue report must meet, shared by every producer and every processor.

Producers check a report before it reaches the log (the SDK and `queuewatch publish` refuse it
with a reason); processors check it again on the way out (bytes written by other clients) and
send what fails to the dead-letter topic. Both sides call the same functions, so the rules
cannot drift apart.

Two forms of a report exist:

* the **record**: the Avro-shaped dict that is encoded and decoded (``observed_at`` is an int
  of UTC milliseconds, enums are strings, ``source`` and ``location`` are nested dicts);
  :func:`validate_record` checks it and returns every :class:`Violation` (none = valid);
* the **JSON form** people and scripts write (``observed_at`` is RFC 3339 with an offset);
  :func:`parse_json_report` turns it into a record or raises :class:`ReportInvalid` listing
  every problem at once, so a person fixes a line in one go.

The module is pure (no I/O, no clock): the "at most 10 minutes in the future" rule is relative
to a ``now_ms`` the caller passes (processors pass the Kafka message timestamp, so a replay
gives the same verdict). :func:`validate_record` sits on the aggregator's hot path, so the valid
path does no formatting, raises nothing and uses precompiled patterns and frozensets; messages
are only built for the (rare) invalid record.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from queuewatch.contract import report
from queuewatch.errors import QueuewatchError

#: How far ahead of the reference time ``observed_at`` may be: clocks of phones and feeds
#: drift by minutes; anything further ahead is a wrong offset or a wrong date.
MAX_FUTURE_MS: Final = 10 * 60 * 1000

TRAFFIC_CLASSES: Final = frozenset(
    {"car", "truck", "bus", "motorcycle", "pedestrian", "bicycle", "mixed"}
)
SOURCE_TYPES: Final = frozenset(
    {"official_feed", "official_statement", "journalist", "crowd", "sensor", "satellite"}
)
STATUSES: Final = frozenset({"open", "delay", "restricted", "closed", "unknown"})

#: ISO 3166-1 alpha-2 codes officially assigned, plus XK (Kosovo, user-assigned but used by
#: the EU and by border services). A set rather than ``[A-Z]{2}`` so that "XX" or "UK" fail.
COUNTRY_CODES: Final = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM
    DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS
    GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN
    KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ
    MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM
    PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV
    SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI
    VN VU WF WS YE YT ZA ZM ZW XK
    """.split()  # noqa: SIM905 (a table reads better than 250 quoted strings)
)

CROSSING_ID_RE: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
URL_RE: Final = re.compile(r"https?://[^\s/?#]+[^\s]*", re.IGNORECASE)
#: RFC 3339 date-time (section 5.6): a full date, a time with optional fraction, and an offset.
RFC3339_RE: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)

MAX_EVENT_ID: Final = 64
MAX_SOURCE_NAME: Final = 128
MAX_URL: Final = 2048
MAX_NOTE: Final = 2000
#: Avro long bounds: an ``observed_at`` outside them cannot even be encoded.
_LONG_MAX: Final = 2**63 - 1

#: The measurements: (field, is_integer, maximum, unit shown after the maximum). All start at 0.
MEASUREMENTS: Final[tuple[tuple[str, bool, float, str], ...]] = (
    ("wait_minutes", True, 20160, " (14 days)"),
    ("queue_vehicles", True, 100000, " vehicles"),
    ("queue_persons", True, 1000000, " persons"),
    ("queue_length_km", False, 500, " km"),
    ("throughput_per_hour", False, 10000, " per hour"),
    ("lanes_open", True, 200, " lanes"),
)
MEASUREMENT_FIELDS: Final = tuple(m[0] for m in MEASUREMENTS)

#: Every field of the QueueReport record (and of its JSON form), in schema order: read from
#: schemas/queue_report.avsc by contract.report, the one place that lists them.
RECORD_FIELDS: Final = report.REPORT_FIELDS
#: The fields without a default in the schema: a report must give them.
REQUIRED_FIELDS: Final = report.REQUIRED_FIELDS
_RECORD_FIELD_SET: Final = frozenset(RECORD_FIELDS)
SOURCE_FIELDS: Final = frozenset(report.SOURCE_FIELDS)
LOCATION_FIELDS: Final = frozenset(report.LOCATION_FIELDS)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: which field, the offending value, and what is wrong with it."""

    field: str
    value: Any
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ReportInvalid(QueuewatchError):
    """A report breaks one or more rules; ``violations`` lists every one of them."""

    def __init__(self, violations: list[Violation]) -> None:
        self.violations = list(violations)
        super().__init__(
            "invalid queue report: "
            + "; ".join(str(v) for v in self.violations)
            + "; fix the listed fields (see schemas/queue_report.avsc for every rule)"
        )


def format_ms(ms: int) -> str:
    """UTC milliseconds as RFC 3339 (``2022-09-25T12:00:00Z``), for messages and JSON output."""
    try:
        dt = _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        return f"{ms} ms"
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if ms % 1000:
        text += f".{ms % 1000:03d}"
    return text + "Z"


def _short(value: Any) -> str:
    """A value as a message shows it: repr, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- the record form -------------------------------------------------------------------------


def validate_record(record: dict[str, Any], now_ms: int) -> list[Violation]:
    """Every rule ``record`` (the Avro-shaped dict) breaks; an empty list means it is valid.

    ``now_ms`` is the reference time (UTC ms) of the "no more than 10 minutes in the future"
    rule: the Kafka message timestamp in processors, the wall clock in producers.
    """
    return _validate(record, now_ms)


def _validate(record: dict[str, Any], now_ms: int | None) -> list[Violation]:
    out: list[Violation] = []
    if type(record) is not dict:
        return [Violation("report", record, f"{_short(record)} is not an object of fields")]
    # Unknown keys: fastavro would drop them silently, and a typo such as wait_minuts must fail.
    if not _RECORD_FIELD_SET.issuperset(record):
        for key in record:
            if key not in _RECORD_FIELD_SET:
                out.append(_unknown_field(str(key), record[key]))

    value = record.get("event_id")
    if type(value) is not str or not 0 < len(value) <= MAX_EVENT_ID or value.isspace():
        out.append(_text_violation("event_id", value, MAX_EVENT_ID, "a client-made UUID"))

    value = record.get("crossing_id")
    if type(value) is not str or CROSSING_ID_RE.fullmatch(value) is None:
        what = "is required" if value is None else f"{_short(value)} is not a crossing slug"
        out.append(
            Violation(
                "crossing_id",
                value,
                f"{what}: lower-case letters, digits and hyphens, 1..64 characters, "
                "starting with a letter or digit (e.g. ge-ru-verkhny-lars)",
            )
        )

    for name in ("from_country", "to_country"):
        value = record.get(name)
        if type(value) is not str or value not in COUNTRY_CODES:
            out.append(_country_violation(name, value))

    value = record.get("traffic_class")
    if type(value) is not str or value not in TRAFFIC_CLASSES:
        out.append(_enum_violation("traffic_class", value, TRAFFIC_CLASSES))

    value = record.get("observed_at")
    if type(value) is not int or not 0 <= value <= _LONG_MAX:
        out.append(
            Violation(
                "observed_at",
                value,
                f"{_short(value)} is not a time: expected UTC milliseconds since 1970 "
                "(a non-negative integer)",
            )
        )
    elif now_ms is not None and value > now_ms + MAX_FUTURE_MS:
        ahead_min = (value - now_ms) / 60000
        out.append(
            Violation(
                "observed_at",
                value,
                f"{format_ms(value)} is {ahead_min:.1f} minutes after the reference time "
                f"{format_ms(now_ms)}; at most 10 minutes in the future is allowed "
                "(check the clock, the date and the UTC offset)",
            )
        )

    source = record.get("source")
    if type(source) is dict:
        _check_source(source, out)
    else:
        what = "is required:" if source is None else f"{_short(source)} is not"
        out.append(Violation("source", source, f"{what} an object {{type, name, url}}"))

    measured = False
    for name, is_int, maximum, unit in MEASUREMENTS:
        value = record.get(name)
        if value is None:
            continue
        kind = type(value)
        if (kind is int or (kind is float and not is_int)) and 0 <= value <= maximum:
            measured = True
            continue
        out.append(_measurement_violation(name, value, is_int, maximum, unit))
        measured = True  # present, even if wrong: do not also claim "no measurement"

    status = record.get("status", "unknown")
    if type(status) is not str or status not in STATUSES:
        out.append(_enum_violation("status", status, STATUSES))
    elif not measured and status == "unknown":
        out.append(
            Violation(
                "measurements",
                None,
                "none given and status is unknown; give at least one of "
                + ", ".join(MEASUREMENT_FIELDS)
                + " or a status other than unknown",
            )
        )

    location = record.get("location")
    if location is not None:
        _check_location(location, out)

    note = record.get("note")
    if note is not None and (type(note) is not str or len(note) > MAX_NOTE):
        if type(note) is str:
            msg = f"is {len(note)} characters long; at most {MAX_NOTE} are allowed"
        else:
            msg = f"{_short(note)} is not text"
        out.append(Violation("note", note, msg))
    return out


def _check_source(source: dict[str, Any], out: list[Violation]) -> None:
    if not SOURCE_FIELDS.issuperset(source):
        for key in source:
            if key not in SOURCE_FIELDS:
                out.append(_unknown_field(f"source.{key}", source[key]))
    value = source.get("type")
    if type(value) is not str or value not in SOURCE_TYPES:
        out.append(_enum_violation("source.type", value, SOURCE_TYPES))
    value = source.get("name")
    if type(value) is not str or not 0 < len(value) <= MAX_SOURCE_NAME or value.isspace():
        out.append(_text_violation("source.name", value, MAX_SOURCE_NAME, "who reported it"))
    url = source.get("url")
    if url is not None and (
        type(url) is not str or len(url) > MAX_URL or URL_RE.fullmatch(url) is None
    ):
        out.append(
            Violation(
                "source.url",
                url,
                f"{_short(url)} is not an http(s) address of at most {MAX_URL} characters; "
                "leave it out when the report has no address",
            )
        )


def _check_location(location: Any, out: list[Violation]) -> None:
    if type(location) is not dict:
        out.append(
            Violation("location", location, f"{_short(location)} is not an object {{lat, lon}}")
        )
        return
    for key in location:
        if key not in LOCATION_FIELDS:
            out.append(_unknown_field(f"location.{key}", location[key]))
    for name, limit in (("lat", 90.0), ("lon", 180.0)):
        value: Any = location.get(name)
        kind = type(value)
        if (kind is float or kind is int) and -limit <= value <= limit:
            continue
        if value is None:
            msg = "is missing; a location needs both lat and lon (degrees, WGS 84)"
        elif kind is float or kind is int:
            msg = f"{_short(value)} is outside -{limit:g}..{limit:g} degrees"
        else:
            msg = f"{_short(value)} is not a number of degrees"
        out.append(Violation(f"location.{name}", value, msg))


def _unknown_field(name: str, value: Any) -> Violation:
    return Violation(
        name,
        value,
        "unknown field (a typo?); remove it or see schemas/queue_report.avsc for the fields",
    )


def _text_violation(name: str, value: Any, maximum: int, what: str) -> Violation:
    if value is None:
        msg = f"is required ({what}, 1..{maximum} characters)"
    elif type(value) is not str:
        msg = f"{_short(value)} is not text ({what}, 1..{maximum} characters)"
    elif len(value) > maximum:
        msg = f"is {len(value)} characters long; at most {maximum} are allowed"
    else:
        msg = f"{_short(value)} is blank; give {what}, 1..{maximum} characters"
    return Violation(name, value, msg)


def _country_violation(name: str, value: Any) -> Violation:
    if value is None:
        msg = "is required (ISO 3166-1 alpha-2 code, upper case, e.g. GE)"
    elif type(value) is str and value.upper() in COUNTRY_CODES:
        msg = f"{_short(value)} must be upper case: {value.upper()}"
    else:
        msg = f"{_short(value)} is not an ISO 3166-1 alpha-2 country code (e.g. RU, GE, KZ)"
    return Violation(name, value, msg)


def _enum_violation(name: str, value: Any, allowed: frozenset[str]) -> Violation:
    choices = "|".join(sorted(allowed))
    if value is None:
        return Violation(name, value, f"is required: one of {choices}")
    return Violation(name, value, f"{_short(value)} is not one of {choices}")


def _measurement_violation(
    name: str, value: Any, is_int: bool, maximum: float, unit: str
) -> Violation:
    kind = type(value)
    if kind is float and is_int:
        msg = f"{_short(value)} is not a whole number"
    elif kind is not int and kind is not float:
        what = "a whole number" if is_int else "a number"
        msg = f"{_short(value)} is not {what}; leave it out (or null) when unknown"
    elif math.isnan(value) or math.isinf(value):
        msg = f"{value} is not a finite number"
    elif value < 0:
        msg = f"{value} is below the minimum 0; leave it out (or null) when unknown"
    else:
        msg = f"{value} is above the maximum {maximum:g}{unit}"
    return Violation(name, value, msg)


# --- the JSON form ---------------------------------------------------------------------------


def parse_rfc3339_ms(text: str) -> int:
    """RFC 3339 date-time with an offset -> UTC milliseconds; ValueError says what is wrong.

    Sub-millisecond digits are truncated (floor), the precision of the record.
    """
    match = RFC3339_RE.fullmatch(text)
    if match is None:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?", text):
            raise ValueError(f"{_short(text)} has no UTC offset; add Z or an offset such as +03:00")
        raise ValueError(
            f"{_short(text)} is not an RFC 3339 time with an offset "
            "(e.g. 2022-09-25T14:30:00+03:00)"
        )
    year, month, day, hour, minute, second, frac, zulu, sign, off_h, off_m = match.groups()
    try:
        offset = timedelta(0)
        if not zulu:
            if int(off_h) > 23 or int(off_m) > 59:
                raise ValueError("the offset is out of range")
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            if sign == "-":
                offset = -offset
        micro = int((frac or "0").ljust(6, "0")[:6])
        local = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            micro,
            tzinfo=UTC,
        )
    except ValueError as exc:
        raise ValueError(f"{_short(text)} is not a real date and time ({exc})") from None
    return (local - offset - _EPOCH) // _ONE_MS


def parse_json_report(obj: dict[str, Any], now_ms: int | None = None) -> dict[str, Any]:
    """Turn the JSON form of a report into a valid record, or raise ReportInvalid.

    Converts ``observed_at`` (RFC 3339 with an offset) to UTC milliseconds, fills absent
    measurements with None and ``status`` with "unknown", and checks every rule. Unknown fields
    are errors. The future-time rule is checked against ``now_ms`` when given (producers pass
    the wall clock); without it that one rule is left to the reader.
    """
    if type(obj) is not dict:
        raise ReportInvalid(
            [Violation("report", obj, f"{_short(obj)} is not a JSON object of fields")]
        )
    out: list[Violation] = []
    converted: set[str] = set()
    record: dict[str, Any] = {name: obj.get(name) for name in RECORD_FIELDS}
    if record["status"] is None:
        record["status"] = "unknown"
    for key in obj:
        if key not in _RECORD_FIELD_SET:
            out.append(_unknown_field(str(key), obj[key]))

    observed = obj.get("observed_at")
    if type(observed) is str:
        try:
            record["observed_at"] = parse_rfc3339_ms(observed)
        except ValueError as exc:
            out.append(Violation("observed_at", observed, str(exc)))
            converted.add("observed_at")
    elif observed is None:
        out.append(
            Violation(
                "observed_at",
                None,
                "is required: when the queue was seen, RFC 3339 with an offset "
                "(e.g. 2022-09-25T14:30:00+03:00)",
            )
        )
        converted.add("observed_at")
    else:
        out.append(
            Violation(
                "observed_at",
                observed,
                f"{_short(observed)} is not an RFC 3339 time string with an offset "
                "(e.g. 2022-09-25T14:30:00+03:00)",
            )
        )
        converted.add("observed_at")

    source = obj.get("source")
    if type(source) is dict:
        record["source"] = {
            "type": source.get("type"),
            "name": source.get("name"),
            "url": source.get("url"),
            **source,
        }
    location = obj.get("location")
    if type(location) is dict:
        record["location"] = {"lat": location.get("lat"), "lon": location.get("lon"), **location}

    # JSON has one number type: 30.0 written by a serializer is the integer 30.
    for name, is_int, _maximum, _unit in MEASUREMENTS:
        value = record[name]
        if is_int and type(value) is float and value.is_integer():
            record[name] = int(value)
        elif not is_int and type(value) is int:
            record[name] = float(value)
    if type(record["location"]) is dict:
        for name in ("lat", "lon"):
            if type(record["location"][name]) is int:
                record["location"][name] = float(record["location"][name])

    for violation in _validate(record, now_ms):
        if violation.field not in converted:
            out.append(violation)
    if out:
        raise ReportInvalid(out)
    return record


def record_to_json(record: dict[str, Any]) -> dict[str, Any]:
    """The JSON form of a valid record (inverse of :func:`parse_json_report`).

    Absent (None) optional values are left out, as a person would write the line.
    """
    out: dict[str, Any] = {}
    for name in RECORD_FIELDS:
        value = record.get(name)
        if value is None:
            continue
        if name == "observed_at":
            value = format_ms(value)
        elif name == "source":
            value = {k: v for k, v in value.items() if v is not None}
        elif name == "status" and value == "unknown":
            continue
        out[name] = value
    return out


__all__ = [
    "COUNTRY_CODES",
    "MAX_FUTURE_MS",
    "MEASUREMENT_FIELDS",
    "RECORD_FIELDS",
    "SOURCE_TYPES",
    "STATUSES",
    "TRAFFIC_CLASSES",
    "ReportInvalid",
    "Violation",
    "format_ms",
    "parse_json_report",
    "parse_rfc3339_ms",
    "record_to_json",
    "validate_record",
]
