"""The pure parts of `queuewatch dlq`: selection, ids, previews, and what is refused."""

from __future__ import annotations

import pytest

from queuewatch.aggregator.intake import H_CODE, H_OFFSET, H_PARTITION, H_TOPIC
from queuewatch.operations.dlq import (
    DlqError,
    Letter,
    find,
    hexdump,
    link,
    printable,
    refused,
    select,
)


def letter(partition: int, offset: int, code: str = "invalid_report", **extra: bytes) -> Letter:
    headers = [
        ("trace", b"abc"),
        (H_CODE, code.encode()),
        (H_TOPIC, b"queue-reports"),
        (H_PARTITION, b"4"),
        (H_OFFSET, b"99"),
        *extra.items(),
    ]
    return Letter(partition, offset, 1000 + offset, b"k", b"\xc3\x01payload", tuple(headers))


LETTERS = [letter(0, 0), letter(0, 1, "unknown_fingerprint"), letter(1, 0), letter(2, 5)]


def test_select_filters_by_reason_then_pages() -> None:
    assert select(LETTERS, "invalid_report") == [LETTERS[0], LETTERS[2], LETTERS[3]]
    assert select(LETTERS, "invalid_report", offset=1, limit=1) == [LETTERS[2]]
    assert select(LETTERS, limit=2) == LETTERS[:2]


def test_find_takes_a_list_number_or_partition_offset_and_says_what_is_wrong() -> None:
    assert find(LETTERS, "2") is LETTERS[1]
    assert find(LETTERS, "2:5") is LETTERS[3]
    with pytest.raises(DlqError, match="N runs from 1 to 4"):
        find(LETTERS, "5")
    with pytest.raises(DlqError, match="no dead letter at 3:0"):
        find(LETTERS, "3:0")
    with pytest.raises(DlqError, match="not PARTITION:OFFSET"):
        find(LETTERS, "x:y")


def test_a_letter_reads_its_reason_and_source_and_keeps_only_the_original_headers() -> None:
    x = LETTERS[1]
    assert (x.reason, x.source, x.ref) == ("unknown_fingerprint", "queue-reports[4]@99", "0:1")
    assert x.original_headers() == [("trace", b"abc")]


def test_already_republished_cut_empty_and_window_letters_are_refused_the_others_not() -> None:
    cut = letter(1, 7, **{"queuewatch.original.bytes": b"20000000"})
    empty = Letter(1, 8, 0, b"k", None, ((H_TOPIC, b"queue-reports"),))
    window = Letter(2, 9, 0, b"k", b"v", ((H_TOPIC, b"crossing-windows"),))
    raw_sink = letter(2, 10, **{"queuewatch.error.stage": b"raw"})
    why = refused(
        [*LETTERS, cut, empty, window, raw_sink], "dlq", "queue-reports", {link("dlq", LETTERS[2])}
    )
    assert set(why) == {"1:0", "1:7", "1:8", "2:9", "2:10"}
    assert "already counted it" in why["2:10"]  # a sink's letter: the aggregator counted it
    assert "only reports go back" in why["2:9"]
    assert "already re-published" in why["1:0"]
    assert "first bytes" in why["1:7"]


def test_previews_show_text_and_dots_and_the_dump_has_offsets() -> None:
    assert printable(b"ab\x00c", 3) == "ab...."
    assert printable(None, 3) == "(null)"
    lines = hexdump(bytes(range(20)))
    assert lines[0].startswith("00000000  00 01 02") and lines[1].startswith("00000010  10 11")
