"""The soak's publisher: the simulator's scenario at a fixed rate, through the real SDK.

It is `queuewatch simulate`'s own loop (``run_simulation`` over ``generate``) in a thread of
the soak, not a child of `up`: a simulator that `up` restarts after a broker kill starts its
seeded stream over, so the rest of the run would publish only re-sends. Here, when the
producer fails (the broker was down longer than a request may wait), a new one takes over
and the same iterator carries on where it stopped. What was in flight may or may not be in
the log; the oracle reads the log, so that is fine.

The stream has what the soak needs: invalid reports (``invalid_share``), re-sent event ids
(the scenario's 3 %, some with new content) and late reports (hot-line and satellite reports
arrive hours after they were observed, past the 2 h grace).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kafka.errors import KafkaError

from queuewatch.errors import QueuewatchError
from queuewatch.kafka.producer import ReportProducer
from queuewatch.producers.publish import run_simulation
from queuewatch.producers.simulator import SimulatedReport, SimulationConfig, generate

log = logging.getLogger(__name__)

#: How long a publish may wait for a broker that is down before the producer gives up and
#: a new one is made: longer than a broker restart (~15 s), so a kill normally costs nothing.
MAX_BLOCK_S = 60.0


@dataclass
class PublishCounts:
    """What the publisher handed to the producer (not what reached the log)."""

    valid: int = 0
    invalid: int = 0
    resent: int = 0
    producer_failures: int = 0
    errors: list[str] = field(default_factory=list)


class _Counting:
    """A ReportSink that counts, around the real producer."""

    def __init__(self, producer: ReportProducer, counts: PublishCounts) -> None:
        self.producer = producer
        self.counts = counts

    def publish(self, report: dict[str, Any]) -> None:
        self.producer.publish(report)
        self.counts.valid += 1

    def publish_raw(self, key: bytes | None, value: bytes) -> None:
        self.producer.publish_raw(key, value)
        self.counts.invalid += 1


class SoakPublisher:
    """Publishes the seeded scenario at ``rate`` reports/s until :meth:`stop`."""

    def __init__(self, bootstrap: str, seed: int, rate: float, invalid_share: float) -> None:
        self.bootstrap = bootstrap
        self.rate = rate
        self.counts = PublishCounts()
        self._items: Iterator[SimulatedReport] = self._counted(
            generate(SimulationConfig(seed=seed, invalid_share=invalid_share))
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-publisher", daemon=True)

    def _counted(self, items: Iterator[SimulatedReport]) -> Iterator[SimulatedReport]:
        for item in items:
            if item.resent:
                self.counts.resent += 1
            yield item

    def start(self) -> None:
        """Start publishing in the background."""
        self._thread.start()

    def stop(self) -> PublishCounts:
        """Stop, flush what is queued, and return the counts."""
        self._stop.set()
        self._thread.join(MAX_BLOCK_S + 90)
        return self.counts

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                producer = ReportProducer(
                    self.bootstrap, client_id="queuewatch-soak", max_block_s=MAX_BLOCK_S
                )
                with producer:
                    run_simulation(
                        self._items,
                        _Counting(producer, self.counts),
                        speed=0.0,
                        rate=self.rate,
                        stop=self._stop,
                    )
                return
            except (QueuewatchError, KafkaError) as exc:  # broker away too long: a new producer
                self.counts.producer_failures += 1
                self.counts.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                log.warning("publisher: %s; starting a new producer", exc)
                time.sleep(1.0)
