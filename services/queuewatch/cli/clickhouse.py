"""Commands of the clickhouse stage."""

from __future__ import annotations

from queuewatch.cli.app import app  # noqa: F401
