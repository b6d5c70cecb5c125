"""`queuewatch publish` input limits: an oversized or too deeply nested line is one rejected
line named by its number, and the run goes on with the next."""

from __future__ import annotations

import io
import json
from typing import Any

from queuewatch.contract.validation import Violation
from queuewatch.producers.publish import (
    MAX_JSON_DEPTH,
    Oversized,
    json_depth,
    publish_lines,
    read_lines,
)

NOW_MS = 1_664_000_000_000


def valid_line(event_id: str) -> str:
    return json.dumps(
        {
            "event_id": event_id,
            "crossing_id": "ge-ru-verkhny-lars",
            "from_country": "RU",
            "to_country": "GE",
            "traffic_class": "car",
            "observed_at": "2022-09-24T05:00:00Z",
            "source": {"type": "journalist", "name": "echo", "url": None},
            "wait_minutes": 2400,
        }
    )


class Collect:
    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []

    def publish(self, report: dict[str, Any]) -> None:
        self.published.append(report)

    def publish_raw(self, key: bytes | None, value: bytes) -> None:
        raise AssertionError("publish never sends raw bytes")


def run(text: str, max_bytes: int = 4096) -> tuple[Collect, dict[int, list[str]], Any]:
    sink = Collect()
    invalid: dict[int, list[str]] = {}

    def on_invalid(number: int, violations: list[Violation]) -> None:
        invalid[number] = [str(v) for v in violations]

    summary = publish_lines(
        read_lines(io.StringIO(text), max_bytes),
        sink,
        on_invalid,
        now_ms=lambda: NOW_MS,
        max_line_bytes=max_bytes,
    )
    return sink, invalid, summary


def test_a_line_over_the_cap_is_rejected_by_number_and_the_next_line_is_published() -> None:
    huge = '{"note": "' + "x" * 20_000 + '"}'
    text = "\n".join([valid_line("a"), huge, valid_line("b")]) + "\n"
    sink, invalid, summary = run(text)
    assert [r["event_id"] for r in sink.published] == ["a", "b"]
    assert list(invalid) == [2]
    assert "over the 4096-byte cap" in invalid[2][0]
    assert "QUEUEWATCH_PUBLISH_MAX_LINE_BYTES" in invalid[2][0]
    assert (summary.lines, summary.published, summary.rejected) == (3, 2, 1)


def test_an_oversized_last_line_without_newline_is_still_one_rejected_line() -> None:
    sink, invalid, summary = run(valid_line("a") + "\n" + "[" * 50_000)
    assert list(invalid) == [2] and summary.rejected == 1 and len(sink.published) == 1


def test_the_reader_never_holds_more_than_the_cap_of_a_line() -> None:
    class Spy(io.StringIO):
        largest = 0

        def readline(self, size: int | None = -1) -> str:  # type: ignore[override]
            text = super().readline(size)
            Spy.largest = max(Spy.largest, len(text))
            return text

    items = list(read_lines(Spy("y" * 100_000 + "\nok\n"), 1000))
    assert items == [Oversized(100_001), "ok\n"]
    assert Spy.largest <= 1001


def test_multibyte_text_is_measured_in_bytes() -> None:
    line = "é" * 600  # 600 characters, 1200 bytes
    assert list(read_lines(io.StringIO(line + "\n"), 1024)) == [Oversized(1200)]


def test_json_nested_past_the_parser_is_an_invalid_line_not_a_recursion_error() -> None:
    deep = "[" * 100_000 + "]" * 100_000  # json.loads raises RecursionError on this
    text = "\n".join([deep, valid_line("after")]) + "\n"
    sink, invalid, _summary = run(text, max_bytes=1_000_000)
    assert list(invalid) == [1]
    assert f"nested more than {MAX_JSON_DEPTH} levels deep" in invalid[1][0]
    assert [r["event_id"] for r in sink.published] == ["after"]


def test_json_nested_deeper_than_a_report_but_parseable_is_rejected_too() -> None:
    nested: Any = {}
    for _ in range(MAX_JSON_DEPTH):
        nested = {"n": nested}
    _sink, invalid, _ = run(json.dumps(nested) + "\n")
    assert list(invalid) == [1] and "nested more than" in invalid[1][0]


def test_json_depth_counts_containers_without_recursion() -> None:
    assert json_depth(1) == 0
    assert json_depth({"source": {"type": "x"}, "tags": [1, [2]]}) == 3
