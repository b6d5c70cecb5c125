"""The performance table shows queuewatch and every peer of the same run side by side."""

from __future__ import annotations

from typing import Any

from benchmarks.report import _peer_rows


def equality(**extra: Any) -> dict[str, Any]:
    """A compare() result with every window equal."""
    return {"equal": True, "compared": 10, "mismatched": 0, "missing_in_peer": 0,
            "missing_in_ours": 0, **extra}  # fmt: skip


def peer_entry(events_per_s: float, ratio: float, **eq: Any) -> dict[str, Any]:
    """One measured peer as the peer scenario writes it."""
    return {"status": "ok", "median": {"events_per_s": events_per_s, "startup_s": 2.0},
            "ratio_ours_to_peer": ratio, "equality": equality(**eq)}  # fmt: skip


OURS = {"median": {"events_per_s": 2000.0, "startup_s": 3.0}}
DATASET = {"reports": 5000, "crossings": 100}


def test_peer_rows_put_ours_quix_and_bytewax_in_one_table() -> None:
    peers = {
        "quix": peer_entry(1000, 2.0),
        "bytewax": peer_entry(4000, 0.5, beyond_grace_windows=97),
    }
    rows = _peer_rows({"dataset": DATASET, "ours": OURS, "peers": peers})
    text = "\n".join(rows)
    assert "| queuewatch aggregator | 2,000 events/s |" in text
    assert "| Quix Streams 3.28 | 1,000 events/s (ours is 2.00x) |" in text
    assert "| Bytewax 0.21 | 4,000 events/s (ours is 0.50x) |" in text
    assert "start-up, ours / Quix / Bytewax | 3.0 s / 2.0 s / 2.0 s" in text
    bytewax_eq = next(r for r in rows if "closed windows equal, Bytewax" in r)
    assert "yes" in bytewax_eq and "97 windows holding a report later than the grace" in bytewax_eq


def test_peer_rows_say_why_a_peer_was_not_measured() -> None:
    peers = {"quix": peer_entry(1000, 2.0),
             "bytewax": {"status": "skipped", "reason": "venv not built"}}  # fmt: skip
    rows = _peer_rows({"dataset": DATASET, "ours": OURS, "peers": peers})
    assert "| peer | Bytewax 0.21 | not measured: venv not built |" in rows
    assert not any("closed windows equal, Bytewax" in r for r in rows)


def test_peer_rows_read_a_result_file_from_before_the_bytewax_peer() -> None:
    legacy = {"dataset": DATASET, "ours": OURS, "peer": {"median": {"events_per_s": 929.0,
              "startup_s": 23.6}}, "ratio_ours_to_peer": 1.15, "equality": equality()}  # fmt: skip
    text = "\n".join(_peer_rows(legacy))
    assert "| Quix Streams 3.28 | 929 events/s (ours is 1.15x) |" in text
    assert "Bytewax" not in text
