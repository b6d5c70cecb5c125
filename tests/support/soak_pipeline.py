"""The chaos soak's pipeline: a broker it owns, ``queuewatch up`` on it, and the faults.

The soak starts the Kafka broker itself (``LocalBroker``, not ``up``'s), so it can SIGKILL it
and start it again on the same log whenever its plan says; ``up --no-simulate`` then finds a
broker answering and only supervises the processors (aggregator and ``sink all`` on an
embedded chdb folder), restarting each one the soak kills. A second aggregator worker is a
plain ``queuewatch aggregator`` process with the children's environment, so it joins the same
consumer group.

The ClickHouse outage is a SIGSTOP of ``sink all`` (SIGCONT ends it). On the embedded layout
the engine lives inside that process, so there is no server to stop; a frozen process is what
a hung ClickHouse looks like from the pipeline: no insert returns, no offset is committed,
its consumers miss their heartbeats and are dropped from their groups, and when it resumes
it must find out it lost its partitions. (The sink's own retry path for failing inserts is
covered by ``tests/chaos/test_sink_outage.py``.)

Everything started here dies with this process (the kernel's parent-death signal), so an
interrupted soak leaves nothing running; each soak has a fresh work folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from queuewatch.platform.broker import LocalBroker, free_port
from queuewatch.platform.processes import SUPERVISOR_PID_ENV, die_with_parent_hook, pid_alive
from queuewatch.platform.status import compute_lag
from queuewatch.platform.up import READY_LINE, STATE_NAME
from queuewatch.settings import CommonSettings

#: `up` on a loaded machine: broker already there, but migrations and two Python children.
UP_READY_TIMEOUT_S = 300.0
#: How long a processor's pid may be missing from `up`'s state (it is between restarts).
CHILD_TIMEOUT_S = 120.0
BROKER_START_TIMEOUT_S = 180.0


class SoakError(Exception):
    """The soak's own machinery failed (not the pipeline under test)."""


@dataclass(frozen=True)
class GroupLag:
    """One consumer group's lag on its topic, per partition."""

    group: str
    topic: str
    lag: int
    committed: dict[int, int]


