"""Reads an output topic of CrossingWindow records while a processor runs.

A background thread keeps the newest record per window key (largest ``version``; for equal
versions the later one in the log) and the wall-clock time the last output message reached
this reader (it polls every 0.2 s): "until the last window is emitted" is measured from it.
The Kafka timestamp cannot serve: Quix stamps a window with its event-time start.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from queuewatch.contract.codec import DecodeError, decode
from queuewatch.contract.schemas import CROSSING_WINDOW, default_registry

WindowKey = tuple[str, str, str, str, str, int]


def window_key(rec: dict[str, Any]) -> WindowKey:
    """The aggregator's window key (issue 4)."""
    return (
        rec["crossing_id"],
        rec["from_country"],
        rec["to_country"],
        rec["traffic_class"],
        rec["window_size"],
        rec["window_start"],
    )


class WindowCollector:
    """Follows a topic from the beginning in a thread; call :meth:`stop` when done."""

    def __init__(self, bootstrap: str, topic: str, keep_records: bool = True) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.keep_records = keep_records
        self.windows: dict[WindowKey, dict[str, Any]] = {}
        self.messages = 0
        self.undecodable = 0
        self.first_ts_ms: int | None = None
        self.last_ts_ms: int | None = None
        self.last_arrival = time.monotonic()
        self.last_arrival_wall: float | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"collect-{topic}", daemon=True)

    def start(self) -> WindowCollector:
        """Start following the topic."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop following and join the thread."""
        self._stop.set()
        self._thread.join(30)

    def quiet_for(self) -> float:
        """Seconds since the last output message arrived."""
        return time.monotonic() - self.last_arrival

    def _run(self) -> None:
        schema = default_registry().latest(CROSSING_WINDOW)
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            client_id="queuewatch-bench-windows",
            max_poll_records=5000,
        )
        try:
            parts = None
            while parts is None and not self._stop.is_set():
                parts = consumer.partitions_for_topic(self.topic)
                if parts is None:
                    time.sleep(0.2)
            if parts is None:
                return
            consumer.assign([TopicPartition(self.topic, p) for p in parts])
            consumer.seek_to_beginning()
            while not self._stop.is_set():
                batch = consumer.poll(timeout_ms=200)
                for records in batch.values():
                    self._take(records, schema)
        finally:
            consumer.close()

    def _take(self, records: list[Any], schema: Any) -> None:
        with self._lock:
            for msg in records:
                self.messages += 1
                ts = int(msg.timestamp)
                if self.first_ts_ms is None or ts < self.first_ts_ms:
                    self.first_ts_ms = ts
                if self.last_ts_ms is None or ts > self.last_ts_ms:
                    self.last_ts_ms = ts
                if not self.keep_records:
                    continue
                try:
                    rec = decode(msg.value, schema)
                except DecodeError:
                    self.undecodable += 1
                    continue
                key = window_key(rec)
                known = self.windows.get(key)
                if known is None or rec["version"] >= known["version"]:
                    self.windows[key] = rec
            if records:
                self.last_arrival = time.monotonic()
                self.last_arrival_wall = time.time()
