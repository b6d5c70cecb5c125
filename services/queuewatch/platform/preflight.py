"""Checks ``queuewatch up`` makes before it starts anything, so a failure starts nothing.

Each check raises a :class:`~queuewatch.errors.QueuewatchError` whose message is one line:
what is wrong and what to do about it.
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

from queuewatch.errors import ConfigurationError, QueuewatchError
from queuewatch.kafka.security import KafkaSecurity, RefusalLog, connection_hint, describe_failure
from queuewatch.platform.broker import is_local_address, kafka_answers, port_open, split_host_port


class ClickHouseFolderInUseError(QueuewatchError):
    """The embedded ClickHouse folder is open in another process (chdb allows one)."""


class KafkaUnreachableError(QueuewatchError):
    """A remote Kafka bootstrap address does not answer."""


def chdb_path(url: str) -> Path | None:
    """The folder of a ``chdb://PATH`` URL, or None for a server URL."""
    if not url.startswith("chdb://"):
        return None
    return Path(url.removeprefix("chdb://").split("?", 1)[0])


def chdb_folder_holder(folder: Path) -> int | None:
    """The pid of the process that has the chdb folder open, or None when it is free.

    The embedded engine (like clickhouse-server) holds an exclusive ``flock`` on the folder's
    ``status`` file while it has the folder open, and writes its pid into that file.
    """
    status = folder / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return None  # never opened: free
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            match = re.search(r"PID:\s*(\d+)", status.read_text(errors="replace"))
        except OSError:
            match = None
        return int(match.group(1)) if match else -1
    finally:
        os.close(fd)
    return None


def check_chdb_folder_free(url: str) -> None:
    """Fail when the embedded ClickHouse folder of ``url`` is open in another process."""
    from queuewatch.clickhouse.ownership import current_owner

    folder = chdb_path(url)
    if folder is None:
        return
    # A queuewatch owner holds its ownership lock (even before the engine opens the folder);
    # any other program using chdb holds the engine's own lock.
    owner = current_owner(folder)
    pid = (owner.pid or -1) if owner is not None else chdb_folder_holder(folder)
    if pid is None:
        return
    who = f"process {pid}" if pid > 0 else "another process"
    raise ClickHouseFolderInUseError(
        f"the embedded ClickHouse folder {folder} is open in {who} (chdb allows one process "
        "per folder); stop that process, or set QUEUEWATCH_CLICKHOUSE_URL to another "
        "chdb:// folder or to a ClickHouse server"
    )


def check_query_port_free(address: str) -> None:
    """Fail when the port the embedded ClickHouse owner answers queries on is taken."""
    host, port = split_host_port(address, default_port=8124)
    if port_open(host, port):
        raise ConfigurationError(
            f"port {port} on {host} (QUEUEWATCH_QUERY_ADDRESS, where `queuewatch query` "
            "reaches the embedded ClickHouse) is taken by another program; stop it or set "
            "QUEUEWATCH_QUERY_ADDRESS to a free port"
        )


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
