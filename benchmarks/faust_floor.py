"""The ceiling of any faust-streaming processor here: an agent that only decodes.

Run as a worker by :func:`benchmarks.scenario_limit.faust_agent`: one agent, concurrency 1,
``take_events`` batches as the aggregator uses them, decoding every value with the contract's
codec and doing nothing else. The clock starts at the first batch (the group join and
start-up are not counted) and stops at the N-th report; the rate goes to stdout as
``FAUST_RATE <reports/s>`` and the worker exits.

Usage (environment): BENCH_BOOTSTRAP, BENCH_TOPIC, BENCH_N, BENCH_GROUP, BENCH_DATADIR.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import faust

from queuewatch.contract.codec import decode
from queuewatch.contract.schemas import QUEUE_REPORT, default_registry

BATCH = 5000


def main() -> None:
    """Build the app from the environment and run it until N reports are decoded."""
    n = int(os.environ["BENCH_N"])
    app = faust.App(
        os.environ["BENCH_GROUP"],
        broker=f"kafka://{os.environ['BENCH_BOOTSTRAP']}",
        datadir=os.environ["BENCH_DATADIR"],
        store="memory://",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=4 * BATCH,
        topic_disable_leader=True,
        topic_replication_factor=1,
    )
    topic = app.topic(
        os.environ["BENCH_TOPIC"],
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    schema = default_registry().latest(QUEUE_REPORT)
    seen = {"n": 0, "t0": 0.0}

    async def agent(stream: Any) -> None:
        async for events in stream.take_events(BATCH, 0.2):
            if not seen["n"]:
                seen["t0"] = time.perf_counter()
            for event in events:
                decode(event.message.value, schema)
            seen["n"] += len(events)
            if seen["n"] >= n:
                rate = seen["n"] / (time.perf_counter() - seen["t0"])
                print(f"FAUST_RATE {rate:.1f}", flush=True)
                os._exit(0)

    app.agent(topic, name="decode-only", concurrency=1)(agent)
    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn"]
    app.main()


if __name__ == "__main__":
    main()
