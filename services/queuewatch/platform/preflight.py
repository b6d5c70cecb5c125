"""Checks ``queuewatch up`` makes of Kafka before it starts anything, so a failure starts nothing.

The embedded ClickHouse folder's checks live with the engine (``clickhouse/embedded.py``).

Each check raises a :class:`~queuewatch.errors.QueuewatchError` whose message is one line:
what is wrong and what to do about it.
"""

from __future__ import annotations

from queuewatch.errors import QueuewatchError
from queuewatch.kafka.security import KafkaSecurity, RefusalLog, connection_hint, describe_failure
from queuewatch.platform.broker import is_local_address, kafka_answers, port_open, split_host_port


class KafkaUnreachableError(QueuewatchError):
    """A remote Kafka bootstrap address does not answer."""


def bootstrap_is_local(bootstrap: str) -> bool:
    """True when the bootstrap address names this machine (so a broker may be started)."""
    host, _ = split_host_port(bootstrap)
    return is_local_address(host)


def check_remote_kafka(
    bootstrap: str, timeout_s: float = 10.0, security: KafkaSecurity | None = None
) -> None:
    """Fail when a bootstrap address on another machine does not answer as Kafka."""
    host, port = split_host_port(bootstrap)
    security = security or KafkaSecurity()
    with RefusalLog() as refusals:
        if kafka_answers(bootstrap, timeout_s, security):
            return
    if refusals.refusals:
        raise KafkaUnreachableError(
            describe_failure(bootstrap, security, KafkaUnreachableError(), refusals)
        )
    reached = (
        "accepts connections but does not answer as Kafka"
        if port_open(host, port)
        else ("does not accept connections")
    )
    raise KafkaUnreachableError(
        f"no Kafka broker answers at {bootstrap} ({host}:{port} {reached}); it is not on "
        "this machine, so queuewatch will not start one: start that broker, or set "
        "QUEUEWATCH_KAFKA_BOOTSTRAP to a reachable one (127.0.0.1:9092 runs a local broker); "
        + connection_hint(security)
    )
