"""The logic behind `queuewatch publish` and `queuewatch simulate`, free of the command line.

``publish``: read JSON Lines, check every line with the contract, hand the valid ones to a
:class:`~queuewatch.kafka.producer.ReportProducer` (or to nothing, on a dry run) and report each
invalid line by its number. ``simulate``: pace the simulator's stream in compressed time and
publish it, including its deliberately invalid share as raw bytes, since those exist to exercise
the processors' dead-letter path.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol

from queuewatch.contract.codec import EncodeError, encode
from queuewatch.contract.schemas import QUEUE_REPORT, default_registry
from queuewatch.contract.validation import (
    RECORD_FIELDS,
    ReportInvalid,
    Violation,
    parse_json_report,
    parse_rfc3339_ms,
)
from queuewatch.producers.simulator import SimulatedReport


class ReportSink(Protocol):
    """Where valid reports go: a ReportProducer (publish_raw is for the simulator's defects)."""

    def publish(self, report: dict[str, Any]) -> None: ...

    def publish_raw(self, key: bytes | None, value: bytes) -> None: ...


@dataclass
class PublishSummary:
    """What one run of `queuewatch publish` did."""

    lines: int = 0  # non-blank lines read
    published: int = 0
    rejected: int = 0

    @property
    def all_valid(self) -> bool:
        """True when no line was rejected: the command's exit status 0."""
        return self.rejected == 0


def wall_clock_ms() -> int:
    """This machine's clock in UTC ms: the reference of the future-time rule for producers."""
    return time.time_ns() // 1_000_000


#: Deepest nesting a report line may have. A report is an object holding ``source`` and
#: ``location`` objects (depth 2); the cap sits far above that and far below the recursion
#: limit of every step that walks a parsed value (json itself, validation, error messages).
MAX_JSON_DEPTH = 16
#: Default cap on a line's size: a report is well under 2 KiB; 64 KiB leaves room for long
#: notes while a line of megabytes (a wrong file, an attack) is refused before it is parsed.
MAX_LINE_BYTES = 65_536


@dataclass(frozen=True)
class Oversized:
    """A line longer than the cap, read and dropped in pieces: only its size is kept."""

    size: int  # bytes, at least the cap + 1


def read_lines(stream: IO[str], max_bytes: int = MAX_LINE_BYTES) -> Iterator[str | Oversized]:
    """The lines of ``stream``; one over ``max_bytes`` comes as :class:`Oversized`.

    Never holds more than ``max_bytes`` characters of a line in memory, so a file of one
    endless line cannot exhaust it.
    """
    while True:
        text = stream.readline(max_bytes + 1)
        if not text:
            return
        if len(text) > max_bytes and not text.endswith("\n"):
            size = len(text.encode())
            while not text.endswith("\n"):
                text = stream.readline(max_bytes + 1)
                if not text:
                    break
                size += len(text.encode())
            yield Oversized(size)
            continue
        size = len(text.rstrip("\n").encode())
        yield Oversized(size) if size > max_bytes else text


def json_depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        stack.extend((child, depth) for child in children)
    return deepest


def check_line(text: str, now_ms: int) -> dict[str, Any]:
    """One JSON Lines line as a valid record, or ReportInvalid naming every problem."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportInvalid(
            [Violation("json", text[:80], f"not valid JSON: {exc.msg} at column {exc.colno}")]
        ) from None
    except RecursionError:
        obj = None  # deeper than the parser goes: the same answer as the cap below
        depth = MAX_JSON_DEPTH + 1
    else:
        depth = json_depth(obj)
    if depth > MAX_JSON_DEPTH:
        raise ReportInvalid(
            [
                Violation(
                    "json",
                    None,
                    f"nested more than {MAX_JSON_DEPTH} levels deep; a report is one object "
                    "whose fields nest 2 levels",
                )
            ]
        )
    return parse_json_report(obj, now_ms)


def publish_lines(
    lines: Iterable[str | Oversized],
    sink: ReportSink | None,
    on_invalid: Callable[[int, list[Violation]], None],
    now_ms: Callable[[], int] = wall_clock_ms,
    on_line: Callable[[int], None] | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> PublishSummary:
    """Validate each line and publish the valid ones; ``sink`` None is a dry run.

    Line numbers count from 1 and include blank lines (which are skipped), so they match what
    an editor shows. ``on_line`` is told the byte length of each line (for a progress bar).
    A line over the size cap (an :class:`Oversized` from :func:`read_lines`) or nested too
    deeply is rejected like any invalid line, and the run goes on with the next one.
    """
    summary = PublishSummary()
    for number, text in enumerate(lines, start=1):
        if isinstance(text, Oversized):
            if on_line is not None:
                on_line(text.size)
            summary.lines += 1
            summary.rejected += 1
            on_invalid(
                number,
                [
                    Violation(
                        "line",
                        None,
                        f"{text.size} bytes, over the {max_line_bytes}-byte cap "
                        "(QUEUEWATCH_PUBLISH_MAX_LINE_BYTES); one report per line",
                    )
                ],
            )
            continue
        if on_line is not None:
            on_line(len(text.encode()))
        if not text.strip():
            continue
        summary.lines += 1
        try:
            record = check_line(text, now_ms())
        except ReportInvalid as exc:
            summary.rejected += 1
            on_invalid(number, exc.violations)
            continue
        if sink is not None:
            sink.publish(record)
        summary.published += 1
    return summary


def format_invalid(number: int, violations: list[Violation]) -> Iterator[str]:
    """The stderr lines for one invalid input line: ``line N: <field>: <reason>``."""
    for violation in violations:
        yield f"line {number}: {violation}"


def write_json_lines(reports: Iterable[SimulatedReport], out: IO[str]) -> int:
    """Write the simulator's reports as JSON Lines (the input of `queuewatch publish`)."""
    written = 0
    for item in reports:
        out.write(json.dumps(item.report, ensure_ascii=False, separators=(",", ":")))
        out.write("\n")
        written += 1
    return written


# --- simulate ----------------------------------------------------------------------------------


@dataclass
class SimulationSummary:
    """What one run of `queuewatch simulate` published."""

    published: int = 0  # valid reports, through the validating publish()
    invalid_published: int = 0  # deliberate defects, as raw bytes for the dead-letter path
    resent: int = 0
    refused: int = 0  # simulated-valid reports the contract refused (e.g. start in the future)


def defect_payload(report: dict[str, Any]) -> tuple[bytes | None, bytes]:
    """Key and value that carry a deliberately invalid report onto the log.

    A defect Avro can carry (a value out of range, a lower-case country) is encoded as a normal
    record, so processors must catch it by validation; one it cannot (a misspelt field, a time
    without offset, an unknown enum symbol) goes as its JSON text, the way a misconfigured client
    would send it, and processors must catch it at decoding.
    """
    crossing = report.get("crossing_id")
    key = crossing.encode() if isinstance(crossing, str) else None
    raw = json.dumps(report, separators=(",", ":")).encode()
    if any(name not in RECORD_FIELDS for name in report):
        return key, raw
    record: dict[str, Any] = {name: report.get(name) for name in RECORD_FIELDS}
    if record["status"] is None:
        record["status"] = "unknown"
    try:
        record["observed_at"] = parse_rfc3339_ms(str(report.get("observed_at")))
        payload = encode(record, default_registry().latest(QUEUE_REPORT))
    except (ValueError, EncodeError):
        return key, raw
    return key, payload


def run_simulation(
    reports: Iterable[SimulatedReport],
    sink: ReportSink,
    *,
    speed: float,
    rate: float,
    stop: threading.Event,
    monotonic: Callable[[], float] = time.monotonic,
    on_published: Callable[[SimulationSummary], None] | None = None,
) -> SimulationSummary:
    """Publish ``reports`` paced in compressed time until they end or ``stop`` is set.

    ``speed`` is simulated seconds per real second (0: no pacing); ``rate`` caps reports per
    second (0: no cap). Waiting uses ``stop.wait`` so SIGTERM ends a quiet stretch at once.
    """
    summary = SimulationSummary()
    first_arrival: int | None = None
    t0 = monotonic()
    next_slot = t0
    for item in reports:
        if stop.is_set():
            break
        due = t0
        if speed > 0:
            if first_arrival is None:
                first_arrival = item.arrival_ms
            due = t0 + (item.arrival_ms - first_arrival) / 1000.0 / speed
        if rate > 0:
            due = max(due, next_slot)
            next_slot = due + 1.0 / rate
        wait = due - monotonic()
        if wait > 0 and stop.wait(wait):
            break
        if item.intentionally_invalid:
            sink.publish_raw(*defect_payload(item.report))
            summary.invalid_published += 1
        else:
            try:
                sink.publish(item.report)
            except ReportInvalid:
                summary.refused += 1
                continue
            summary.published += 1
            summary.resent += item.resent
        if on_published is not None:
            on_published(summary)
    return summary


__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_LINE_BYTES",
    "Oversized",
    "PublishSummary",
    "ReportSink",
    "SimulationSummary",
    "check_line",
    "defect_payload",
    "format_invalid",
    "json_depth",
    "publish_lines",
    "read_lines",
    "run_simulation",
    "wall_clock_ms",
    "write_json_lines",
]
