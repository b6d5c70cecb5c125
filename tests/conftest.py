"""Fixtures shared by every test folder.

Integration tests get one real Kafka broker per test session, on free ports in a temporary
folder, and a fresh embedded ClickHouse folder; nothing is mocked.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuewatch.platform.broker import LocalBroker, fetch_jars, free_port
from queuewatch.resources import REPO_ROOT


@pytest.fixture(scope="session")
def kafka_libs() -> Path:
    """The broker's jars, fetched with Maven on first use."""
    libs = Path(os.environ.get("QUEUEWATCH_KAFKA_LIBS", REPO_ROOT / "infra/kafka/target/libs"))
    return fetch_jars(libs)


@pytest.fixture(scope="session")
def kafka_broker(
    tmp_path_factory: pytest.TempPathFactory, kafka_libs: Path
) -> Iterator[LocalBroker]:
    """A real Apache Kafka broker (KRaft, single node) for the whole test session."""
    broker = LocalBroker(
        data_root=tmp_path_factory.mktemp("kafka"),
        libs_dir=kafka_libs,
        port=free_port(),
        controller_port=free_port(),
        heap="512m",
    )
    broker.start(timeout_s=90)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def bootstrap(kafka_broker: LocalBroker) -> str:
    """Bootstrap address of the session's broker."""
    return kafka_broker.bootstrap


@pytest.fixture
def unique() -> str:
    """A short random suffix for topic, group and database names, so tests never collide."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def chdb_url(tmp_path: Path) -> str:
    """URL of a fresh embedded ClickHouse folder (chdb) for one test."""
    return f"chdb://{tmp_path / 'clickhouse'}"
