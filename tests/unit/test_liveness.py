"""Progress or an honest failure: the pure judgement of platform.liveness."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from queuewatch.platform.liveness import (
    Heartbeat,
    HeartbeatRecord,
    LoopGuard,
    ProgressWatch,
    Steps,
    judge,
    read_heartbeats,
    watch_interval,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sampled(watch: ProgressWatch, clock: Clock, seconds: float, position: int, lag: int):
    """Sample every interval for ``seconds``; the first stall, if any."""
    end = clock.now + seconds
    while clock.now < end:
        clock.now += watch.interval_s
        watch.begin()
        stall = watch.observe(position, lag)
        if stall is not None:
            return stall
    return None


def test_lag_that_does_not_move_for_the_stall_period_is_a_stall_with_its_lag() -> None:
    clock = Clock()
    watch = ProgressWatch(stall_after_s=60, interval_s=5, clock=clock)
    assert sampled(watch, clock, 55, position=100, lag=7) is None
    stall = sampled(watch, clock, 10, position=100, lag=7)
    assert stall is not None
    assert stall.lag == 7
    assert stall.since_progress_s >= 60
    assert watch.state() == "stalled"


def test_a_moving_position_is_progress_however_large_the_lag() -> None:
    clock = Clock()
    watch = ProgressWatch(stall_after_s=60, interval_s=5, clock=clock)
    for step in range(100):
        clock.now += 5
        watch.begin()
        assert watch.observe(position=step, lag=1_000_000) is None
    assert watch.state() == "catching_up"


def test_no_lag_is_never_a_stall_however_long_nothing_moves() -> None:
    clock = Clock()
    watch = ProgressWatch(stall_after_s=60, interval_s=5, clock=clock)
    assert sampled(watch, clock, 600, position=42, lag=0) is None
    assert watch.state() == "ok"


def test_lag_after_a_quiet_period_counts_from_when_the_lag_appeared() -> None:
    clock = Clock()
    watch = ProgressWatch(stall_after_s=60, interval_s=5, clock=clock)
    assert sampled(watch, clock, 600, position=42, lag=0) is None
    # reports arrive; the processor is given the whole stall period from now
    assert sampled(watch, clock, 55, position=42, lag=3) is None
    assert sampled(watch, clock, 10, position=42, lag=3) is not None


def test_a_frozen_process_is_not_judged_on_the_time_it_was_frozen() -> None:
    clock = Clock()
    watch = ProgressWatch(stall_after_s=60, interval_s=5, clock=clock)
    watch.observe(position=1, lag=5)
    clock.now += 3600  # SIGSTOP, a suspended VM: no sample for an hour
    watch.begin()
    assert watch.observe(position=1, lag=5) is None
    assert sampled(watch, clock, 55, position=1, lag=5) is None
    assert sampled(watch, clock, 10, position=1, lag=5) is not None


def test_slow_samples_are_not_mistaken_for_a_frozen_process() -> None:
    clock = Clock()
    watch = ProgressWatch(stall_after_s=20, interval_s=1, clock=clock)
    stall = None
    for _ in range(10):
        clock.now += 1
        watch.begin()
        clock.now += 5  # the broker does not answer: every sample times out after 5 s
        stall = watch.observe(position=3, lag=1, blocked="end offsets cannot be read")
        if stall is not None:
            break
    assert stall is not None and stall.reason == "end offsets cannot be read"


def test_the_stall_names_what_blocks_the_work() -> None:
    clock = Clock()
    watch = ProgressWatch(stall_after_s=10, interval_s=1, clock=clock)
    stall = None
    while stall is None:
        clock.now += 1
        watch.begin()
        stall = watch.observe(5, 5, blocked="waiting for the broker (for 9 s)")
    assert stall.reason == "waiting for the broker (for 9 s)"


def test_steps_report_the_oldest_open_step_once_it_outlives_the_limit() -> None:
    clock = Clock()
    steps = Steps(clock)
    assert steps.blocked(1) is None and not steps.busy()
    with steps.doing("emitting windows"):
        clock.now += 2
        with steps.doing("seeking back"):
            clock.now += 0.5
            assert steps.busy()
            assert steps.blocked(1) == "emitting windows (for 2 s)"
            assert steps.blocked(5) is None
    assert not steps.busy()
    assert steps.last_done_at == clock.now


def test_watch_interval_gives_several_samples_per_stall_period() -> None:
    assert watch_interval(60) == 5
    assert watch_interval(6) == 1
    assert watch_interval(0.3) == 0.2


def record(**over: object) -> HeartbeatRecord:
    now = time.time()
    fields: dict[str, object] = dict(
        kind="aggregator",
        group="g",
        pid=1,
        started_at=now - 100,
        updated_at=now,
        last_progress_at=now,
        lag=5,
        state="catching_up",
    )
    fields.update(over)
    return HeartbeatRecord(**fields)  # type: ignore[arg-type]


def test_a_fresh_heartbeat_that_is_not_stalled_is_not_judged() -> None:
    assert judge(record(), stall_after_s=60) is None


def test_a_heartbeat_not_rewritten_for_the_stall_period_means_a_frozen_process() -> None:
    now = time.time()
    why = judge(record(updated_at=now - 90, last_progress_at=now - 120), 60, now)
    assert why is not None
    assert "has not reported for 90 s" in why and "last progress 120 s ago" in why


def test_a_heartbeat_that_says_stalled_gives_its_reason_and_lag() -> None:
    now = time.time()
    why = judge(record(state="stalled", last_progress_at=now - 70, reason="seeking"), 60, now)
    assert why is not None
    assert "no progress for 70 s with lag 5: seeking" in why


def test_heartbeat_files_round_trip_and_those_of_dead_processes_are_removed(
    tmp_path: Path,
) -> None:
    clock = Clock()
    watch = ProgressWatch(60, 5, clock)
    watch.observe(10, 3)
    beat = Heartbeat(tmp_path, "raw-sink", "raw-group")
    beat.write(watch, reason=None, details={"partitions": [0, 1]})
    data = json.loads(beat.path.read_text())
    assert data["kind"] == "raw-sink" and data["lag"] == 3 and data["state"] == "catching_up"
    dead = tmp_path / "health" / "window-sink-999999.json"
    dead.write_text(json.dumps({**data, "pid": 999_999, "kind": "window-sink"}))
    (tmp_path / "health" / "garbage.json").write_text("{not json")

    alive = {os.getpid()}
    got = read_heartbeats(tmp_path, lambda pid: pid in alive)
    assert [(r.kind, r.pid, r.details) for r in got] == [
        ("raw-sink", os.getpid(), {"partitions": [0, 1]})
    ]
    assert not dead.exists()
    beat.remove()
    assert read_heartbeats(tmp_path, lambda pid: True) == []


def test_the_loop_guard_calls_out_a_loop_that_stopped_beating() -> None:
    reasons: list[str] = []
    fired = threading.Event()

    def on_stall(reason: str) -> None:
        reasons.append(reason)
        fired.set()

    guard = LoopGuard("test", stall_after_s=0.5, on_stall=on_stall, tick_s=0.05)
    guard.start()
    assert fired.wait(10), "the guard never fired"
    assert reasons and reasons[0].startswith("the test loop has not run for")


def test_the_loop_guard_stays_quiet_while_the_loop_beats() -> None:
    fired = threading.Event()
    guard = LoopGuard("test", stall_after_s=3, on_stall=lambda _: fired.set(), tick_s=0.05)
    guard.start()
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        guard.beat()
        time.sleep(0.05)
    guard.stop()
    assert not fired.is_set()
