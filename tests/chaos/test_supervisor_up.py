"""`queuewatch up` end to end with the real broker: restarts, clean stops, a log that survives.

Each test runs `queuewatch up --no-simulate` as a subprocess on its own QUEUEWATCH_HOME and
free ports, exactly as a person would, and judges it from outside: its output, its state
file, the processes carrying its home in their environment, and what Kafka holds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from queuewatch.platform.broker import kafka_answers
from queuewatch.platform.processes import pid_alive, processes_with_env
from queuewatch.platform.up import READY_LINE, STATE_NAME
from tests.integration.test_platform_failures import up_env as make_up_env

pytestmark = pytest.mark.chaos

READY_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 120.0


class UpProcess:
    """A running `queuewatch up` with its output in files."""

    def __init__(self, home: Path, env: dict[str, str], tag: str) -> None:
        self.home = home
        self.out = home.parent / f"up-{tag}.out"
        self.err = home.parent / f"up-{tag}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "queuewatch", "up", "--no-simulate"],
                env=env,
                stdout=out,
                stderr=err,
            )

    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if READY_LINE in self.out.read_text():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"up exited with {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.3)
        raise AssertionError(f"up was not ready in {READY_TIMEOUT_S} s:\n{self.output()}")

    def state(self) -> dict[str, object]:
        data: dict[str, object] = json.loads((self.home / STATE_NAME).read_text())
        return data

    def child(self, name: str) -> dict[str, object]:
        children = self.state()["children"]
        assert isinstance(children, list)
        (found,) = [c for c in children if c["name"] == name]
        return dict(found)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(STOP_TIMEOUT_S)

    def kill_if_running(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def up_env(tmp_path: Path, kafka_libs: Path) -> dict[str, str]:
    return make_up_env(
        (tmp_path / "home").resolve(),
        kafka_libs,
        QUEUEWATCH_KAFKA_HEAP="384m",
        QUEUEWATCH_RESTART_BACKOFF_INITIAL_S="0.5",
    )


def left_behind(home: Path, timeout_s: float = 0.0) -> list[int]:
    """Processes of a run on ``home`` still alive (waiting up to ``timeout_s`` for them)."""
    deadline = time.monotonic() + timeout_s
    while True:
        pids = processes_with_env("QUEUEWATCH_HOME", str(home))
        if not pids or time.monotonic() >= deadline:
            return pids
        time.sleep(0.2)


def wait_for(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def read_partition(bootstrap: str, topic: str, partition: int) -> list[bytes]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=10_000)
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        return [m.value for m in consumer]
    finally:
        consumer.close()


def test_sigterm_stops_everything_and_a_second_up_finds_the_first_runs_events(
    up_env: dict[str, str],
) -> None:
    home = Path(up_env["QUEUEWATCH_HOME"])
    bootstrap = up_env["QUEUEWATCH_KAFKA_BOOTSTRAP"]
    sent = [f"chaos-event-{i}".encode() for i in range(5)]

    first = UpProcess(home, up_env, "first")
    try:
        first.wait_ready()
        state = first.state()
        broker_pid = state["broker_pid"]
        assert isinstance(broker_pid, int) and pid_alive(broker_pid)

        # The DLQ is a topic no processor reads, so the events stay exactly as sent.
        producer = KafkaProducer(bootstrap_servers=bootstrap)
        for value in sent:
            producer.send("queue-reports-dlq", key=b"chaos", value=value, partition=0)
        producer.flush(30)
        producer.close()

        # A second `up` on the same home is refused while the first runs.
        second = subprocess.run(
            [sys.executable, "-m", "queuewatch", "up", "--no-simulate"],
            env=up_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert second.returncode == 1
        assert f"another `queuewatch up` (pid {first.proc.pid}) already runs" in second.stderr

        # A processor killed outright is restarted by the supervisor.
        victim = first.child("sink-all")
        old_pid = victim["pid"]
        assert isinstance(old_pid, int)
        os.kill(old_pid, signal.SIGKILL)
        wait_for(
            lambda: first.child("sink-all")["pid"] not in (None, old_pid),
            60,
            "sink-all to be restarted",
        )
        assert first.child("sink-all")["restarts"] == 1
        assert "sink-all (pid" in first.err.read_text()
        assert "was killed by SIGKILL" in first.err.read_text()

        # The broker this run started, killed outright, is started again on the same log.
        os.kill(broker_pid, signal.SIGKILL)
        wait_for(
            lambda: first.state()["broker_pid"] not in (None, broker_pid),
            120,
            "the broker to be started again",
        )
        assert "the Kafka broker was killed by SIGKILL; starting it again" in first.err.read_text()
        assert kafka_answers(bootstrap, 10.0)
        new_broker_pid = first.state()["broker_pid"]
        assert isinstance(new_broker_pid, int)

        assert first.stop(signal.SIGTERM) == 0
    finally:
        first.kill_if_running()
    assert left_behind(home) == []
    assert not pid_alive(new_broker_pid)
    assert not (home / STATE_NAME).exists()

    again = UpProcess(home, up_env, "again")
    try:
        again.wait_ready()
        assert "started here" in again.out.read_text()  # a new broker, on the same log
        assert read_partition(bootstrap, "queue-reports-dlq", 0) == sent
        assert again.stop(signal.SIGINT) == 0
    finally:
        again.kill_if_running()
    assert left_behind(home) == []


def test_a_supervisor_killed_outright_takes_its_children_and_broker_with_it(
    up_env: dict[str, str],
) -> None:
    home = Path(up_env["QUEUEWATCH_HOME"])
    run = UpProcess(home, up_env, "killed")
    try:
        run.wait_ready()
        running = left_behind(home)
        assert len(running) >= 2  # at least the broker and one processor
        assert run.stop(signal.SIGKILL) == -signal.SIGKILL
    finally:
        run.kill_if_running()
    # No handler ran: the kernel's parent-death signal is what stops them.
    assert left_behind(home, timeout_s=60) == []
