"""Sink throughput: rows per second each ClickHouse sink writes (and commits) on this machine.

`queuewatch sink all` (the embedded layout: one process owns a fresh chdb folder and runs
both sinks) replays N reports into ``queue_reports``, then, in a second process on a fresh
folder, N window records into ``crossing_windows``, then, with output ``contributions``, the
contributions the aggregator gives for the N reports (benchmarks/contribution_log.py) into
``crossing_contributions`` (drain only; the windows are views over them, assembled when
read). For the contributions it also counts the rows the folder stores, per contribution (the
ClickHouse part of issue 12's "rows written downstream per report"), and times the consumer
queries on the views (``benchmarks/view_reads.py``), on this log and on the sparse replay's
log. The replay protocol is the one of
benchmarks/replay.py: the clock starts when the sink is up and ends when its consumer group
has committed everything, which the sink does only after ClickHouse accepted the rows.

Each is measured two ways. **drain** (the headline figure): the sink is frozen while the N
records are published and the clock starts when it thaws, so it drains a loaded topic at its
own rate. **live**: the N records are published while the sink reads them (the protocol of
the aggregator's replays); the harness's producer (about 36k messages/s here, on the same two
cores) then bounds the figure from above, which it did not while the sinks were slower.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections.abc import Callable
from typing import Any

from benchmarks import processes
from benchmarks.context import Context
from benchmarks.contribution_log import contribution_messages
from benchmarks.dataset import DatasetSpec, dataset
from benchmarks.replay import Topics, probe_message, replay, run_ids
from benchmarks.stats import median_of_runs
from queuewatch.contract.codec import encode
from queuewatch.contract.schemas import CROSSING_WINDOW, default_registry

HOUR_MS = 3_600_000


def sink_env(ctx: Context, topics: Topics, group: str, folder: str) -> dict[str, str]:
    """Settings of a `queuewatch sink all` process for one replay."""
    return {
        "QUEUEWATCH_HOME": str(ctx.work / f"home-{group}"),
        "QUEUEWATCH_KAFKA_BOOTSTRAP": ctx.bootstrap,
        "QUEUEWATCH_CLICKHOUSE_URL": f"chdb://{folder}",
        "QUEUEWATCH_REPORTS_TOPIC": topics.reports,
        "QUEUEWATCH_DLQ_TOPIC": topics.dlq,
        "QUEUEWATCH_WINDOWS_TOPIC": topics.windows,
        "QUEUEWATCH_RAW_SINK_GROUP": f"{group}-raw",
        "QUEUEWATCH_WINDOW_SINK_GROUP": f"{group}-windows",
        "QUEUEWATCH_LOG_LEVEL": "WARNING",
    }


def contributions_env(ctx: Context, topics: Topics, group: str, folder: str) -> dict[str, str]:
    """Settings of a `queuewatch sink all` with output contributions, read from
    ``topics.windows``."""
    return {
        **sink_env(ctx, topics, group, folder),
        "QUEUEWATCH_AGGREGATOR_OUTPUT": "contributions",
        "QUEUEWATCH_CONTRIBUTIONS_TOPIC": topics.windows,
        "QUEUEWATCH_CONTRIBUTIONS_SINK_GROUP": f"{group}-contributions",
    }


def view_reads(ctx: Context, folder: str, env: dict[str, str]) -> dict[str, Any]:
    """``benchmarks.view_reads`` on a folder its sink has left: stored rows, read costs."""
    out = subprocess.run(
        [ctx.python, "-m", "benchmarks.view_reads", folder],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    found: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


def sink_starter(ctx: Context, env: dict[str, str], name: str) -> Callable[[], processes.Child]:
    """Starts `queuewatch sink all` with ``env``."""
    argv = [ctx.python, "-m", "queuewatch", "sink", "all"]
    return lambda: processes.start(name, argv, env, ctx.log_dir)


def window_messages(n: int, crossings: int, seed: int = 3) -> list[tuple[bytes, bytes]]:
    """``n`` encoded CrossingWindow records over ``crossings`` crossings (distinct keys)."""
    rng = random.Random(seed)
    schema = default_registry().latest(CROSSING_WINDOW)
    base = 1_700_000_000_000 // HOUR_MS * HOUR_MS
    out = []
    for i in range(n):
        crossing = f"sk-x{i % crossings:04d}"
        start = base + (i // crossings) * 300_000
        wait = rng.randrange(5, 3000)
        rec = {
            "crossing_id": crossing, "from_country": "RU", "to_country": "KZ",
            "traffic_class": "car", "window_size": "1h", "window_start": start,
            "window_end": start + HOUR_MS, "reports": rng.randrange(1, 200),
            "sources": rng.randrange(1, 6), "wait_minutes_min": wait // 2,
            "wait_minutes_max": wait * 2, "wait_minutes_avg": float(wait),
            "wait_minutes_p50": float(wait), "wait_minutes_p90": wait * 1.5,
            "wait_minutes_last": wait, "queue_vehicles_max": 900, "queue_vehicles_avg": 700.5,
            "queue_vehicles_last": 800, "queue_length_km_max": 12.5,
            "queue_length_km_avg": 8.25, "queue_length_km_last": 9.0, "status_last": "delay",
            "last_observed_at": start + 1000, "version": 1, "updated_at": start + 2000,
        }  # fmt: skip
        out.append((crossing.encode(), encode(rec, schema)))
    return out


def sink(ctx: Context) -> dict[str, Any]:
    """Rows/s of the raw sink and of the window sink, ``runs`` times each."""
    plan = ctx.plan
    ds = dataset(
        DatasetSpec(plan.sink_reports, plan.aggregator_crossings, plan.aggregator_span_hours)
    )
    reports = ds.load()
    windows = window_messages(plan.sink_windows, plan.aggregator_crossings)
    runs: dict[str, list[dict[str, Any]]] = {
        "raw": [], "windows": [], "raw_live": [], "windows_live": []
    }  # fmt: skip
    for _ in range(plan.runs):
        for held in (True, False):
            suffix = "" if held else "_live"
            topics, group = run_ids("sink")
            env = sink_env(ctx, topics, group, str(ctx.work / f"chdb-{group}"))
            raw = replay(
                name="queuewatch sink all (raw)",
                bootstrap=ctx.bootstrap,
                topics=topics,
                group=f"{group}-raw",
                start=sink_starter(ctx, env, f"sink-raw-{group}"),
                messages=reports,
                probe=probe_message(ds.start_ms),
                output_topic=None,
                hold_while_publishing=held,
            )
            runs["raw" + suffix].append(_rows(raw.figures()))
            topics, group = run_ids("wsink")
            env = sink_env(ctx, topics, group, str(ctx.work / f"chdb-{group}"))
            win = replay(
                name="queuewatch sink all (windows)",
                bootstrap=ctx.bootstrap,
                topics=topics,
                group=f"{group}-windows",
                start=sink_starter(ctx, env, f"sink-windows-{group}"),
                messages=windows,
                probe=window_messages(1, 1, seed=9)[0],
                output_topic=None,
                input_topic=topics.windows,
                hold_while_publishing=held,
            )
            runs["windows" + suffix].append(_rows(win.figures()))
    now_ms = int(time.time() * 1000)
    contributions = contribution_messages(reports, now_ms)
    runs["contributions"] = []
    for _ in range(plan.runs):
        runs["contributions"].append(_contributions_run(ctx, contributions, ds.start_ms))
    sparse = dataset(
        DatasetSpec(plan.aggregator_reports, plan.aggregator_crossings, plan.aggregator_span_hours)
    )
    sparse_reports = sparse.load()
    sparse_run = _contributions_run(
        ctx, contribution_messages(sparse_reports, now_ms), sparse.start_ms
    )
    sparse_run["reports"] = len(sparse_reports)
    sizes = {"raw": len(reports), "windows": len(windows), "contributions": len(contributions)}
    return {
        "what": "`queuewatch sink all` on a fresh chdb folder, 1 process; rows written and "
        "committed per second; raw/windows drain a loaded topic, *_live read while the "
        "harness publishes",
        **{
            key: {
                "rows": sizes[key.removesuffix("_live")],
                "runs": found,
                "median": median_of_runs(found),
            }
            for key, found in runs.items()
        },
        "contributions_sparse": sparse_run,
    }


def _contributions_run(
    ctx: Context, messages: list[tuple[bytes, bytes]], probe_at: int
) -> dict[str, Any]:
    """One drain of ``messages`` (contributions) by `sink all` with output contributions,
    then what the folder stores and what reading its windows costs (``view_reads``)."""
    topics, group = run_ids("csink")
    folder = str(ctx.work / f"chdb-{group}")
    env = contributions_env(ctx, topics, group, folder)
    name = f"sink-contributions-{group}"
    result = replay(
        name="queuewatch sink all (contributions)",
        bootstrap=ctx.bootstrap,
        topics=topics,
        group=f"{group}-contributions",
        start=sink_starter(ctx, env, name),
        messages=messages,
        probe=contribution_messages([probe_message(probe_at)], int(time.time() * 1000))[0],
        output_topic=None,
        input_topic=topics.windows,
        hold_while_publishing=True,
    )
    figures = _rows(result.figures())
    found = view_reads(ctx, folder, env)
    stored = sum(found["stored_rows"].values())
    # The probe is one more contribution outside the timed part: rows per contribution
    # count it on both sides.
    figures["stored_rows"] = found["stored_rows"]
    figures["clickhouse_rows_per_contribution"] = round(stored / (len(messages) + 1), 3)
    figures["reads"] = found["reads"]
    return figures


def _rows(figures: dict[str, Any]) -> dict[str, Any]:
    """Replay figures renamed for a sink (rows, not events)."""
    return {
        "rows": figures["reports"],
        "seconds": figures["seconds"],
        "rows_per_s": figures["events_per_s"],
        "startup_s": figures["startup_s"],
        "peak_rss_mib": figures["peak_rss_mib"],
    }