@dataclass
class SoakPipeline:
    """The processes of one soak, all under ``workdir``."""

    workdir: Path
    kafka_libs: Path
    broker_heap: str = "512m"
    extra_env: dict[str, str] = field(default_factory=dict)
    broker: LocalBroker | None = None
    up: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    frozen: int | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        """``QUEUEWATCH_HOME`` of the run."""
        return self.workdir / "home"

    @property
    def bootstrap(self) -> str:
        """The broker's address."""
        assert self.broker is not None
        return self.broker.bootstrap

    @property
    def settings(self) -> CommonSettings:
        """The settings every process of the run sees (same env as `up`'s children)."""
        return CommonSettings(
            home=self.home,
            kafka_bootstrap=self.bootstrap,
            query_address=self.env["QUEUEWATCH_QUERY_ADDRESS"],
        )

    # -- start and stop ------------------------------------------------------------------

    def start(self) -> None:
        """Start the broker, then `up --no-simulate` on it; return once `up` is ready."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.broker = LocalBroker(
            data_root=self.workdir / "broker",
            libs_dir=self.kafka_libs,
            port=free_port(),
            controller_port=free_port(),
            heap=self.broker_heap,
        )
        self.broker.start(timeout_s=BROKER_START_TIMEOUT_S)
        self.env = dict(os.environ)
        self.env.update(
            {
                "QUEUEWATCH_HOME": str(self.home),
                "QUEUEWATCH_KAFKA_BOOTSTRAP": self.broker.bootstrap,
                "QUEUEWATCH_QUERY_ADDRESS": f"127.0.0.1:{free_port()}",
                "QUEUEWATCH_KAFKA_LIBS": str(self.kafka_libs),
                "QUEUEWATCH_LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.env.update(self.extra_env)
        out = (self.workdir / "up.out").open("wb")
        err = (self.workdir / "up.err").open("wb")
        with out, err:
            self.up = subprocess.Popen(
                [sys.executable, "-m", "queuewatch", "up", "--no-simulate"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                preexec_fn=die_with_parent_hook(),
            )
        deadline = time.monotonic() + UP_READY_TIMEOUT_S
        while READY_LINE not in (self.workdir / "up.out").read_text(errors="replace"):
            if self.up.poll() is not None:
                raise SoakError(f"`queuewatch up` exited with {self.up.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise SoakError(f"`queuewatch up` not ready in {UP_READY_TIMEOUT_S} s")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop everything (a frozen sink is thawed first so it can stop cleanly)."""
        self.thaw_sink()
        for worker in self.workers:
            _terminate(worker, 60.0)
        self.workers.clear()
        if self.up is not None:
            _terminate(self.up, 120.0)
            self.up = None
        if self.broker is not None:
            self.broker.stop()

    # -- the processors --------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """`up`'s state file (pids and restarts of its children)."""
        data: dict[str, Any] = json.loads((self.home / STATE_NAME).read_text())
        return data

    def child(self, name: str) -> dict[str, Any]:
        """One child's entry in `up`'s state."""
        for child in self.state()["children"]:
            if child["name"] == name:
                return dict(child)
        raise SoakError(f"`up` runs no child named {name}")

    def child_pid(self, name: str, timeout_s: float = CHILD_TIMEOUT_S) -> int:
        """The pid of a running child, waiting while `up` restarts it."""
        deadline = time.monotonic() + timeout_s
        while True:
            pid = self.child(name).get("pid")
            if isinstance(pid, int) and pid_alive(pid):
                return pid
            if time.monotonic() > deadline:
                raise SoakError(f"{name} has not been running for {timeout_s} s:\n{self.tail()}")
            time.sleep(0.2)

    def signal_child(self, name: str, sig: int) -> int:
        """Send ``sig`` to one of `up`'s running children; its pid.

        A child that dies between the look-up and the signal (it crashed by itself) is looked
        up again: `up` restarts it, and the fault lands on the new process.
        """
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        while True:
            pid = self.child_pid(name)
            try:
                os.kill(pid, sig)
                return pid
            except ProcessLookupError:
                if time.monotonic() > deadline:
                    raise SoakError(f"{name} kept dying before it could be signalled") from None
                time.sleep(0.2)

    def kill_child(self, name: str) -> int:
        """SIGKILL one of `up`'s children; its pid."""
        return self.signal_child(name, signal.SIGKILL)

    def freeze_sink(self) -> int:
        """SIGSTOP ``sink all``: the ClickHouse outage starts."""
        self.frozen = self.signal_child("sink-all", signal.SIGSTOP)
        return self.frozen

    def thaw_sink(self) -> bool:
        """SIGCONT the frozen sink, unless it was killed meanwhile (then `up` restarted it)."""
        pid, self.frozen = self.frozen, None
        if pid is None:
            return False
        if self.child("sink-all").get("pid") != pid or not pid_alive(pid):
            return False
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            return False
        return True

    def kill_broker(self) -> int:
        """SIGKILL the broker (its log stays on disk)."""
        assert self.broker is not None and self.broker.process is not None
        proc = self.broker.process
        proc.kill()
        proc.wait(30)
        self.broker.process = None
        return proc.pid

    def start_broker(self) -> float:
        """Start the broker again on the same log; seconds until it answered."""
        assert self.broker is not None
        t0 = time.monotonic()
        self.broker.start(timeout_s=BROKER_START_TIMEOUT_S)
        return time.monotonic() - t0

    def broker_running(self) -> bool:
        """True while the broker process lives."""
        return (
            self.broker is not None
            and self.broker.process is not None
            and self.broker.process.poll() is None
        )

    def scale_up(self) -> int:
        """Start a second aggregator worker in the same group; its pid."""
        # Not `up`'s child, so no QUEUEWATCH_SUPERVISOR_PID: its orphan watchdog would see a
        # parent other than `up` and exit (status 75) by itself; it dies with this process.
        env = dict(self.env)
        env.pop(SUPERVISOR_PID_ENV, None)
        log = self.home / "logs" / f"aggregator-extra-{len(self.workers) + 1}.log"
        with log.open("ab") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "queuewatch", "aggregator"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent_hook(),
            )
        self.workers.append(worker)
        return worker.pid

    def scale_down(self, kill: bool) -> tuple[int, int | None]:
        """Stop the newest extra worker (SIGTERM, or SIGKILL); its pid and exit status."""
        worker = self.workers.pop()
        if kill:
            worker.kill()
            return worker.pid, worker.wait(30)
        return worker.pid, _terminate(worker, 60.0)

    # -- looking at it ---------------------------------------------------------------------

    def lags(self) -> list[GroupLag]:
        """Each processor group's lag on its input topic."""
        from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

        s = self.settings
        wanted = [
            (s.aggregator_group, s.reports_topic),
            (s.raw_sink_group, s.reports_topic),
            (s.window_sink_group, s.windows_topic),
        ]
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="queuewatch-soak")
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, client_id="queuewatch-soak")
        try:
            out = []
            offsets = admin.list_group_offsets([group for group, _ in wanted])
            for group, topic in wanted:
                tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
                ends = {tp.partition: o for tp, o in consumer.end_offsets(tps).items()}
                starts = {tp.partition: o for tp, o in consumer.beginning_offsets(tps).items()}
                committed = {
                    tp.partition: meta.offset
                    for tp, meta in (offsets.get(group) or {}).items()
                    if tp.topic == topic
                }
                out.append(GroupLag(group, topic, compute_lag(ends, committed, starts), committed))
            return out
        finally:
            consumer.close()
            admin.close()

    def query(self, sql: str, timeout_s: float = 300.0) -> list[dict[str, Any]]:
        """Rows of a read-only query, through `queuewatch query` (routed to ``sink all``)."""
        result = subprocess.run(
            [sys.executable, "-m", "queuewatch", "query", sql, "--format", "jsonl"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if result.returncode != 0:
            raise SoakError(f"`queuewatch query` failed: {result.stderr.strip()[-2000:]}")
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def tail(self, lines: int = 30) -> str:
        """The end of `up`'s log, for a failure message."""
        path = self.workdir / "up.err"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def logs(self) -> list[Path]:
        """Every log file of the run."""
        found = sorted((self.home / "logs").glob("*.log")) if (self.home / "logs").exists() else []
        return [self.workdir / "up.err", *found]


def _terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """SIGTERM, wait, SIGKILL; the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
    return proc.returncode
