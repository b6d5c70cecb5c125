"""One measured replay: a processor started on an empty topic, then N reports at once.

The protocol, the same for every processor (ours, the Quix and Bytewax peers, the sinks):

1. create fresh topics; start following the processor's output topic (if it has one);
2. start the processor; publish one probe report and wait until its consumer group has
   committed past it: the process is up, joined, assigned and has restored its state, so
   start-up (seconds for faust and Quix, which check every changelog partition) is not
   counted as processing time;
3. note the wall clock ``t0`` and the resident memory, then publish the N reports as fast as
   the harness can (confluent-kafka: a few hundred thousand per second, faster than any
   processor here consumes, so the processor is never starved);
4. done when the group has committed everything and, for a processor with output, no output
   arrived for ``quiet_s``; the end time is when the last output message reached the
   harness's reader (it polls every 0.2 s; Kafka timestamps cannot serve, since Quix stamps a
   window with its event-time start) or, without output, the moment the lag was seen to reach
   zero (polled every 0.25 s);
5. throughput = N / (end - t0); memory = the peak sampled during the run.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import processes
from benchmarks.dataset import Crossing, make_report
from benchmarks.kafka_setup import GroupWatcher, create_topics, produce
from benchmarks.peer_env import Peer
from benchmarks.window_output import WindowCollector, WindowKey
from queuewatch.contract.codec import encode
from queuewatch.contract.schemas import QUEUE_REPORT, default_registry

PROBE_CROSSING = Crossing("zz-bench-probe", [("RU", "GE")], ["car"], [("sensor", "probe")], 10)


@dataclass
class Topics:
    """The fresh topic names of one replay."""

    reports: str
    dlq: str
    windows: str

    def as_roles(self) -> dict[str, str]:
        """Role -> name, as kafka_setup.create_topics wants it."""
        return {"reports": self.reports, "dlq": self.dlq, "windows": self.windows}


@dataclass
class Replay:
    """What a processor did with N reports."""

    reports: int
    startup_s: float
    seconds: float
    events_per_s: float
    rss_ready_mib: float
    peak_rss_mib: float
    output_messages: int
    windows: dict[WindowKey, dict[str, Any]] = field(default_factory=dict, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)

    def figures(self) -> dict[str, Any]:
        """The numbers for the result file."""
        return {
            "reports": self.reports,
            "startup_s": round(self.startup_s, 2),
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.events_per_s, 1),
            "rss_ready_mib": round(self.rss_ready_mib, 1),
            "peak_rss_mib": round(self.peak_rss_mib, 1),
            "output_messages": self.output_messages,
            "windows": len(self.windows),
            **self.extra,
        }


def probe_message(observed_at: int) -> tuple[bytes, bytes]:
    """One valid report of a crossing no dataset uses."""
    rec = make_report(PROBE_CROSSING, observed_at, random.Random(observed_at))
    rec["wait_minutes"] = 10
    schema = default_registry().latest(QUEUE_REPORT)
    return PROBE_CROSSING.crossing_id.encode(), encode(rec, schema)


def replay(
    *,
    name: str,
    bootstrap: str,
    topics: Topics,
    group: str,
    start: Callable[[], processes.Child],
    messages: Sequence[tuple[bytes, bytes]],
    probe: tuple[bytes, bytes],
    output_topic: str | None,
    input_topic: str | None = None,
    keep_windows: bool = False,
    quiet_s: float = 3.0,
    timeout_s: float = 1800.0,
    ready_timeout_s: float = 240.0,
    hold_while_publishing: bool = False,
    workers: int = 1,
) -> Replay:
    """Run the protocol of this module's docstring; stop the processor before returning.

    ``hold_while_publishing`` freezes the processor (SIGSTOP) while the N messages are
    published and starts the clock when it thaws (SIGCONT): it then drains a topic that
    holds them all, so its own rate is measured, not the harness's publishing rate (about
    36k messages/s here, on the same two cores). Its session outlives the pause.

    ``workers`` starts that many processes in the one consumer group; the clock starts once
    all are members of a stable group, so the rebalance is start-up, not processing.
    """
    create_topics(bootstrap, topics.as_roles())
    collector = (
        WindowCollector(bootstrap, output_topic, keep_records=keep_windows).start()
        if output_topic
        else None
    )
    source = input_topic or topics.reports
    children = [start() for _ in range(workers)]
    child = children[0]
    watcher = GroupWatcher(bootstrap, group, source)
    try:
        produce(bootstrap, source, [probe])
        deadline = time.monotonic() + ready_timeout_s
        while watcher.lag() != 0 or (
            workers > 1 and (watcher.members() < workers or watcher.state() != "Stable")
        ):
            for one in children:
                one.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{name} did not commit the probe report within {ready_timeout_s:.0f} s; "
                    f"read {child.log_path}"
                )
            time.sleep(0.25)
        startup_s = time.monotonic() - child.started
        time.sleep(0.3)  # one more memory sample, taken with the process idle
        rss_ready = child.samples[-1][1] if child.samples else 0
        if hold_while_publishing:
            child.process.send_signal(signal.SIGSTOP)
            try:
                produce(bootstrap, source, messages)
            finally:
                child.process.send_signal(signal.SIGCONT)
            t0 = time.time()
        else:
            t0 = time.time()
            produce(bootstrap, source, messages)
        cpu_at_t0 = sum(one.cpu_seconds() for one in children)
        deadline = time.monotonic() + timeout_s
        while True:
            for one in children:
                one.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not finish within {timeout_s:.0f} s")
            lag = watcher.lag()
            if lag == 0:
                if collector is None:
                    end = time.time()
                    break
                last = collector.last_arrival_wall
                if collector.quiet_for() >= quiet_s and last is not None and last > t0:
                    end = last
                    break
            time.sleep(0.25)
        cpu_s = sum(one.cpu_seconds() for one in children) - cpu_at_t0
    finally:
        watcher.close()
        for one in children:
            one.stop()
        if collector is not None:
            collector.stop()
    seconds = max(end - t0, 1e-6)
    return Replay(
        reports=len(messages),
        startup_s=startup_s,
        seconds=seconds,
        events_per_s=len(messages) / seconds,
        rss_ready_mib=rss_ready / 2**20,
        peak_rss_mib=sum(one.peak_rss for one in children) / 2**20,
        output_messages=collector.messages if collector else 0,
        windows=dict(collector.windows) if collector else {},
        extra={"workers": workers, "cpu_us_per_report": round(cpu_s / len(messages) * 1e6, 1)},
    )


def aggregator_starter(
    bootstrap: str,
    topics: Topics,
    group: str,
    home: Path,
    log_dir: Path,
    python: str,
    extra_env: dict[str, str] | None = None,
) -> Callable[[], processes.Child]:
    """Starts `queuewatch aggregator` configured for this replay's topics, one per call.

    Each call is one more worker of the same group, with a home (heartbeats, faust's data
    folder) of its own, as separate machines would have.
    """
    started = [0]

    def start() -> processes.Child:
        started[0] += 1
        worker_home = home if started[0] == 1 else home.with_name(f"{home.name}-{started[0]}")
        env = {
            "QUEUEWATCH_HOME": str(worker_home),
            "QUEUEWATCH_KAFKA_BOOTSTRAP": bootstrap,
            "QUEUEWATCH_REPORTS_TOPIC": topics.reports,
            "QUEUEWATCH_DLQ_TOPIC": topics.dlq,
            "QUEUEWATCH_WINDOWS_TOPIC": topics.windows,
            "QUEUEWATCH_AGGREGATOR_GROUP": group,
            "QUEUEWATCH_LOG_LEVEL": "WARNING",
            **(extra_env or {}),
        }
        argv = [python, "-m", "queuewatch", "aggregator"]
        return processes.start(f"aggregator-{group}-{started[0]}", argv, env, log_dir)

    return start


def peer_starter(
    peer: Peer,
    bootstrap: str,
    topics: Topics,
    group: str,
    state_dir: Path,
    log_dir: Path,
    python: str,
) -> Callable[[], processes.Child]:
    """Starts a peer (benchmarks/peers) in its own venv, writing to ``topics.windows``.

    It runs as a module from the repository root, so both peers import the window values
    they share (benchmarks/peers/window_values.py) and nothing else of this repository.
    """
    from queuewatch.resources import REPO_ROOT

    argv = [
        python, "-m", peer.module,
        "--bootstrap", bootstrap,
        "--input", topics.reports,
        "--output", topics.windows,
        "--group", group,
        "--schemas", str(REPO_ROOT / "schemas"),
    ]  # fmt: skip
    if peer.name == "quix":
        argv += ["--state-dir", str(state_dir)]
    return lambda: processes.start(f"{peer.name}-{group}", argv, {}, log_dir, cwd=REPO_ROOT)


def run_ids(prefix: str) -> tuple[Topics, str]:
    """Fresh topic names and a consumer group for one replay."""
    tag = f"{prefix}-{random.getrandbits(32):08x}"
    return Topics(f"{tag}-reports", f"{tag}-dlq", f"{tag}-windows"), f"{tag}-group"
