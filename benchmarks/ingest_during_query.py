"""Does a long query hold back ingestion? Raw-sink latency while a 60 s query runs.

Ad hoc, not part of ``make bench``: ``python -m benchmarks.ingest_during_query [--query-s 60]``.

A fresh broker, ``queuewatch sink all`` owning a fresh chdb folder with
``QUEUEWATCH_QUERY_MAX_EXECUTION_TIME_S`` raised to the query's length, then one report
published every ``--interval-s`` on one crossing (one partition, so the n-th visible row is
the n-th published). A poller asks the owner's socket every 50 ms how many of them
``queue_reports`` holds; a report's latency is publish (acknowledged by the broker) to the
first poll that sees it. Three phases of the same length: before the query, while
``SELECT count() FROM numbers(1e13)`` runs (it ends by the time limit), after it. The
figures include the sink's batching (``QUEUEWATCH_SINK_BATCH_SECONDS``, 1 s by default).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from kafka import KafkaProducer

from benchmarks.dataset import make_crossings, make_report
from benchmarks.kafka_setup import create_topics, running_broker
from benchmarks.stats import percentile
from queuewatch.clickhouse.endpoint import ask, socket_path
from queuewatch.contract.codec import encode
from queuewatch.contract.schemas import QUEUE_REPORT, default_registry

POLL_S = 0.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--query-s", type=float, default=60.0)
    parser.add_argument("--interval-s", type=float, default=0.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qw-ingest-") as tmp:
        work = Path(tmp)
        with running_broker(work / "kafka", heap="512m") as broker:
            print(json.dumps(run(broker.bootstrap, work, args.query_s, args.interval_s), indent=2))


def run(bootstrap: str, work: Path, query_s: float, interval_s: float) -> dict[str, Any]:
    names = {"reports": "reports", "dlq": "dlq", "windows": "windows"}
    create_topics(bootstrap, names, partitions=3)
    home = work / "home"
    home.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUEWATCH_")}
    env.update(
        QUEUEWATCH_HOME=str(home),
        QUEUEWATCH_KAFKA_BOOTSTRAP=bootstrap,
        QUEUEWATCH_REPORTS_TOPIC=names["reports"],
        QUEUEWATCH_DLQ_TOPIC=names["dlq"],
        QUEUEWATCH_WINDOWS_TOPIC=names["windows"],
        QUEUEWATCH_QUERY_MAX_EXECUTION_TIME_S=str(query_s),
        QUEUEWATCH_LOG_LEVEL="WARNING",
    )
    log = (work / "sink.log").open("wb")
    sink = subprocess.Popen(
        [sys.executable, "-m", "queuewatch", "sink", "all"], env=env, stdout=log, stderr=log
    )
    sock = socket_path(home)
    try:
        _wait_answering(sock, sink)
        return _measure(bootstrap, names["reports"], sock, env, query_s, interval_s)
    finally:
        sink.terminate()
        sink.wait(60)
        log.close()


def _wait_answering(sock: Path, sink: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if sink.poll() is not None:
            raise RuntimeError("sink all died")
        try:
            ask(sock, "SELECT count() FROM queue_reports", "jsonl")
            return
        except Exception:
            time.sleep(0.5)
    raise TimeoutError("sink all did not answer")


def _measure(
    bootstrap: str, topic: str, sock: Path, env: dict[str, str], query_s: float, interval_s: float
) -> dict[str, Any]:
    rng = random.Random(13)
    crossing = make_crossings(1, rng)[0]
    schema = default_registry().latest(QUEUE_REPORT)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    published: list[float] = []
    seen_at: dict[int, float] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            body = ask(sock, "SELECT count() AS n FROM queue_reports", "jsonl")
            now = time.monotonic()
            n = int(json.loads(body)["n"])
            for i in range(len(seen_at), n):
                seen_at[i] = now
            time.sleep(POLL_S)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    phases: dict[str, tuple[int, int]] = {}
    query_result: dict[str, Any] = {}

    def publish_for(seconds: float) -> tuple[int, int]:
        first = len(published)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rec = make_report(crossing, int(time.time() * 1000), rng)
            producer.send(topic, key=rec["crossing_id"].encode(), value=encode(rec, schema)).get(30)
            published.append(time.monotonic())
            time.sleep(interval_s)
        return first, len(published)

    phases["before"] = publish_for(query_s / 3)
    started = time.monotonic()
    long_query = subprocess.Popen(
        [sys.executable, "-m", "queuewatch", "query", "SELECT count() FROM numbers(1e13)"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # let it start before counting the phase
    phases["during"] = publish_for(query_s - 5)
    _, err = long_query.communicate(timeout=query_s + 120)
    query_result = {
        "exit": long_query.returncode,
        "seconds": round(time.monotonic() - started, 1),
        "message": err.strip().splitlines()[-1] if err.strip() else "",
    }
    phases["after"] = publish_for(query_s / 3)
    deadline = time.monotonic() + 60
    while len(seen_at) < len(published) and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    poller.join(10)
    producer.close()
    out: dict[str, Any] = {"query": query_result, "interval_s": interval_s}
    for name, (a, b) in phases.items():
        lat = [seen_at[i] - published[i] for i in range(a, b) if i in seen_at]
        out[name] = {
            "reports": b - a,
            "visible": len(lat),
            "p50_s": _rounded(percentile(lat, 0.5)),
            "p99_s": _rounded(percentile(lat, 0.99)),
            "max_s": _rounded(max(lat) if lat else None),
        }
    return out


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


if __name__ == "__main__":
    main()
