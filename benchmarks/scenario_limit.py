"""The limit: how fast can Python on this machine consume and Avro-decode the reports at all?

No processor can beat "read the bytes from Kafka and decode them", so this is the ceiling the
aggregator is judged against. Three clients read the same pre-loaded topic from the start,
assigned to every partition (no group join), and decode every value with the contract's codec
(queuewatch.contract.codec.decode); the clock runs from creating the consumer to decoding the
N-th report. The fastest client's median is "the limit". Decode alone (no Kafka) is measured
too, to show how much of the cost is the client, and so is a faust-streaming agent that only
decodes (``benchmarks/faust_floor.py``): the ceiling of any processor built on faust here.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.context import Context
from benchmarks.dataset import DatasetSpec, dataset
from benchmarks.kafka_setup import create_topics, produce
from benchmarks.replay import run_ids
from benchmarks.stats import median_of_runs
from queuewatch.contract.codec import decode
from queuewatch.contract.schemas import QUEUE_REPORT, default_registry

FETCH_MAX_BYTES = 64 * 2**20
#: The faust agent reads the first this many reports: enough for a steady rate, and at its
#: speed the whole million would add minutes per run.
FAUST_REPORTS = 200_000
PARTITION_FETCH_BYTES = 8 * 2**20


def decode_only(values: Sequence[bytes]) -> float:
    """Seconds to decode ``values`` in a loop, without Kafka."""
    schema = default_registry().latest(QUEUE_REPORT)
    t0 = time.perf_counter()
    for value in values:
        decode(value, schema)
    return time.perf_counter() - t0


def kafka_python(bootstrap: str, topic: str, n: int) -> float:
    """Seconds for kafka-python to consume and decode ``n`` reports."""
    from kafka import KafkaConsumer, TopicPartition

    schema = default_registry().latest(QUEUE_REPORT)
    t0 = time.perf_counter()
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_bytes=FETCH_MAX_BYTES,
        max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
        max_poll_records=10_000,
        client_id="bench-limit-kafka-python",
    )
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in parts])
        consumer.seek_to_beginning()
        seen = 0
        while seen < n:
            for records in consumer.poll(timeout_ms=500).values():
                for msg in records:
                    decode(msg.value, schema)
                seen += len(records)
        return time.perf_counter() - t0
    finally:
        consumer.close()


def aiokafka(bootstrap: str, topic: str, n: int) -> float:
    """Seconds for aiokafka (faust's client) to consume and decode ``n`` reports."""
    return asyncio.run(_aiokafka(bootstrap, topic, n))


async def _aiokafka(bootstrap: str, topic: str, n: int) -> float:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    schema = default_registry().latest(QUEUE_REPORT)
    t0 = time.perf_counter()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_bytes=FETCH_MAX_BYTES,
        max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
        client_id="bench-limit-aiokafka",
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in parts])
        await consumer.seek_to_beginning()
        seen = 0
        while seen < n:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batch.values():
                for msg in records:
                    decode(msg.value, schema)
                seen += len(records)
        return time.perf_counter() - t0
    finally:
        await consumer.stop()


def confluent(bootstrap: str, topic: str, n: int) -> float:
    """Seconds for confluent-kafka (librdkafka) to consume and decode ``n`` reports."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    schema = default_registry().latest(QUEUE_REPORT)
    t0 = time.perf_counter()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bench-limit-confluent",
            "enable.auto.commit": False,
            "fetch.max.bytes": FETCH_MAX_BYTES,
            "max.partition.fetch.bytes": PARTITION_FETCH_BYTES,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=30)
        parts = meta.topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        seen = 0
        while seen < n:
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                if msg.error():
                    continue
                decode(msg.value() or b"", schema)
                seen += 1
        return time.perf_counter() - t0
    finally:
        consumer.close()


def faust_agent(bootstrap: str, topic: str, n: int) -> float:
    """Seconds for a faust agent (take_events, concurrency 1) to decode ``n`` reports.

    Timed inside the worker from its first batch, so the group join is not counted; the
    wall clock of the whole process is bounded by a generous timeout.
    """
    with tempfile.TemporaryDirectory(prefix="faust-floor-") as datadir:
        env = dict(
            os.environ,
            BENCH_BOOTSTRAP=bootstrap,
            BENCH_TOPIC=topic,
            BENCH_N=str(n),
            BENCH_GROUP=f"bench-faust-floor-{os.getpid()}-{time.monotonic_ns()}",
            BENCH_DATADIR=datadir,
        )
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.faust_floor"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    found = re.search(r"FAUST_RATE ([0-9.]+)", done.stdout + done.stderr)  # faust logs stdout
    if found:
        return n / float(found.group(1))
    raise RuntimeError(f"the faust agent gave no rate: {done.stdout[-500:]} {done.stderr[-1500:]}")


def clients() -> dict[str, Any]:
    """The clients to measure; confluent-kafka only when installed (the bench extra)."""
    out: dict[str, Any] = {"kafka-python": kafka_python, "aiokafka": aiokafka}
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return out
    out["confluent-kafka"] = confluent
    return out


def limit(ctx: Context) -> dict[str, Any]:
    """Consume + decode the pre-loaded log with each client, ``runs`` times each."""
    plan = ctx.plan
    ds = dataset(
        DatasetSpec(plan.limit_reports, plan.aggregator_crossings, plan.aggregator_span_hours)
    )
    messages = ds.load()
    topics, _ = run_ids("limit")
    create_topics(ctx.bootstrap, topics.as_roles())
    produce(ctx.bootstrap, topics.reports, messages)
    n = len(messages)
    values = [v for _, v in messages]
    per_client: dict[str, Any] = {}
    decode_runs = [{"seconds": decode_only(values)} for _ in range(plan.runs)]
    for name, fn in clients().items():
        runs = []
        for _ in range(plan.runs):
            seconds = fn(ctx.bootstrap, topics.reports, n)
            runs.append({"seconds": round(seconds, 3), "events_per_s": round(n / seconds, 1)})
        per_client[name] = {"runs": runs, "median": median_of_runs(runs)}
    best = max(per_client, key=lambda c: per_client[c]["median"]["events_per_s"])
    decode_s = median_of_runs(decode_runs)["seconds"]
    faust_runs = []
    faust_n = min(n, FAUST_REPORTS)
    for _ in range(plan.runs):
        seconds = faust_agent(ctx.bootstrap, topics.reports, faust_n)
        faust_runs.append(
            {"seconds": round(seconds, 3), "events_per_s": round(faust_n / seconds, 1)}
        )
    return {
        "what": "consume + Avro-decode a pre-loaded log from the start, per client, 1 process",
        "reports": n,
        "clients": per_client,
        "decode_only_events_per_s": round(n / decode_s, 1),
        "fastest_client": best,
        "limit_events_per_s": per_client[best]["median"]["events_per_s"],
        "faust_agent": {
            "what": "a faust-streaming agent (take_events of 5000, concurrency 1) that only "
            "decodes; timed from its first batch",
            "reports": faust_n,
            "runs": faust_runs,
            "median": median_of_runs(faust_runs),
        },
    }
