"""How every queuewatch process writes its log: text for people, or JSON lines for shippers.

Why one module: the CLI commands configure logging with :func:`configure`, but faust's worker
replaces the root handlers with its own when it starts, so the aggregator hands it
:func:`faust_logging_config` too; both produce the same lines. In JSON form each line is one
object with ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``process`` (the command, e.g.
``aggregator``), ``pid``, ``event`` (the message) and any structured fields a call passed in
``extra=``; secrets are already masked by :mod:`queuewatch.redaction`, which works on the
record before any formatter sees it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Literal

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The name of the handler :func:`configure` adds, so a second call replaces it.
_HANDLER_NAME = "queuewatch"


def process_name(argv: list[str] | None = None) -> str:
    """The queuewatch command this process runs (``aggregator``, ``sink``...), for the lines."""
    args = sys.argv if argv is None else argv
    words = [a for a in args[1:] if not a.startswith("-")]
    return words[0] if words else "queuewatch"


class QueuewatchJsonFormatter(JsonFormatter):
    """One JSON object per record: the fixed fields first, then the record's extras."""

    def __init__(self, process: str) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger", "message": "event"},
            timestamp=False,
        )
        self.process = process

    def add_fields(
        self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_record["time"] = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z"
        )
        log_record["process"] = self.process
        log_record["pid"] = os.getpid()
        super().add_fields(log_record, record, message_dict)


def formatter(fmt: LogFormat, process: str) -> logging.Formatter:
    """The formatter of ``fmt``."""
    if fmt == "json":
        return QueuewatchJsonFormatter(process)
    return logging.Formatter(TEXT_FORMAT)


def configure(level: str, fmt: LogFormat, process: str | None = None) -> None:
    """Log to stderr at ``level`` in ``fmt`` (replacing the handler an earlier call added;
    other handlers, such as a test runner's, stay)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt, process or process_name()))
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def faust_logging_config(level: str, fmt: LogFormat, process: str) -> dict[str, Any] | None:
    """A ``logging.config`` dict for faust's worker in ``fmt``; None keeps faust's own text."""
    if fmt != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": QueuewatchJsonFormatter, "process": process}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
                "level": level.upper(),
            }
        },
        "root": {"level": level.upper(), "handlers": ["default"]},
    }
