"""Scenarios that replay a pre-built log through a processor.

* ``aggregator``: `queuewatch aggregator`, 1 worker, N reports over many crossings: events/s
  until the last window is emitted, peak memory, memory per active crossing; ratio to the
  limit.
* ``peer``: the same (smaller) log through ours, the Quix Streams peer and the Bytewax peer;
  the ratios of their throughputs, and each peer's closed windows compared with ours field by
  field.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

from benchmarks import peer_env
from benchmarks.compare import beyond_grace, compare
from benchmarks.context import Context
from benchmarks.dataset import DatasetSpec, dataset
from benchmarks.replay import (
    Replay,
    aggregator_starter,
    peer_starter,
    probe_message,
    replay,
    run_ids,
)
from benchmarks.stats import median_of_runs
from queuewatch.contract.codec import decode
from queuewatch.contract.schemas import QUEUE_REPORT, default_registry


def topic_bytes(ctx: Context, topic: str) -> int:
    """Bytes the broker holds for ``topic`` (its segment files; no compression is used)."""
    data = ctx.work / "kafka" / "data"
    total = 0
    for folder in data.glob(f"{topic}-*"):
        if folder.name.rsplit("-", 1)[-1].isdigit():
            total += sum(f.stat().st_size for f in folder.glob("*.log"))
    return total


def _aggregator_replay(
    ctx: Context,
    messages: list[tuple[bytes, bytes]],
    probe_at: int,
    keep: bool,
    extra_env: dict[str, str] | None = None,
    workers: int = 1,
    output: str = "windows",
) -> Replay:
    """One replay; ``output`` is QUEUEWATCH_AGGREGATOR_OUTPUT. With ``contributions`` the
    aggregator writes its contributions to the replay's output topic (``topics.windows``),
    so "the last output message" is its last contribution."""
    topics, group = run_ids("agg")
    home = ctx.work / f"home-{group}"
    env = dict(extra_env or {})
    if output == "contributions":
        env["QUEUEWATCH_AGGREGATOR_OUTPUT"] = "contributions"
        env["QUEUEWATCH_CONTRIBUTIONS_TOPIC"] = topics.windows
    start = aggregator_starter(ctx.bootstrap, topics, group, home, ctx.log_dir, ctx.python, env)
    result = replay(
        name="queuewatch aggregator",
        bootstrap=ctx.bootstrap,
        topics=topics,
        group=group,
        start=start,
        messages=messages,
        probe=probe_message(probe_at),
        output_topic=topics.windows,
        keep_windows=keep,
        workers=workers,
    )
    # Where the bytes go: faust's changelog of the per-crossing state, and the windows out.
    result.extra["changelog_bytes_per_report"] = round(
        topic_bytes(ctx, f"{group}-crossing-state-changelog") / len(messages)
    )
    result.extra["output_bytes_per_report"] = round(
        topic_bytes(ctx, topics.windows) / len(messages)
    )
    result.extra["output_messages_per_report"] = round(result.output_messages / len(messages), 2)
    result.extra["output"] = output
    return result


def aggregator(ctx: Context) -> dict[str, Any]:
    """Throughput and memory of one aggregator worker on the big, sparse log.

    Sparse: each report lands in windows no other report touches, so the window output (some
    30 messages per report) is the cost, not the reports.
    """
    plan = ctx.plan
    spec = DatasetSpec(
        plan.aggregator_reports, plan.aggregator_crossings, plan.aggregator_span_hours
    )
    return _aggregator_scenario(ctx, spec, "many crossings, few reports per window")


def aggregator_dense(ctx: Context) -> dict[str, Any]:
    """The same on a dense log: few busy crossings, many reports per window (a surge).

    This is where the reports, not the windows, are the cost: the per-report path
    (decode, validate, de-duplicate, aggregate, checkpoint) is what it measures.
    """
    plan = ctx.plan
    spec = DatasetSpec(plan.dense_reports, plan.dense_crossings, plan.dense_span_hours)
    return _aggregator_scenario(ctx, spec, "few busy crossings, many reports per window")


def _aggregator_scenario(ctx: Context, spec: DatasetSpec, shape: str) -> dict[str, Any]:
    ds = dataset(spec)
    messages = ds.load()
    runs: list[dict[str, Any]] = []
    window_runs: list[dict[str, Any]] = []
    # Both outputs, runs interleaved: contributions (aggregator v2: one record per report,
    # ClickHouse assembles the windows) and windows (every changed window emitted, version 1's
    # output and still the default).
    for _ in range(ctx.plan.runs):
        for output, into in (("contributions", runs), ("windows", window_runs)):
            result = _aggregator_replay(ctx, messages, ds.start_ms, keep=False, output=output)
            figures = result.figures()
            growth = max(result.peak_rss_mib - result.rss_ready_mib, 0.0)
            figures["kib_per_active_crossing"] = round(growth * 1024 / spec.crossings, 1)
            into.append(figures)
    out: dict[str, Any] = {
        "what": "queuewatch aggregator, 1 worker, replaying a pre-loaded log until its last "
        f"output message ({shape}); median: output contributions, windows_median: output "
        "windows",
        "windows_runs": window_runs,
        "windows_median": median_of_runs(window_runs),
        "dataset": {
            "reports": len(messages),
            "crossings": spec.crossings,
            "span_hours": ds.spec.span_hours,
            "duplicates": ds.duplicates,
        },
        "runs": runs,
        "median": median_of_runs(runs),
    }
    limit = ctx.results.get("limit", {}).get("limit_events_per_s")
    if limit:
        out["ratio_to_limit"] = round(out["median"]["events_per_s"] / limit, 5)
    return out


def metrics_cost(ctx: Context) -> dict[str, Any]:
    """The dense replay with the aggregator's Prometheus endpoint off and on, runs interleaved.

    On, a thread scrapes it every second for the whole replay, five times as often as a 5 s
    Prometheus interval, so the figure is an upper bound of what monitoring costs.
    """
    from queuewatch.platform.broker import free_port

    plan = ctx.plan
    spec = DatasetSpec(plan.dense_reports, plan.dense_crossings, plan.dense_span_hours)
    ds = dataset(spec)
    messages = ds.load()
    off: list[dict[str, Any]] = []
    on: list[dict[str, Any]] = []
    scrapes = 0
    for _ in range(plan.runs):
        off.append(_aggregator_replay(ctx, messages, ds.start_ms, keep=False).figures())
        port = free_port()
        scraper = _Scraper(port)
        scraper.start()
        env = {"QUEUEWATCH_AGGREGATOR_METRICS_PORT": str(port)}
        try:
            result = _aggregator_replay(ctx, messages, ds.start_ms, keep=False, extra_env=env)
        finally:
            scraper.stop()
        scrapes += scraper.done
        on.append(result.figures())
    median_off = median_of_runs(off)
    median_on = median_of_runs(on)
    return {
        "what": "queuewatch aggregator on the dense replay, metrics endpoint off and on "
        "(scraped every second), runs interleaved",
        "dataset": {"reports": len(messages), "crossings": spec.crossings},
        "off": {"runs": off, "median": median_off},
        "on": {"runs": on, "median": median_on, "scrapes": scrapes},
        "cost_share": round(1 - median_on["events_per_s"] / median_off["events_per_s"], 4),
    }


def scale_out(ctx: Context) -> dict[str, Any]:
    """The sparse and dense replays with 1 and with 2 workers in one group, runs interleaved,
    output contributions (aggregator v2).

    Two workers on two cores share them with the broker and the harness, so the speed-up
    here is a floor. What carries to a bigger machine is the CPU each report costs a worker
    (``cpu_us_per_report``, user + system time of the workers over the measured phase): the
    model in docs/performance.md divides cores by it.
    """
    plan = ctx.plan
    shapes = {
        "sparse": DatasetSpec(
            plan.aggregator_reports, plan.aggregator_crossings, plan.aggregator_span_hours
        ),
        "dense": DatasetSpec(plan.dense_reports, plan.dense_crossings, plan.dense_span_hours),
    }
    out: dict[str, Any] = {
        "what": "queuewatch aggregator, output contributions, 1 and 2 workers in one consumer "
        "group (12 partitions), on this 2-core machine"
    }
    for shape, spec in shapes.items():
        ds = dataset(spec)
        messages = ds.load()
        by_workers: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
        for _ in range(plan.runs):
            for workers in (1, 2):
                result = _aggregator_replay(
                    ctx, messages, ds.start_ms, keep=False, workers=workers, output="contributions"
                )
                by_workers[workers].append(result.figures())
        medians = {n: median_of_runs(runs) for n, runs in by_workers.items()}
        out[shape] = {
            "reports": len(messages),
            "crossings": spec.crossings,
            "workers_1": {"runs": by_workers[1], "median": medians[1]},
            "workers_2": {"runs": by_workers[2], "median": medians[2]},
            "speedup": round(medians[2]["events_per_s"] / medians[1]["events_per_s"], 2),
        }
    return out


class _Scraper(threading.Thread):
    """Scrapes a metrics endpoint every second, as a (too eager) Prometheus would."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.done = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        from queuewatch.platform.metrics import scrape

        while not self._stop_event.wait(1.0):
            try:
                scrape("127.0.0.1", self.port, timeout_s=2.0)
                self.done += 1
            except OSError:
                pass  # not listening yet, or already stopped

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def peer(ctx: Context) -> dict[str, Any]:
    """Ours against the Quix Streams and the Bytewax peers on the same log, runs interleaved:
    speed, and equality of each peer's closed windows with ours."""
    plan = ctx.plan
    pythons: dict[str, Path] = {}
    peers: dict[str, dict[str, Any]] = {}
    for p in peer_env.PEERS.values():
        python = peer_env.peer_python(p, install=plan.install_peer)
        if python is None:
            peers[p.name] = {
                "title": p.title,
                "status": "skipped",
                "reason": f"the {p.title} peer's venv is not built ({p.venv}); "
                "`python -m benchmarks.run` builds it unless --no-peer-install is given",
            }
        else:
            pythons[p.name] = python
    if not pythons:
        reasons = "; ".join(entry["reason"] for entry in peers.values())
        return {"status": "skipped", "reason": reasons, "peers": peers}
    ds = dataset(DatasetSpec(plan.peer_reports, plan.peer_crossings, plan.peer_span_hours))
    messages = ds.load()
    ours_runs: list[dict[str, Any]] = []
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in pythons}
    equality: dict[str, dict[str, Any]] = {}
    late_in_ours = beyond_grace(_decoded(messages))
    # The equality check reads our windows off the windows topic, so it uses output windows
    # (tests/integration/test_window_assembly.py proves ClickHouse assembles the same windows
    # from the contributions, to the bit); the speed is that of output contributions.
    reference = _aggregator_replay(ctx, messages, ds.start_ms, keep=True)
    windows_runs = [reference.figures()]
    for i in range(plan.runs):
        keep = i == 0
        ours = _aggregator_replay(ctx, messages, ds.start_ms, keep=False, output="contributions")
        ours_runs.append(ours.figures())
        for name, python in pythons.items():
            p = peer_env.PEERS[name]
            topics, group = run_ids(name)
            theirs = replay(
                name=f"{p.title} peer",
                bootstrap=ctx.bootstrap,
                topics=topics,
                group=group,
                start=peer_starter(
                    p,
                    ctx.bootstrap,
                    topics,
                    group,
                    ctx.work / f"{name}-{group}",
                    ctx.log_dir,
                    str(python),
                ),
                messages=messages,
                probe=probe_message(ds.start_ms),
                output_topic=topics.windows,
                keep_windows=keep,
            )
            runs[name].append(theirs.figures())
            if keep:
                # Quix's lateness rule is ours (per window); Bytewax's is per report.
                late = late_in_ours if name == "bytewax" else None
                equality[name] = compare(
                    reference.windows,
                    theirs.windows,
                    sample=5000,
                    seed=random.randrange(99),
                    late_in_ours=late,
                )
    ours_median = median_of_runs(ours_runs)
    for name in pythons:
        median = median_of_runs(runs[name])
        peers[name] = {
            "title": peer_env.PEERS[name].title,
            "status": "ok",
            "runs": runs[name],
            "median": median,
            "ratio_ours_to_peer": round(ours_median["events_per_s"] / median["events_per_s"], 2),
            "equality": equality[name],
        }
    return {
        "what": "the same log through queuewatch aggregator and through each peer "
        "(benchmarks/peers/: Quix Streams, Bytewax), each 1 process, runs interleaved",
        "dataset": {
            "reports": len(messages),
            "crossings": plan.peer_crossings,
            "span_hours": ds.spec.span_hours,
            "duplicates": ds.duplicates,
            "windows_with_reports_beyond_grace": len(late_in_ours),
        },
        "ours": {"runs": ours_runs, "median": ours_median, "output": "contributions"},
        "ours_windows": {"runs": windows_runs, "output": "windows, the equality reference"},
        "peers": peers,
    }


def _decoded(messages: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    """The log's reports, decoded, in log order."""
    schema = default_registry().latest(QUEUE_REPORT)
    return [decode(value, schema) for _key, value in messages]
