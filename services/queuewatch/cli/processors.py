"""Commands of the processors stage."""

from __future__ import annotations

from queuewatch.cli.app import app  # noqa: F401
