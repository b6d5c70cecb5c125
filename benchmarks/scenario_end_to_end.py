"""End to end: reports published at a fixed offered rate -> visible in ClickHouse.

The whole pipeline runs as in `queuewatch up` on the embedded default: one aggregator worker
and `queuewatch sink all` (owner of a fresh chdb folder, answering `queuewatch query`), on a
fresh set of topics per offered rate. The harness publishes open-loop: report i is *due* at
``t0 + i / rate`` and carries that moment as its ``observed_at``; the publisher sends what is
due every few milliseconds (pre-encoded bytes, confluent-kafka), so a slow pipeline cannot
slow the offered load down and hide its own latency (no coordinated omission).

Latency of a report = when it became visible - when it was due:

* in ``queue_reports``: ``ingested_at - observed_at`` of every row (``ingested_at`` is the
  insert's own clock, the row is readable right after);
* in the windows: the harness asks, every ``POLL_S``, for each crossing's largest
  ``last_observed_at`` among its current 1 h windows (``window_latest``, what
  ``crossing_status`` and the dashboard read: a table fed with every window insert under
  output windows, a view assembled from the contributions under output contributions); a
  report is visible once that reaches its ``observed_at`` (reports of a crossing are due in
  order, so this is exact up to the polling interval plus the query's own time, which are
  recorded).

A report still invisible when the drain time runs out counts with (end of drain - due), a
lower bound; the result says so. Sustained ("no growing lag") means: every report became
visible in both tables within the drain time, the publisher kept up with the offered rate
(>= 95 %), and the p95 latency of the last quarter of the run is at most twice that of the
first quarter plus one second.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from benchmarks import processes
from benchmarks.context import Context
from benchmarks.dataset import make_crossings, make_report
from benchmarks.kafka_setup import create_topics
from benchmarks.replay import aggregator_starter, run_ids
from benchmarks.scenario_sink import sink_env
from benchmarks.stats import percentile
from queuewatch.clickhouse.endpoint import socket_path
from queuewatch.contract.codec import encode
from queuewatch.contract.schemas import QUEUE_REPORT, default_registry

POLL_S = 0.5
TICK_S = 0.005
READY_TIMEOUT_S = 240.0


def _query(address: str, sql: str) -> list[dict[str, Any]]:
    """Rows of ``sql`` through the owner's query socket (what `queuewatch query` uses)."""
    from queuewatch.clickhouse.endpoint import ask

    body = ask(Path(address), sql, "jsonl")
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def _records(n: int, crossings: int, rate: int) -> list[dict[str, Any]]:
    """``n`` reports round-robin over ``crossings``; observed_at is the offset from t0 (ms)."""
    rng = random.Random(rate)
    pool = make_crossings(crossings, rng)
    out = []
    for i in range(n):
        c = pool[i % crossings]
        rec = make_report(c, (i * 1000) // rate, rng)
        rec["crossing_id"] = f"e2e-{c.crossing_id}"
        out.append(rec)
    return out


def _encode(
    records: list[dict[str, Any]], t0_ms: int
) -> tuple[list[tuple[bytes, bytes]], list[tuple[str, int]]]:
    """Encoded reports due at t0 + their offset, and (crossing, due_ms) of each."""
    schema = default_registry().latest(QUEUE_REPORT)
    messages, due = [], []
    for rec in records:
        rec = {**rec, "observed_at": t0_ms + rec["observed_at"]}
        messages.append((rec["crossing_id"].encode(), encode(rec, schema)))
        due.append((rec["crossing_id"], rec["observed_at"]))
    return messages, due


class WindowVisibility:
    """Polls the current windows and records when each report's window became visible."""

    def __init__(self, address: str, due: list[tuple[str, int]]) -> None:
        self.address = address
        self.pending: dict[str, deque[int]] = {}
        for crossing, t in due:
            self.pending.setdefault(crossing, deque()).append(t)
        self.latencies: list[tuple[int, float]] = []  # (due_ms, latency_s)
        self.query_s: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="window-visibility", daemon=True)

    @property
    def remaining(self) -> int:
        """Reports not yet visible."""
        return sum(len(q) for q in self.pending.values())

    def start(self) -> WindowVisibility:
        """Start polling."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        sql = (
            "SELECT crossing_id, toUnixTimestamp64Milli(max(last_observed_at)) AS seen "
            "FROM window_latest FINAL WHERE window_size = '1h' AND crossing_id LIKE 'e2e-%' "
            "GROUP BY crossing_id"
        )
        while not self._stop.is_set() and self.remaining:
            t_ask = time.time()
            try:
                rows = _query(self.address, sql)
            except Exception:  # the owner may be busy starting; count and retry
                self.errors += 1
                self._stop.wait(POLL_S)
                continue
            t_seen = time.time()
            self.query_s.append(t_seen - t_ask)
            for row in rows:
                queue = self.pending.get(row["crossing_id"])
                seen = int(row["seen"])
                while queue and queue[0] <= seen:
                    due = queue.popleft()
                    self.latencies.append((due, t_seen - due / 1000))
            self._stop.wait(max(0.0, POLL_S - (time.time() - t_ask)))


def _publish(
    bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]], due: list[tuple[str, int]]
) -> float:
    """Send each message when it is due; return the achieved rate (messages/s)."""
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all", "enable.idempotence": True}
    )
    i, n = 0, len(messages)
    t_first = time.time()
    while i < n:
        now_ms = time.time() * 1000
        while i < n and due[i][1] <= now_ms:
            key, value = messages[i]
            try:
                producer.produce(topic, value, key)
            except BufferError:
                producer.poll(0.01)
                continue
            i += 1
        producer.poll(0)
        time.sleep(TICK_S)
    producer.flush(60)
    elapsed = time.time() - t_first
    return n / elapsed if elapsed > 0 else float(n)


def _summary(
    latencies: list[tuple[int, float]],
    censored: list[tuple[int, float]],
    t0_ms: int,
    quarter_ms: int,
) -> dict[str, Any]:
    """Percentiles over seen reports plus the unseen ones at their lower bound.

    A report not visible when the drain time ran out counts with latency = (end of drain -
    due): a lower bound, so with any such report the percentiles are lower bounds too.
    """
    both = latencies + censored
    values = [lat for _, lat in both]
    quarters: dict[int, list[float]] = {}
    for due, lat in both:
        quarters.setdefault((due - t0_ms) // quarter_ms, []).append(lat)
    return {
        "visible": len(latencies),
        "not_visible": len(censored),
        "percentiles_are_lower_bounds": bool(censored),
        "p50_s": percentile(values, 0.5),
        "p95_s": percentile(values, 0.95),
        "p99_s": percentile(values, 0.99),
        "p95_by_quarter_s": [percentile(quarters[k], 0.95) for k in sorted(quarters)],
    }


def _raw_latency(
    address: str, due: list[tuple[str, int]], t0_ms: int, quarter_ms: int, t_end: float
) -> dict[str, Any]:
    """Latency of each report to queue_reports: ingested_at - due, from ClickHouse's rows."""
    rows = _query(
        address,
        "SELECT toUnixTimestamp64Milli(observed_at) AS due, "
        "toUnixTimestamp64Milli(ingested_at) AS seen FROM queue_reports "
        "WHERE crossing_id LIKE 'e2e-%'",
    )
    # Several reports share a due millisecond at high rates: match them as a multiset.
    unseen = Counter(t for _, t in due)
    unseen.subtract(int(r["due"]) for r in rows)
    latencies = [(int(r["due"]), (int(r["seen"]) - int(r["due"])) / 1000) for r in rows]
    censored = [(t, t_end - t / 1000) for t, k in unseen.items() for _ in range(max(k, 0))]
    return _summary(latencies, censored, t0_ms, quarter_ms)


