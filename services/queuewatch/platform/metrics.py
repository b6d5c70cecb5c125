"""Prometheus metrics of every processor, served on its own port (``*_METRICS_PORT``).

Why collectors, not counters bumped in the loops: the aggregator and the sinks already keep
exact totals for their logs and their liveness (``Aggregator.totals``, ``SinkStats``, the lag
the progress watch samples). A collector reads those when Prometheus scrapes, so the hot path
pays nothing and the figures cannot drift from what the logs say. Only latencies need an
observation where they happen: one histogram sample per batch, never per report.

Label cardinality is bounded: ``outcome`` has the five outcomes and ``dead``, ``partition``
the input topic's partitions, ``sink`` two names, and ``crossing`` the crossings this worker
holds in memory (a few hundred to a few thousand; evicted crossings leave the gauge).

``queuewatch up`` gives every child a free port on 127.0.0.1 and records it in its state file,
where ``queuewatch status`` finds it; compose binds 0.0.0.0 inside the container for
Prometheus on the internal network. Port 0 turns the endpoint off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

#: Seconds buckets of the batch and insert latencies: a batch takes milliseconds to seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def serve(registry: CollectorRegistry, address: str, port: int, what: str) -> int | None:
    """Serve ``registry`` on ``address:port``; None when ``port`` is 0 (off).

    A port that cannot be bound is logged and the processor goes on without metrics: its
    work matters more than its figures.
    """
    if port <= 0:
        return None
    try:
        start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        log.error(
            "%s metrics not served on %s:%d (%s); set QUEUEWATCH_*_METRICS_PORT to a free "
            "port, or 0 to turn them off",
            what,
            address,
            port,
            exc,
        )
        return None
    log.info("%s metrics on http://%s:%d/metrics", what, address, port)
    return port


def batch_histogram(registry: CollectorRegistry, name: str, doc: str) -> Histogram:
    """A latency histogram in ``registry``, labelled by nothing (one per process)."""
    return Histogram(name, doc, buckets=LATENCY_BUCKETS, registry=registry)


class AggregatorCollector(Collector):
    """The aggregator's figures, read at scrape time from the running aggregator."""

    def __init__(
        self,
        totals: Mapping[str, int],
        states: Mapping[str, Any],
        partition_lag: Callable[[], Mapping[int, int]],
        last_ack_at: Callable[[], float | None],
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.totals = totals
        self.states = states
        self.partition_lag = partition_lag
        self.last_ack_at = last_ack_at
        self.clock_ms = clock_ms

    def collect(self) -> Iterable[Metric]:
        totals = dict(self.totals)
        outcomes = CounterMetricFamily(
            "queuewatch_aggregator_reports",
            "Messages read, by outcome: accepted, late (accepted, too late for some window), "
            "too_late (for every window), duplicate, replayed (applied before a restart), "
            "dead (dead-lettered).",
            labels=["outcome"],
        )
        for name, value in sorted(totals.items()):
            if name in ("messages", "redelivered", "holes", "silent"):
                continue
            outcomes.add_metric([name], value)
        yield outcomes
        yield CounterMetricFamily(
            "queuewatch_aggregator_messages",
            "Messages read from the reports topic (valid or not).",
            value=totals.get("messages", 0),
        )
        lag = GaugeMetricFamily(
            "queuewatch_aggregator_consumer_lag",
            "Reports waiting per input partition owned by this worker (sampled every few s).",
            labels=["partition"],
        )
        for partition, value in sorted(dict(self.partition_lag()).items()):
            lag.add_metric([str(partition)], value)
        yield lag
        states = list(self.states.items())
        yield GaugeMetricFamily(
            "queuewatch_aggregator_crossings",
            "Crossings whose state this worker holds in memory.",
            value=len(states),
        )
        yield GaugeMetricFamily(
            "queuewatch_aggregator_state_lanes",
            "Lanes (crossing, direction, class) with open panes in memory: the state's size.",
            value=sum(len(getattr(s, "lanes", ())) for _, s in states),
        )
        now = self.clock_ms()
        fresh = GaugeMetricFamily(
            "queuewatch_crossing_freshness_seconds",
            "Wall-clock age of each crossing's newest report (its event-time watermark).",
            labels=["crossing"],
        )
        for cid, state in states:
            watermark = getattr(state, "watermark", None)
            if watermark is not None and watermark > 0:
                fresh.add_metric([cid], max(0.0, (now - watermark) / 1000))
        yield fresh
        acked = self.last_ack_at()
        if acked is not None:
            yield GaugeMetricFamily(
                "queuewatch_aggregator_last_commit_age_seconds",
                "Seconds since the last batch was made durable and acknowledged.",
                value=max(0.0, time.monotonic() - acked),
            )


class SinkCollector(Collector):
    """Each sink's figures (``sink all`` runs two), read at scrape time."""

    def __init__(self, sinks: Callable[[], Iterable[Any]]) -> None:
        self.sinks = sinks

    def collect(self) -> Iterable[Metric]:
        sinks = list(self.sinks())
        families = {
            "records": CounterMetricFamily(
                "queuewatch_sink_records", "Records read from Kafka.", labels=["sink"]
            ),
            "rows_written": CounterMetricFamily(
                "queuewatch_sink_rows_written", "Rows written to ClickHouse.", labels=["sink"]
            ),
            "batches": CounterMetricFamily(
                "queuewatch_sink_batches", "Batches written and committed.", labels=["sink"]
            ),
            "failed_writes": CounterMetricFamily(
                "queuewatch_sink_write_retries",
                "ClickHouse writes that failed and were retried.",
                labels=["sink"],
            ),
            "dead_letters": CounterMetricFamily(
                "queuewatch_sink_dead_letters", "Records dead-lettered.", labels=["sink"]
            ),
        }
        lag = GaugeMetricFamily(
            "queuewatch_sink_consumer_lag", "Records waiting for this sink.", labels=["sink"]
        )
        paused = GaugeMetricFamily(
            "queuewatch_sink_paused",
            "1 while the sink has paused its consumption to retry a failed write.",
            labels=["sink"],
        )
        commit_age = GaugeMetricFamily(
            "queuewatch_sink_last_commit_age_seconds",
            "Seconds since the sink last committed offsets after a write.",
            labels=["sink"],
        )
        now = time.monotonic()
        for cp in sinks:
            for field, family in families.items():
                family.add_metric([cp.name], getattr(cp.stats, field))
            if cp.lag is not None:
                lag.add_metric([cp.name], cp.lag)
            paused.add_metric([cp.name], 1 if cp.retrying is not None else 0)
            if cp.stats.last_commit_at is not None:
                commit_age.add_metric([cp.name], max(0.0, now - cp.stats.last_commit_at))
        yield from families.values()
        yield lag
        yield paused
        yield commit_age


def scrape(address: str, port: int, timeout_s: float = 2.0) -> dict[str, float]:
    """``name{labels}`` -> value of every sample at a metrics endpoint (for ``status``)."""
    from urllib.request import urlopen

    with urlopen(f"http://{address}:{port}/metrics", timeout=timeout_s) as response:
        text = response.read().decode()
    return dict(samples(text))


def samples(text: str) -> Iterator[tuple[str, float]]:
    """The samples of an exposition text as ``name{a="x"}`` -> value."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            yield (f"{sample.name}{{{labels}}}" if labels else sample.name), sample.value
