"""Crashes come in bursts: kills seconds apart, during publishing, during a rebalance.

Each test ends the same way: every window read back equals the brute-force oracle, no version
ever went down, and the worker(s) still alive made progress or exited saying why (a worker that
exits is restarted here, as `queuewatch up` would). A single round proves little: `make chaos`
loops these patterns in the soak; here each runs once per CI run.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuewatch.settings import CommonSettings
from tests.integration.test_aggregator_harness import (
    AggregatorProcess,
    WindowReader,
    compare,
    make_scenario,
    make_topics,
    publish,
    reference_windows,
)

pytestmark = pytest.mark.chaos

#: Short enough that a stuck worker exits (and is restarted) within a test's patience.
STALL_S = "20"
FAST = {
    "QUEUEWATCH_AGGREGATOR_BATCH_SIZE": "60",
    "QUEUEWATCH_AGGREGATOR_FLUSH_INTERVAL_S": "0.3",
    "QUEUEWATCH_STALL_TIMEOUT_S": STALL_S,
}


class Trickle:
    """Publishes messages in small slices from a thread, so kills land mid-publishing."""

    def __init__(self, bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
        self.thread = threading.Thread(target=self._run, args=(bootstrap, topic, messages))

    def _run(self, bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
        step = max(1, len(messages) // 30)
        for i in range(0, len(messages), step):
            publish(bootstrap, topic, messages[i : i + step])
            time.sleep(0.2)

    def __enter__(self) -> Trickle:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(timeout=300)


def settle(
    workers: list[AggregatorProcess], reader: WindowReader, expected: dict, timeout_s: float
) -> list[str]:
    """Wait for the exact windows, restarting any worker that exits (as a supervisor does)."""
    deadline = time.monotonic() + timeout_s
    problems = ["nothing read yet"]
    while time.monotonic() < deadline:
        for worker in workers:
            if not worker.alive():
                worker.start()
        reader.poll(500)
        problems = compare(expected, reader.newest)
        if not problems:
            return []
    return problems


def logs(workers: list[AggregatorProcess]) -> str:
    return "\n".join(w.logs() for w in workers)


@pytest.fixture
def topics(bootstrap: str, unique: str) -> CommonSettings:
    return make_topics(bootstrap, unique, partitions=6)


@pytest.fixture
def reader(bootstrap: str, topics: CommonSettings) -> Iterator[WindowReader]:
    r = WindowReader(bootstrap, topics.windows_topic)
    yield r
    r.close()


def test_three_kills_seconds_apart_while_publishing_give_the_exact_windows(
    bootstrap: str, unique: str, topics: CommonSettings, reader: WindowReader, tmp_path: Path
) -> None:
    scenario = make_scenario(seed=21)
    expected = reference_windows(scenario.valid_in_order)
    third = len(scenario.messages) // 3
    rng = random.Random(21)
    agg = AggregatorProcess(topics, tmp_path, group=f"agg-{unique}", **FAST)
    try:
        publish(bootstrap, topics.reports_topic, scenario.messages[:third])
        agg.start()
        while reader.count == 0:
            assert agg.alive(), agg.logs()
            reader.poll(200)
        with Trickle(bootstrap, topics.reports_topic, scenario.messages[third:]):
            for _ in range(3):  # an OOM killer, a host in trouble: kills seconds apart
                agg.kill()
                time.sleep(rng.uniform(0, 1.5))
                agg.start()
                time.sleep(rng.uniform(1, 4))
        problems = settle([agg], reader, expected, timeout_s=180)
        assert problems == [], "\n".join(problems) + "\n" + agg.logs()
        assert reader.version_went_down == 0
    finally:
        agg.stop()


def test_a_worker_killed_while_a_second_one_joins_gives_the_exact_windows(
    bootstrap: str, unique: str, topics: CommonSettings, reader: WindowReader, tmp_path: Path
) -> None:
    scenario = make_scenario(seed=22)
    expected = reference_windows(scenario.valid_in_order)
    half = len(scenario.messages) // 2
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = AggregatorProcess(topics, tmp_path / "a", group=f"agg-{unique}", **FAST)
    second = AggregatorProcess(topics, tmp_path / "b", group=f"agg-{unique}", **FAST)
    workers = [first, second]
    try:
        publish(bootstrap, topics.reports_topic, scenario.messages[:half])
        first.start()
        while reader.count == 0:
            assert first.alive(), first.logs()
            reader.poll(200)
        with Trickle(bootstrap, topics.reports_topic, scenario.messages[half:]):
            second.start()  # a rebalance starts: the group now has two members
            time.sleep(2.0)
            first.kill()  # ... and the first dies in the middle of it
            time.sleep(1.0)
            first.start()
            time.sleep(3.0)
            second.kill()  # the newcomer dies too, before the group settled
            time.sleep(0.5)
            second.start()
        problems = settle(workers, reader, expected, timeout_s=180)
        assert problems == [], "\n".join(problems) + "\n" + logs(workers)
        assert reader.version_went_down == 0
    finally:
        for worker in workers:
            worker.stop()