def _window_latency(
    vis: WindowVisibility, t0_ms: int, quarter_ms: int, t_end: float
) -> dict[str, Any]:
    censored = [(t, t_end - t / 1000) for q in vis.pending.values() for t in q]
    out = _summary(vis.latencies, censored, t0_ms, quarter_ms)
    out["poll_interval_s"] = POLL_S
    out["poll_query_p50_s"] = percentile(vis.query_s, 0.5)
    return out


def _growing(by_quarter: list[float | None]) -> bool:
    vals = [v for v in by_quarter if v is not None]
    if len(vals) < 2:
        return False
    return vals[-1] > 2 * vals[0] + 1.0


def one_rate(ctx: Context, rate: int, output: str = "windows") -> dict[str, Any]:
    """Run the pipeline at one offered rate and measure visibility latency.

    ``output`` is QUEUEWATCH_AGGREGATOR_OUTPUT: ``windows`` (the default: the aggregator emits
    the windows, the window sink writes them) or ``contributions`` (aggregator v2: one record
    per report, written by the contributions sink; the windows are views assembled when read).
    """
    plan = ctx.plan
    topics, group = run_ids(f"e2e{rate}")
    create_topics(ctx.bootstrap, topics.as_roles())
    env = sink_env(ctx, topics, group, str(ctx.work / f"chdb-{group}"))
    settings = {"QUEUEWATCH_AGGREGATOR_OUTPUT": output}
    if output == "contributions":
        settings["QUEUEWATCH_CONTRIBUTIONS_TOPIC"] = f"{topics.windows}-contributions"
    env.update(settings)
    address = str(socket_path(Path(env["QUEUEWATCH_HOME"])))
    sink = processes.start(
        f"e2e-sink-{group}", [ctx.python, "-m", "queuewatch", "sink", "all"], env, ctx.log_dir
    )
    agg = aggregator_starter(
        ctx.bootstrap,
        topics,
        f"{group}-agg",
        ctx.work / f"home-{group}",
        ctx.log_dir,
        ctx.python,
        settings,
    )()
    try:
        _wait_ready(address, sink, agg)
        n = int(rate * plan.e2e_seconds)
        records = _records(n, plan.e2e_crossings, rate)
        # observed_at is the due time, so encoding must happen before it: time a sample and
        # start the clock once all of it will surely be done.
        t_sample = time.perf_counter()
        _encode(records[:1000], 0)
        per_record = (time.perf_counter() - t_sample) / min(1000, n)
        t0_ms = int(time.time() * 1000 + (per_record * n * 1.5 + 2.0) * 1000)
        messages, due = _encode(records, t0_ms)
        del records
        vis = WindowVisibility(address, due).start()
        while time.time() * 1000 < t0_ms:
            time.sleep(0.001)
        start_delay_s = max(0.0, time.time() - t0_ms / 1000)
        achieved = _publish(ctx.bootstrap, topics.reports, messages, due)
        deadline = time.monotonic() + plan.e2e_drain_s
        raw_visible = 0
        while time.monotonic() < deadline:
            agg.check_alive()
            sink.check_alive()
            raw_visible = int(
                _query(
                    address, "SELECT count() AS n FROM queue_reports WHERE crossing_id LIKE 'e2e-%'"
                )[0]["n"]
            )
            if raw_visible >= n and vis.remaining == 0:
                break
            time.sleep(1.0)
        vis.stop()
        t_end = time.time()
        quarter_ms = max(1, int(plan.e2e_seconds * 1000 / 4))
        raw = _raw_latency(address, due, t0_ms, quarter_ms, t_end)
        windows = _window_latency(vis, t0_ms, quarter_ms, t_end)
    finally:
        agg.stop()
        sink.stop()
    complete = raw["not_visible"] == 0 and windows["not_visible"] == 0
    kept_up = achieved >= 0.95 * rate
    sustained = (
        complete
        and kept_up
        and not _growing(raw["p95_by_quarter_s"])
        and not _growing(windows["p95_by_quarter_s"])
    )
    return {
        "offered_per_s": rate,
        "published": n,
        "achieved_publish_per_s": round(achieved, 1),
        "publisher_start_delay_s": round(start_delay_s, 3),
        "queue_reports": raw,
        "crossing_windows": windows,
        "complete": complete,
        "sustained": sustained,
        "peak_rss_mib": {
            "aggregator": round(agg.peak_rss / 2**20, 1),
            "sink_all": round(sink.peak_rss / 2**20, 1),
        },
    }


