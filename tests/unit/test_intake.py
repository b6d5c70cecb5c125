"""Intake: which messages become dead letters, and letters cut to fit the dead-letter topic."""

from __future__ import annotations

import hashlib

from queuewatch.aggregator.intake import (
    H_CODE,
    H_OFFSET,
    H_ORIGINAL_BYTES,
    H_ORIGINAL_SHA256,
    KEY_MISMATCH,
    DeadLetter,
    RawMessage,
    dead_letter,
    fit_letter,
    intake,
    letter_bytes,
    reader_schema,
)
from queuewatch.contract.codec import encode
from tests.unit.test_validation import NOW, valid_record


def _message(key: bytes | None, offset: int = 7) -> RawMessage:
    reader = reader_schema()
    return RawMessage("reports", 2, offset, NOW, key, encode(valid_record(), reader))


def test_a_report_keyed_by_its_crossing_id_is_accepted() -> None:
    accepted, dead = intake([_message(b"ge-ru-verkhny-lars")], reader_schema())
    assert [a.offset for a in accepted] == [7] and dead == []


def test_a_report_keyed_by_another_crossing_or_by_nothing_is_a_key_mismatch_letter() -> None:
    messages = [_message(b"fi-ru-vaalimaa", 7), _message(None, 8)]
    accepted, dead = intake(messages, reader_schema())
    assert accepted == []
    assert [d.code for d in dead] == [KEY_MISMATCH, KEY_MISMATCH]
    headers = dict(dead[0].headers)
    assert headers[H_CODE] == b"key_mismatch"
    assert b"ge-ru-verkhny-lars" in headers["queuewatch.error.message"]
    assert dead[0].value == messages[0].value and dead[0].key == b"fi-ru-vaalimaa"


def _letter(value: bytes) -> DeadLetter:
    msg = RawMessage("reports", 1, 42, NOW, b"k", value, [("trace", b"abc")])
    return dead_letter(msg, "malformed_payload", "does not decode")


def test_a_letter_that_fits_is_sent_unchanged() -> None:
    letter = _letter(b"x" * 1000)
    assert fit_letter(letter, letter_bytes(letter)) is letter


def test_a_letter_too_large_is_cut_to_fit_with_the_originals_size_hash_and_offset() -> None:
    value = bytes(range(256)) * 4096  # 1 MiB
    cut = fit_letter(_letter(value), 100_000)
    assert letter_bytes(cut) == 100_000
    assert value.startswith(cut.value or b"") and len(cut.value or b"") > 99_000
    headers = dict(cut.headers)
    assert headers[H_ORIGINAL_BYTES] == str(len(value)).encode()
    assert headers[H_ORIGINAL_SHA256] == hashlib.sha256(value).hexdigest().encode()
    assert headers[H_OFFSET] == b"42" and headers["trace"] == b"abc"
    assert cut.code == "malformed_payload"
