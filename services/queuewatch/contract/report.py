"""The queue report as one typed model, with its field list read once from the schema.

``schemas/queue_report.avsc`` is the only place that lists a report's fields. This module reads
that list once (:data:`REPORT_FIELDS`, the nested ones in :data:`SOURCE_FIELDS` and
:data:`LOCATION_FIELDS`) and derives the rest from it: the flat columns of ``queue_reports``
(:data:`FLAT_FIELDS`: ``source_type``, ``location_lat``, ...), which the raw sink writes, and
the record field list validation checks. The :class:`QueueReport` dataclass gives code a typed
report; at import it is checked against the schema, so a field added to the ``.avsc`` file and
not to the model (or the reverse) fails every process at start-up, not one report at a time.

The wire form stays the Avro-shaped record (a dict, what fastavro and the compiled decoder
give), since that is what validation and the hot paths read: :meth:`QueueReport.from_record`
and :meth:`QueueReport.to_record` convert between the two. The aggregator still reads dicts;
it can adopt the model through ``from_record`` without changing its state format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Final

from queuewatch.contract.schemas import QUEUE_REPORT, SchemaError, SchemaVersion, default_registry


def _record_fields(schema: Any) -> tuple[str, ...]:
    return tuple(str(f["name"]) for f in schema["fields"])


def _nested(schema: SchemaVersion, name: str) -> dict[str, Any]:
    """The record type of field ``name`` (unwrapping ``["null", record]``)."""
    (field,) = (f for f in schema.parsed["fields"] if f["name"] == name)
    kind = field["type"]
    if isinstance(kind, list):
        (kind,) = (k for k in kind if k != "null")
    if not isinstance(kind, dict) or kind.get("type") != "record":
        raise SchemaError(f"{schema.path}: field {name!r} is not a record; fix the schema")
    return kind


_SCHEMA: Final = default_registry().latest(QUEUE_REPORT)
#: The report's fields in schema order.
REPORT_FIELDS: Final = _record_fields(_SCHEMA.parsed)
#: The fields without a default: every report gives them.
REQUIRED_FIELDS: Final = tuple(
    str(f["name"]) for f in _SCHEMA.parsed["fields"] if "default" not in f
)
#: The fields of its nested records.
SOURCE_FIELDS: Final = _record_fields(_nested(_SCHEMA, "source"))
LOCATION_FIELDS: Final = _record_fields(_nested(_SCHEMA, "location"))
_NESTED: Final = {"source": SOURCE_FIELDS, "location": LOCATION_FIELDS}
#: The report flattened into columns, in schema order: a nested record's fields become
#: ``<field>_<subfield>`` (``source_type``, ``location_lat``), as in ``queue_reports``.
FLAT_FIELDS: Final = tuple(
    column
    for name in REPORT_FIELDS
    for column in ([f"{name}_{sub}" for sub in _NESTED[name]] if name in _NESTED else [name])
)


def _compile_flattener() -> Callable[[dict[str, Any]], list[Any]]:
    """One list expression over a record's fields, generated from the schema's field list.

    The raw sink flattens every report it writes; a loop over the field list costs about
    7 µs a report here, the generated expression (what a hand-written one would be) 0.8 µs.
    """
    parts: list[str] = []
    for name in REPORT_FIELDS:
        sub = _NESTED.get(name)
        if sub is None:
            parts.append(f"record.get({name!r})")
        else:
            parts.extend(
                f"(None if record.get({name!r}) is None else record[{name!r}].get({s!r}))"
                for s in sub
            )
    source = "def flat_values(record):\n    return [" + ", ".join(parts) + "]\n"
    scope: dict[str, Any] = {}
    # The source is made of the schema's field names (checked identifiers), never of input.
    exec(compile(source, "<queue report flattener>", "exec"), scope)
    flattener: Callable[[dict[str, Any]], list[Any]] = scope["flat_values"]
    return flattener


#: A decoded report's values in :data:`FLAT_FIELDS` order (an absent record gives Nones).
flat_values: Final = _compile_flattener()


@dataclass(frozen=True, slots=True)
class Source:
    """Who reported the observation."""

    type: str
    name: str
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Location:
    """WGS 84 position of the observer or of the queue's end."""

    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class QueueReport:
    """One observation of one crossing's queue (schemas/queue_report.avsc, field by field).

    ``observed_at`` is UTC milliseconds; enums are their symbols; absent measurements are
    None, never 0. Validation rules live in ``contract.validation``, not here: a model
    built from a record that breaks them still says what the record holds.
    """

    event_id: str
    crossing_id: str
    from_country: str
    to_country: str
    traffic_class: str
    observed_at: int
    source: Source
    wait_minutes: int | None = None
    queue_vehicles: int | None = None
    queue_persons: int | None = None
    queue_length_km: float | None = None
    throughput_per_hour: float | None = None
    lanes_open: int | None = None
    status: str = "unknown"
    location: Location | None = None
    note: str | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> QueueReport:
        """The model of an Avro-shaped record (as decoded, or as ``parse_json_report`` gives)."""
        values: dict[str, Any] = {name: record.get(name) for name in REPORT_FIELDS}
        values["source"] = Source(**record["source"])
        location = record.get("location")
        values["location"] = Location(**location) if location is not None else None
        if values["status"] is None:
            values["status"] = "unknown"
        return cls(**values)

    def to_record(self) -> dict[str, Any]:
        """The Avro-shaped record: what ``codec.encode`` and ``validate_record`` take."""
        out = {name: getattr(self, name) for name in REPORT_FIELDS}
        out["source"] = {name: getattr(self.source, name) for name in SOURCE_FIELDS}
        where = self.location
        out["location"] = (
            None if where is None else {name: getattr(where, name) for name in LOCATION_FIELDS}
        )
        return out


def check_model(model: type, wanted: tuple[str, ...]) -> None:
    """Raise SchemaError when the dataclass ``model`` does not list exactly ``wanted``."""
    found = tuple(f.name for f in fields(model))
    if found != wanted:
        raise SchemaError(
            f"{model.__name__} in queuewatch/contract/report.py has fields {found} but "
            f"{_SCHEMA.path} has {wanted}; change the model to match the schema"
        )


for _model, _wanted in (
    (QueueReport, REPORT_FIELDS),
    (Source, SOURCE_FIELDS),
    (Location, LOCATION_FIELDS),
):
    check_model(_model, _wanted)

__all__ = [
    "FLAT_FIELDS",
    "LOCATION_FIELDS",
    "REPORT_FIELDS",
    "REQUIRED_FIELDS",
    "SOURCE_FIELDS",
    "Location",
    "QueueReport",
    "Source",
    "flat_values",
]
