"""QUEUEWATCH_LOG_FORMAT=json: every line a real processor writes is one JSON object.

The aggregator matters most: faust's worker installs its own logging when it starts, so this
is where a text line would slip through.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.test_aggregator_harness import AggregatorProcess, make_topics

pytestmark = pytest.mark.integration


def test_every_line_of_the_aggregator_is_a_json_object_with_its_fields(
    bootstrap: str, tmp_path: Path
) -> None:
    settings = make_topics(bootstrap, uuid.uuid4().hex[:8], 2)
    agg = AggregatorProcess(
        settings, tmp_path, f"agg-{uuid.uuid4().hex[:6]}", QUEUEWATCH_LOG_FORMAT="json"
    )
    agg.start()
    log = tmp_path / "aggregator-1.log"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "Worker ready" not in log.read_text():
            assert agg.alive(), agg.logs()
            time.sleep(0.5)
        assert "Worker ready" in log.read_text(), agg.logs()
    finally:
        assert agg.stop() == 0
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    objects = [json.loads(line) for line in lines]  # raises on any text line
    assert len(objects) > 10
    assert {o["process"] for o in objects} == {"aggregator"}
    assert all({"time", "level", "logger", "pid", "event"} <= set(o) for o in objects)
    assert any(o["logger"].startswith("faust") for o in objects)  # faust's own lines too
    assert any(o["logger"].startswith("queuewatch") for o in objects)
