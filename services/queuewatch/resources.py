"""Finds the files that travel with the code: Avro schemas, ClickHouse migrations, broker config.

In a checkout they are the top-level ``schemas/`` and ``infra/`` folders; in an installed
wheel (the docker image) they are bundled under ``queuewatch/_bundled``.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_BUNDLED = _PACKAGE / "_bundled"
#: The checkout's root when running from source (services/queuewatch/ -> repo root).
REPO_ROOT = _PACKAGE.parent.parent


def schemas_dir() -> Path:
    """The folder of ``*.avsc`` files, one per schema version."""
    bundled = _BUNDLED / "schemas"
    return bundled if bundled.is_dir() else REPO_ROOT / "schemas"


def migrations_dir() -> Path:
    """The folder of versioned ClickHouse migration files."""
    bundled = _BUNDLED / "clickhouse"
    return bundled if bundled.is_dir() else REPO_ROOT / "infra" / "clickhouse"


def kafka_infra_dir() -> Path:
    """The folder with the broker's pom, server.properties template and log4j config."""
    return REPO_ROOT / "infra" / "kafka"
