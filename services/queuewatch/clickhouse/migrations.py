"""Versioned schema migrations: ``infra/clickhouse/NNNN_name.sql``, applied in order, once.

Each file is a list of statements separated by ``;`` at the end of a line, with
``{{database}}`` standing for the database (``QUEUEWATCH_CLICKHOUSE_DATABASE``), so the same
files build a test database, the embedded default and a server. Every statement is written
to be re-runnable (``IF NOT EXISTS``, ``CREATE OR REPLACE VIEW``): two processes migrating
at once, or a crash between a file's statements and its record, end in the same schema.
Applied files are recorded in ``<database>.schema_migrations`` with a checksum; an applied
file that changed afterwards is an error, because the change would never run anywhere that
already applied it: add a new file instead.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from queuewatch.clickhouse.client import ENGINE_LOCK, clickhouse_errors
from queuewatch.clickhouse.exceptions import MigrationError
from queuewatch.resources import migrations_dir

log = logging.getLogger(__name__)

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_STATEMENT_END = re.compile(r";[ \t]*(?:\n|$)")
_DATABASE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PLACEHOLDER = "{{database}}"


@dataclass(frozen=True)
class Migration:
    """One migration file: its version, name, statements and checksum."""

    version: int
    name: str
    path: Path
    statements: tuple[str, ...]
    checksum: str


def split_statements(sql: str) -> list[str]:
    """Split a file into statements at ``;`` ending a line; comment-only chunks are dropped."""
    out = []
    for chunk in _STATEMENT_END.split(sql):
        code = [line for line in chunk.splitlines() if not line.strip().startswith("--")]
        text = "\n".join(code).strip()
        if text:
            out.append(text)
    return out


def load_migrations(folder: Path | None = None) -> list[Migration]:
    """Every migration file of ``folder`` (default: the shipped one), oldest first."""
    folder = folder or migrations_dir()
    found: dict[int, Migration] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_RE.match(path.name)
        if not match:
            raise MigrationError(
                f"{path.name}: migration files are named NNNN_lower_snake.sql; rename it"
            )
        version = int(match.group(1))
        if version in found:
            raise MigrationError(
                f"{path.name} and {found[version].path.name} share version {version}; "
                "give the newer one the next free number"
            )
        text = path.read_text()
        found[version] = Migration(
            version,
            match.group(2),
            path,
            tuple(split_statements(text)),
            hashlib.sha256(text.encode()).hexdigest(),
        )
    return [found[v] for v in sorted(found)]


def render(statement: str, database: str) -> str:
    """The statement with the database name in place of ``{{database}}``."""
    return statement.replace(PLACEHOLDER, f"`{database}`")


def check_database_name(database: str) -> None:
    if not _DATABASE_RE.match(database):
        raise MigrationError(
            f"database name {database!r} must be a plain identifier (letters, digits, _); "
            "fix QUEUEWATCH_CLICKHOUSE_DATABASE"
        )


def applied_versions(client: Any, database: str) -> dict[int, str]:
    """Version -> checksum of the migrations recorded in ``database``."""
    with ENGINE_LOCK, clickhouse_errors("reading the applied migrations"):
        rows = client.query(
            f"SELECT version, argMax(checksum, applied_at) FROM `{database}`.schema_migrations "
            "GROUP BY version"
        ).result_rows
    return {int(version): str(checksum) for version, checksum in rows}


def migrate(client: Any, database: str, folder: Path | None = None) -> list[Migration]:
    """Apply the migrations not yet recorded in ``database``; return those applied now."""
    check_database_name(database)
    migrations = load_migrations(folder)
    with ENGINE_LOCK, clickhouse_errors(f"creating database {database}"):
        client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        client.command(
            f"CREATE TABLE IF NOT EXISTS `{database}`.schema_migrations ("
            "version UInt32, name String, checksum String, "
            "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)"
            ") ENGINE = ReplacingMergeTree(applied_at) ORDER BY version"
        )
    done = applied_versions(client, database)
    applied: list[Migration] = []
    for migration in migrations:
        known = done.get(migration.version)
        if known is not None:
            if known != migration.checksum:
                raise MigrationError(
                    f"{migration.path.name} changed after it was applied to {database}; "
                    "restore it and put the change in a new migration file"
                )
            continue
        log.info("applying migration %s to %s", migration.path.name, database)
        for statement in migration.statements:
            with ENGINE_LOCK, clickhouse_errors(f"applying {migration.path.name}"):
                client.command(render(statement, database))
        with ENGINE_LOCK, clickhouse_errors(f"recording {migration.path.name}"):
            client.insert(
                f"`{database}`.schema_migrations",
                [[migration.version, migration.name, migration.checksum]],
                column_names=["version", "name", "checksum"],
            )
        applied.append(migration)
    return applied
