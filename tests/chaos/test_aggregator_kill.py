"""The aggregator SIGKILLed mid-stream and restarted: nothing lost, nothing counted twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_aggregator_harness import (
    AggregatorProcess,
    make_scenario,
    make_topics,
    publish,
    read_all,
    reference_windows,
    window_reader,
)

pytestmark = pytest.mark.chaos


@pytest.mark.parametrize("output", ["windows", "contributions"])
def test_sigkill_mid_stream_and_restart_gives_the_same_final_windows(
    bootstrap: str, unique: str, tmp_path: Path, output: str
) -> None:
    settings = make_topics(bootstrap, unique, partitions=3)
    scenario = make_scenario(seed=7)
    expected = reference_windows(scenario.valid_in_order)
    messages = scenario.messages
    third = len(messages) // 3

    # Small batches and a short flush interval: many checkpoints, so a kill lands between them.
    agg = AggregatorProcess(
        settings,
        tmp_path,
        group=f"agg-{unique}",
        QUEUEWATCH_AGGREGATOR_BATCH_SIZE="40",
        QUEUEWATCH_AGGREGATOR_FLUSH_INTERVAL_S="0.2",
        QUEUEWATCH_AGGREGATOR_OUTPUT=output,
    )
    reader = window_reader(output, bootstrap, settings, tmp_path)
    try:
        publish(bootstrap, settings.reports_topic, messages[:third])
        agg.start()
        while reader.count == 0:  # the first run is processing: kill it mid-stream
            assert agg.alive(), agg.logs()
            reader.poll()
        publish(bootstrap, settings.reports_topic, messages[third : 2 * third])
        agg.kill()

        agg.start()
        seen = reader.count
        while reader.count == seen:
            assert agg.alive(), agg.logs()
            reader.poll()
        publish(bootstrap, settings.reports_topic, messages[2 * third :])
        agg.kill()

        agg.start()
        problems = reader.wait_for(expected, timeout_s=150)
        assert problems == [], "\n".join(problems) + "\n" + agg.logs()
        assert reader.version_went_down == 0
        dead = read_all(bootstrap, settings.dlq_topic, len(scenario.invalid), timeout_s=30)
    finally:
        code = agg.stop()
        reader.close()
    assert code == 0, agg.logs()
    assert set(scenario.invalid) <= {(m.key, m.value) for m in dead}
