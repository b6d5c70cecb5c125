"""Every Avro schema version in ``schemas/``, parsed once and known by fingerprint.

A schema file declares its record name and, in the custom attribute ``queuewatch.version``,
its version. Files named ``<name>.avsc`` are the current version; older versions stay next to
them as ``<name>.v<N>.avsc`` so that readers still resolve bytes written with them.
fastavro re-parses a raw dict on every call, so everything here is parsed exactly once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from queuewatch.errors import QueuewatchError
from queuewatch.resources import schemas_dir

QUEUE_REPORT = "org.queuewatch.v1.QueueReport"
CROSSING_WINDOW = "org.queuewatch.v1.CrossingWindow"
CROSSING_CONTRIBUTION = "org.queuewatch.v1.CrossingContribution"


class SchemaError(QueuewatchError):
    """A schema file is missing or malformed."""


@dataclass(frozen=True)
class SchemaVersion:
    """One parsed schema version and its identity on the wire."""

    name: str
    version: int
    path: Path
    raw: dict[str, Any] = field(repr=False, hash=False, compare=False)
    parsed: Any = field(repr=False, hash=False, compare=False)
    fingerprint: bytes = b""  # CRC-64-AVRO of the canonical form, 8 bytes little-endian

    @property
    def fingerprint_hex(self) -> str:
        """The fingerprint as 16 hex digits, as ClickHouse stores it."""
        return self.fingerprint.hex()


def load_schema_file(path: Path) -> SchemaVersion:
    """Parse one ``.avsc`` file and compute its fingerprint."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SchemaError(f"{path}: cannot read the schema ({exc}); fix the file.") from exc
    name = f"{raw.get('namespace', '')}.{raw['name']}".lstrip(".")
    version = int(raw.get("queuewatch.version", 1))
    canonical = to_parsing_canonical_form(raw)
    fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    parsed = fastavro.parse_schema(raw)
    return SchemaVersion(name, version, path, raw, parsed, fp)


@dataclass
class SchemaRegistry:
    """The schema versions a process knows, by fingerprint and by (name, version)."""

    by_fingerprint: dict[bytes, SchemaVersion] = field(default_factory=dict)
    by_name: dict[str, dict[int, SchemaVersion]] = field(default_factory=dict)

    def add(self, schema: SchemaVersion) -> None:
        """Register a version; two files may not claim the same (name, version)."""
        versions = self.by_name.setdefault(schema.name, {})
        known = versions.get(schema.version)
        if known is not None and known.fingerprint != schema.fingerprint:
            raise SchemaError(
                f"{schema.path} and {known.path} both claim {schema.name} version "
                f"{schema.version}; give the newer file a higher queuewatch.version."
            )
        versions[schema.version] = schema
        self.by_fingerprint[schema.fingerprint] = schema

    def latest(self, name: str) -> SchemaVersion:
        """The newest version of a record: what this code writes and reads into."""
        try:
            versions = self.by_name[name]
        except KeyError:
            raise SchemaError(f"no schema named {name} in {schemas_dir()}") from None
        return versions[max(versions)]

    def versions(self, name: str) -> list[SchemaVersion]:
        """All versions of a record, oldest first."""
        return [v for _, v in sorted(self.by_name.get(name, {}).items())]


def load_registry(folder: Path) -> SchemaRegistry:
    """Read every ``*.avsc`` file of a folder into a registry."""
    registry = SchemaRegistry()
    for path in sorted(folder.glob("*.avsc")):
        registry.add(load_schema_file(path))
    return registry


@cache
def default_registry() -> SchemaRegistry:
    """The registry of the shipped ``schemas/`` folder, loaded once per process."""
    return load_registry(schemas_dir())
