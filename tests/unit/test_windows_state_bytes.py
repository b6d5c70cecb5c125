"""The state record's bytes equal plain ``json.dumps`` of the state, whatever is cached."""

from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from queuewatch.aggregator.state import AggregationConfig, CrossingState
from queuewatch.aggregator.state_codec import decode_state, encode_state

HOUR = 3_600_000
T0 = 1_663_977_600_000  # 2022-09-24T00:00:00Z
CONFIG = AggregationConfig.from_spec("1h:1h:5m,3h:3h:15m,24h:24h:1h", "2h")


def reference_bytes(state: CrossingState) -> bytes:
    """The record as first specified: one json.dumps of the whole object, nothing cached."""
    c = state.counters
    obj: dict[str, Any] = {
        "f": 1,
        "cfg": state.config.spec,
        "id": state.crossing_id,
        "seq": state.seq,
        "wm": state.watermark,
        "n": [c.accepted, c.duplicates, c.late, c.replayed],
        "applied": [[p, o] for p, o in state.applied.items()],
        "dedup": [[k, v] for k, v in state.dedup.items()],
        "lanes": [
            [
                list(lane_key),
                [
                    [
                        [[p, pane.to_obj()] for p, pane in fs.panes.items()],
                        [[p, w] for p, w in fs.dirty.items()],
                    ]
                    for fs in lane
                ],
            ]
            for lane_key, lane in state.lanes.items()
        ],
        "snap": [
            [list(lane_key), index, start, row]
            for (lane_key, index, start), row in state.snapshots.items()
        ],
    }
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def _report(rng: random.Random, t: int, n: int) -> dict[str, Any]:
    return {
        "event_id": f"e{n}" if rng.random() > 0.05 else f"e{rng.randrange(n + 1)}",
        "crossing_id": "x",
        "from_country": "RU",
        "to_country": "GE",
        "traffic_class": rng.choice(["car", "truck"]),
        "observed_at": t,
        "source": {"type": "crowd", "name": f"s{rng.randrange(4)}", "url": None},
        "wait_minutes": rng.choice([None, 0, rng.randrange(3000)]),
        "queue_vehicles": rng.choice([None, rng.randrange(500)]),
        "queue_length_km": rng.choice([None, rng.random() * 9]),
        "status": rng.choice(["open", "unknown", "closed"]),
    }


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 40), st.integers(8, 90))
def test_cached_state_bytes_equal_a_plain_dump_while_ids_are_added_and_trimmed(
    seed: int, write_every: int, minutes_per_report: int
) -> None:
    rng = random.Random(seed)
    state = CrossingState("x", CONFIG)
    trimmed = 0
    reused = 0  # snapshots written again from their cached JSON
    # 300 reports over 40 h to 19 days of event time: the de-duplication list gets trimmed.
    for n in range(300):
        t = T0 + n * minutes_per_report * 60_000 - rng.randrange(3 * HOUR)
        state.apply(_report(rng, t, n), 0, n)
        if n % write_every == 0:
            cached = state.snap_json
            reused += sum(cached.get(k, (None,))[0] is row for k, row in state.snapshots.items())
            data = encode_state(state)
            assert data == reference_bytes(state), n
            if rng.random() < 0.1:  # a restart: the caches start empty again
                trimmed += state.dedup_trimmed
                state = decode_state(data, CONFIG)
        if n % 97 == 0:
            state.take_changed()
    assert encode_state(state) == reference_bytes(state)
    assert trimmed + state.dedup_trimmed > 0  # the trimming path was exercised
    if write_every < 40:
        assert reused > 0  # so was the snapshot cache (a record written twice between takes)
