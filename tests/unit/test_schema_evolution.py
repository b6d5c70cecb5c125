"""Schema evolution: old and new writers and readers share one topic.

A v2 test schema (tests/unit/schemas/queue_report.v2.avsc: one added optional field, one added
enum symbol) stands in for the next version. Every schema in schemas/ must stay compatible with
its predecessor in both directions, checked by the Avro resolution rules below; the rules are
themselves tested on pairs known to be compatible and incompatible, so the check can fail.
"""

from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path
from typing import Any

import pytest

from queuewatch.contract.codec import decode, encode
from queuewatch.contract.schemas import (
    CROSSING_WINDOW,
    QUEUE_REPORT,
    SchemaRegistry,
    SchemaVersion,
    default_registry,
    load_registry,
    load_schema_file,
)
from queuewatch.resources import schemas_dir

V2_PATH = Path(__file__).parent / "schemas" / "queue_report.v2.avsc"
NOW = 1_664_105_400_000

# --- the Avro schema-resolution rules (specification, "Schema Resolution") -------------------

_PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
}
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _named(schema: Any, names: dict[str, Any]) -> Any:
    """Resolve a reference to a named type; register named types on the way."""
    if isinstance(schema, str) and schema not in _PRIMITIVES:
        return names[schema.split(".")[-1]]
    if isinstance(schema, dict) and schema.get("type") in ("record", "enum", "fixed"):
        names.setdefault(schema["name"].split(".")[-1], schema)
    return schema


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, str):
        return schema
    kind = schema["type"]
    return kind if isinstance(kind, str) and kind not in _PRIMITIVES else _kind(kind)


