"""The benchmark's check of a peer's windows: which windows Bytewax may legitimately differ in.

Bytewax drops a report later than the grace from all its windows; ours keeps it in the windows
that still take it. ``beyond_grace`` names those windows from the log, ``compare`` checks them
on their report count only. The expected windows here are worked out by hand from the rule
(a window takes a report while ``window_end + grace > watermark``).
"""

from __future__ import annotations

from typing import Any

from benchmarks.compare import beyond_grace, compare

MINUTE = 60_000
HOUR = 60 * MINUTE
T0 = 1_000 * 24 * HOUR  # a UTC midnight: every window family starts a window here


def report(event_id: str, at: int, crossing: str = "ru-ge-x0001") -> dict[str, Any]:
    """A report with only the fields the rule reads."""
    return {
        "event_id": event_id,
        "crossing_id": crossing,
        "from_country": "RU",
        "to_country": "GE",
        "traffic_class": "car",
        "observed_at": at,
    }


def test_report_later_than_grace_names_the_windows_ours_still_counts_it_in() -> None:
    # Watermark T0+3h; the report at T0+30min is 2.5 h behind it, past the 2 h grace.
    log = [report("a", T0), report("b", T0 + 3 * HOUR), report("late", T0 + 30 * MINUTE)]
    late = beyond_grace(log)
    key = ("ru-ge-x0001", "RU", "GE", "car")
    # 1 h windows holding T0+30min start at T0-25min..T0+30min; those ending after T0+1h
    # (= watermark - grace) still take it: starts T0+5min..T0+30min.
    assert sorted(s for (*k, size, s) in late if size == "1h") == [
        T0 + m * MINUTE for m in (5, 10, 15, 20, 25, 30)
    ]
    # 3 h windows: starts T0-2h15..T0+30min, ending after T0+1h: starts T0-1h45..T0+30min.
    assert sum(1 for (*_, size, _s) in late if size == "3h") == 10
    # 24 h windows: starts T0-23h..T0, ending after T0+1h: all but the one starting T0-23h.
    assert sum(1 for (*_, size, _s) in late if size == "24h") == 23
    assert all(tuple(k[:4]) == key and n == 1 for k, n in late.items())


def test_report_exactly_at_watermark_minus_grace_is_on_time_for_bytewax() -> None:
    log = [report("a", T0 + 3 * HOUR), report("edge", T0 + HOUR)]
    assert beyond_grace(log) == {}
    log = [report("a", T0 + 3 * HOUR), report("over", T0 + HOUR - 1)]
    assert beyond_grace(log)


def test_report_within_grace_and_duplicate_resends_name_no_window() -> None:
    log = [
        report("a", T0 + 3 * HOUR),
        report("on-time", T0 + 2 * HOUR),  # 1 h behind: within the grace
        report("late", T0),
        report("late", T0),  # a re-send: dropped by both, before the windows
    ]
    late = beyond_grace(log)
    assert late and set(late.values()) == {1}
    # Another crossing's watermark does not make a report late.
    assert beyond_grace([report("x", T0 + 3 * HOUR, "kz-ru-x0002"), report("y", T0)]) == {}


def window(start: int, reports: int, last: int) -> dict[str, Any]:
    """A CrossingWindow record with the fields compare reads."""
    return {"window_end": start + HOUR, "reports": reports, "last_observed_at": last}


def key(start: int, size: str = "1h") -> tuple[str, str, str, str, str, int]:
    return ("ru-ge-x0001", "RU", "GE", "car", size, start)


def test_compare_accepts_a_window_short_of_exactly_its_reports_beyond_grace() -> None:
    far = T0 + 10 * HOUR  # the watermark: every window below is closed
    ours = {key(T0): window(T0, 3, T0 + 10), key(far): window(far, 1, far)}
    late = {key(T0): 1}
    peer = {key(T0): {**window(T0, 2, T0 + 10), "wait_minutes_max": 99}}
    result = compare(ours, peer, late_in_ours=late)
    assert result["equal"], result
    assert result["beyond_grace_windows"] == 1


def test_compare_flags_a_window_short_of_other_reports_than_those_beyond_grace() -> None:
    far = T0 + 10 * HOUR
    ours = {key(T0): window(T0, 3, T0 + 10), key(far): window(far, 1, far)}
    for peer_reports in (3, 1):
        peer = {key(T0): window(T0, peer_reports, T0 + 10)}
        result = compare(ours, peer, late_in_ours={key(T0): 1})
        assert not result["equal"]
        assert result["examples"][0]["reports_expected_vs_peer"] == [2, peer_reports]


def test_compare_wants_a_window_of_only_late_reports_absent_from_the_peer() -> None:
    far = T0 + 10 * HOUR
    ours = {key(T0): window(T0, 2, T0 + 10), key(far): window(far, 1, far)}
    late = {key(T0): 2}
    assert compare(ours, {}, late_in_ours=late)["equal"]
    present = compare(ours, {key(T0): window(T0, 2, T0 + 10)}, late_in_ours=late)
    assert not present["equal"] and present["missing_in_ours"] == 1
    # Without the Bytewax rule (the Quix peer), the same absence is a missing window.
    assert compare(ours, {})["missing_in_peer"] == 1
