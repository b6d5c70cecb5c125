"""The aggregator's last resort for a state record over the limit (aggregator/bound.py, app)."""

from __future__ import annotations

from pathlib import Path

import pytest

from queuewatch.aggregator import app as appmod
from queuewatch.aggregator import storage
from queuewatch.aggregator.bound import STATE_TOO_LARGE
from queuewatch.aggregator.intake import H_CODE, H_OFFSET, RawMessage, intake, reader_schema
from queuewatch.aggregator.state import NO_WATERMARK, CrossingState
from queuewatch.aggregator.state_codec import decode_state, encode_state
from queuewatch.contract.codec import encode
from queuewatch.settings import AggregatorSettings, CommonSettings
from tests.unit.test_validation import NOW, valid_record


def test_a_batch_that_would_overflow_a_crossings_record_dead_letters_the_rest_of_its_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: StateTooLargeError stopped the worker, and the replay stopped it again.

    Since the state is written incrementally only the head can grow large: the marks and
    snapshots of unsent windows, here one more pane per report.
    """
    common = CommonSettings(home=str(tmp_path), kafka_bootstrap="127.0.0.1:1")
    agg = appmod.Aggregator(common, AggregatorSettings(), 3)  # no broker: nothing is started
    reader = reader_schema()
    cid = "ge-ru-verkhny-lars"
    raw = [
        RawMessage(
            "reports",
            1,
            i,
            NOW,
            cid.encode(),
            encode(
                valid_record(event_id=f"flood-{i:04d}", observed_at=NOW - (100 - i) * 300_000),
                reader,
            ),
        )
        for i in range(100)
    ]
    accepted, dead = intake(raw, reader)
    assert len(accepted) == 100 and dead == []
    durable = CrossingState(cid, agg.config)
    for item in accepted[:20]:
        durable.apply(item.record, item.partition, item.offset)
    agg.store.table.data[cid.encode()] = encode_state(durable)  # the last batch's record

    def size_after(reports: int) -> int:  # as the worker rebuilds it: the record, then the batch
        state = decode_state(agg.store.table.data[cid.encode()], agg.config)
        for item in accepted[:reports]:
            state.apply(item.record, item.partition, item.offset)
        return agg.store.size(state)

    limit = size_after(70)
    assert size_after(71) > limit
    monkeypatch.setattr(storage, "STATE_RECORD_MAX_BYTES", limit)

    state, letters = agg._fit(cid, 2 * limit, accepted, [NO_WATERMARK] * 100, raw)

    assert agg.store.size(state) <= limit
    assert agg.states[cid] is state and state.applied == {1: 69}
    assert [int(dict(d.headers)[H_OFFSET]) for d in letters] == list(range(70, 100))
    assert {dict(d.headers)[H_CODE] for d in letters} == {STATE_TOO_LARGE.encode()}
    assert [d.value for d in letters] == [m.value for m in raw[70:]]