def _wait_ready(address: str, sink: processes.Child, agg: processes.Child) -> None:
    """Wait until the sink answers queries and the aggregator has joined its group."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        sink.check_alive()
        agg.check_alive()
        try:
            _query(address, "SELECT count() FROM crossing_contributions")
            break
        except Exception:
            time.sleep(0.5)
    else:
        raise TimeoutError(f"`queuewatch sink all` did not answer on {address}")
    # The aggregator needs its group joined and its changelogs checked before it processes;
    # give it the time its start-up took in the replays (measured there), at least 5 s.
    time.sleep(5.0)


def end_to_end(ctx: Context) -> dict[str, Any]:
    """Every offered rate of the plan, ``runs`` times, medians per rate: output windows (the
    default) at every rate, then output contributions up to its first rate not sustained
    (a higher one would only fall behind faster)."""
    plan = ctx.plan
    per_output: dict[str, list[dict[str, Any]]] = {}
    for output in ("windows", "contributions"):
        per_rate = per_output[output] = []
        for rate in plan.e2e_rates:
            runs = [one_rate(ctx, rate, output) for _ in range(plan.e2e_runs)]
            per_rate.append(_summarize(rate, runs))
            if output == "contributions" and per_rate[-1]["sustained_runs"] * 2 <= len(runs):
                break

    def highest(per_rate: list[dict[str, Any]]) -> int | None:
        ok = [r["offered_per_s"] for r in per_rate if r["sustained_runs"] * 2 > len(r["runs"])]
        return max(ok) if ok else None

    return {
        "what": "publish at an offered rate -> visible in queue_reports and crossing_windows "
        "(aggregator 1 worker + sink all on chdb, all on this machine); rates: output windows, "
        "contributions.rates: output contributions (the windows are views assembled when read)",
        "duration_s": plan.e2e_seconds,
        "crossings": plan.e2e_crossings,
        "rates": per_output["windows"],
        "highest_sustained_per_s": highest(per_output["windows"]),
        "contributions": {
            "rates": per_output["contributions"],
            "highest_sustained_per_s": highest(per_output["contributions"]),
        },
    }


def _summarize(rate: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(table: str, field: str) -> float | None:
        vals = [r[table][field] for r in runs if r[table][field] is not None]
        return round(sorted(vals)[len(vals) // 2], 3) if vals else None

    return {
        "offered_per_s": rate,
        "runs": runs,
        "sustained_runs": sum(1 for r in runs if r["sustained"]),
        "median": {
            f"{table}_{field}": med(table, field)
            for table in ("queue_reports", "crossing_windows")
            for field in ("p50_s", "p95_s", "p99_s")
        },
    }