def incompatibilities(
    reader: Any,
    writer: Any,
    path: str = "",
    rn: dict[str, Any] | None = None,
    wn: dict[str, Any] | None = None,
) -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader`` (empty: it can)."""
    rn = {} if rn is None else rn
    wn = {} if wn is None else wn
    reader, writer = _named(reader, rn), _named(writer, wn)
    rk, wk = _kind(reader), _kind(writer)
    if wk == "union":
        out: list[str] = []
        for i, branch in enumerate(writer):
            out += incompatibilities(reader, branch, f"{path}[{i}]", rn, wn)
        return out
    if rk == "union":
        for branch in reader:
            if not incompatibilities(branch, writer, path, dict(rn), dict(wn)):
                return []
        return [f"{path or '/'}: no branch of the reader's union reads the writer's {wk}"]
    if wk in _PRIMITIVES:
        if rk == wk or rk in _PROMOTIONS.get(wk, set()):
            return []
        return [f"{path or '/'}: writer {wk} cannot be read as {rk}"]
    if rk != wk:
        return [f"{path or '/'}: writer {wk} cannot be read as {rk}"]
    if wk == "record":
        out = []
        writer_fields = {f["name"]: f for f in writer["fields"]}
        for field in reader["fields"]:
            names = [field["name"], *field.get("aliases", [])]
            match = next((writer_fields[n] for n in names if n in writer_fields), None)
            if match is None:
                if "default" not in field:
                    out.append(f"{path}/{field['name']}: new field without a default")
                continue
            out += incompatibilities(
                field["type"], match["type"], f"{path}/{field['name']}", rn, wn
            )
        return out
    if wk == "enum":
        missing = set(writer["symbols"]) - set(reader["symbols"])
        if missing and "default" not in reader:
            return [f"{path}: enum symbols {sorted(missing)} unknown to the reader, no default"]
        return []
    if wk == "array":
        return incompatibilities(reader["items"], writer["items"], f"{path}[]", rn, wn)
    if wk == "map":
        return incompatibilities(reader["values"], writer["values"], f"{path}{{}}", rn, wn)
    if wk == "fixed" and reader["size"] != writer["size"]:
        return [f"{path}: fixed size {writer['size']} read as {reader['size']}"]
    return []


def mutual_incompatibilities(old: SchemaVersion, new: SchemaVersion) -> list[str]:
    """Problems in either direction: new readers of old data, old readers of new data."""
    return [f"new reads old: {p}" for p in incompatibilities(new.raw, old.raw)] + [
        f"old reads new: {p}" for p in incompatibilities(old.raw, new.raw)
    ]


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def v1() -> SchemaVersion:
    return default_registry().latest(QUEUE_REPORT)


@pytest.fixture(scope="module")
def v2() -> SchemaVersion:
    return load_schema_file(V2_PATH)


@pytest.fixture(scope="module")
def registry(v1: SchemaVersion, v2: SchemaVersion) -> SchemaRegistry:
    registry = SchemaRegistry()
    registry.add(v1)
    registry.add(v2)
    return registry


def v1_record() -> dict[str, Any]:
    return {
        "event_id": "e-1",
        "crossing_id": "ee-ru-narva",
        "from_country": "RU",
        "to_country": "EE",
        "traffic_class": "car",
        "observed_at": NOW,
        "source": {"type": "official_feed", "name": "GoSwift", "url": None},
        "wait_minutes": 900,
        "queue_vehicles": 240,
        "queue_persons": None,
        "queue_length_km": None,
        "throughput_per_hour": 16.0,
        "lanes_open": 3,
        "status": "restricted",
        "location": None,
        "note": None,
    }


# --- v1 <-> v2 --------------------------------------------------------------------------------


def test_v2_is_a_new_version_of_the_same_record(v1: SchemaVersion, v2: SchemaVersion) -> None:
    assert (v2.name, v2.version) == (v1.name, 2)
    assert v2.fingerprint != v1.fingerprint


def test_v1_written_is_read_by_v2_with_the_new_field_defaulted(
    v1: SchemaVersion, v2: SchemaVersion, registry: SchemaRegistry
) -> None:
    decoded = decode(encode(v1_record(), v1), v2, registry)
    assert decoded == {**v1_record(), "vehicles_booked": None}


def test_v2_written_is_read_by_v1_without_the_new_field(
    v1: SchemaVersion, v2: SchemaVersion, registry: SchemaRegistry
) -> None:
    record = {**v1_record(), "vehicles_booked": 1113}
    assert decode(encode(record, v2), v1, registry) == v1_record()


def test_v2_enum_symbol_unknown_to_v1_reads_as_the_enum_default(
    v1: SchemaVersion, v2: SchemaVersion, registry: SchemaRegistry
) -> None:
    record = {**v1_record(), "traffic_class": "van", "vehicles_booked": None}
    assert decode(encode(record, v2), v1, registry)["traffic_class"] == "mixed"


def test_v2_written_read_by_v2_keeps_everything(
    v2: SchemaVersion, registry: SchemaRegistry
) -> None:
    record = {**v1_record(), "traffic_class": "van", "vehicles_booked": 7}
    assert decode(encode(record, v2), v2, registry) == record


def test_rules_accept_v1_and_v2_both_ways(v1: SchemaVersion, v2: SchemaVersion) -> None:
    assert mutual_incompatibilities(v1, v2) == []


def test_rules_reject_a_new_field_without_default(v1: SchemaVersion) -> None:
    raw = copy.deepcopy(v1.raw)
    raw["fields"].append({"name": "booked", "type": "int"})
    assert incompatibilities(raw, v1.raw) == ["/booked: new field without a default"]


def test_rules_reject_a_changed_type(v1: SchemaVersion) -> None:
    raw = copy.deepcopy(v1.raw)
    next(f for f in raw["fields"] if f["name"] == "observed_at")["type"] = "string"
    assert incompatibilities(raw, v1.raw) == ["/observed_at: writer long cannot be read as string"]


def test_rules_reject_a_removed_enum_default(v1: SchemaVersion) -> None:
    old = copy.deepcopy(v1.raw)
    new = copy.deepcopy(v1.raw)
    new["fields"][4]["type"]["symbols"].append("van")
    del old["fields"][4]["type"]["default"]
    assert incompatibilities(old, new) == [
        "/traffic_class: enum symbols ['van'] unknown to the reader, no default"
    ]


def test_rules_accept_int_promoted_to_long(v1: SchemaVersion) -> None:
    raw = copy.deepcopy(v1.raw)
    next(f for f in raw["fields"] if f["name"] == "lanes_open")["type"] = ["null", "long"]
    assert incompatibilities(raw, v1.raw) == []
    assert incompatibilities(v1.raw, raw) != []  # long cannot be read as int


# --- every schema in schemas/ -----------------------------------------------------------------


def test_every_schema_is_compatible_with_its_predecessor() -> None:
    registry = load_registry(schemas_dir())
    problems = []
    for name in registry.by_name:
        versions = registry.versions(name)
        for old, new in itertools.pairwise(versions):
            problems += [
                f"{name} v{old.version}->v{new.version}: {p}"
                for p in mutual_incompatibilities(old, new)
            ]
    assert problems == []


def test_schema_files_follow_the_naming_convention() -> None:
    registry = load_registry(schemas_dir())
    for name, versions in registry.by_name.items():
        latest = max(versions)
        for version, schema in versions.items():
            stem = re.sub(r"(?<!^)(?=[A-Z])", "_", name.split(".")[-1]).lower()
            expected = f"{stem}.avsc" if version == latest else f"{stem}.v{version}.avsc"
            assert schema.path.name == expected, (name, version, schema.path.name)


def test_every_field_of_every_schema_has_a_doc() -> None:
    undocumented = []

    def walk(schema: Any, where: str) -> None:
        if isinstance(schema, list):
            for branch in schema:
                walk(branch, where)
        elif isinstance(schema, dict) and schema.get("type") == "record":
            for field in schema["fields"]:
                if not field.get("doc"):
                    undocumented.append(f"{where}.{field['name']}")
                walk(field["type"], f"{where}.{field['name']}")

    for schema in load_registry(schemas_dir()).by_fingerprint.values():
        walk(schema.raw, schema.name)
    assert undocumented == []


def test_window_records_of_v2_are_read_by_a_v1_reader_and_v1_records_by_a_v2_reader() -> None:
    v1, v2 = default_registry().versions(CROSSING_WINDOW)[:2]
    assert (v1.version, v2.version) == (1, 2)
    base = {
        f["name"]: f.get("default", 0) if f["type"] != "string" else "x"
        for f in v1.parsed["fields"]
    }
    new = dict(base)
    new.update(
        consensus_wait_minutes=2880,
        consensus_queue_vehicles=2500,
        consensus_queue_length_km=19.3,
        source_wait_minutes_min=600,
        source_wait_minutes_max=3000,
        wait_spread=0.8,
        confidence="high",
        confidence_reasons=["3 sources incl. official within 30 min agree within 20 %"],
        sources_by_type={"official_feed": 1, "crowd": 1},
        official_observed_at=1_664_105_400_000,
    )
    # An old sink reads a new aggregator's record: its own fields, the new ones dropped.
    assert decode(encode(new, v2), v1) == base
    # A new sink reads a record from before the upgrade: the new fields at their defaults.
    old = decode(encode(base, v1), v2)
    assert {k: old[k] for k in base} == base
    assert old["confidence"] == "unknown"
    assert old["confidence_reasons"] == [] and old["sources_by_type"] == {}
    assert old["consensus_wait_minutes"] is None
