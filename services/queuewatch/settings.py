"""Every setting queuewatch reads, in one place.

Each service reads only the class it needs; every field has an environment name
(``QUEUEWATCH_`` + the field name in upper case), a default and one line of why.
``all_settings()`` lists them for the README and for the docker compose check, so a
setting that is not declared here cannot be configured anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_ENV = SettingsConfigDict(env_prefix="QUEUEWATCH_", extra="ignore")


class CommonSettings(BaseSettings):
    """Where data lives and where Kafka and ClickHouse are: read by every service."""

    model_config = _ENV

    home: Path = Field(
        Path("./var"),
        description="Folder for local state: the broker's log, the embedded ClickHouse, pid files.",
    )
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092",
        description="Kafka bootstrap servers; a local broker is started here when none answers.",
    )
    clickhouse_url: str = Field(
        "",
        description="ClickHouse URL: chdb://PATH (embedded, default $QUEUEWATCH_HOME/clickhouse) "
        "or http(s)://user:password@host:port for a server.",
    )
    clickhouse_database: str = Field(
        "queuewatch", description="Database holding the projections and the migrations table."
    )
    reports_topic: str = Field(
        "queue-reports", description="The event log of queue reports: the system of record."
    )
    dlq_topic: str = Field(
        "queue-reports-dlq", description="Dead letters: undecodable or invalid reports, bytes kept."
    )
    windows_topic: str = Field(
        "crossing-windows", description="Window aggregates emitted by the aggregator."
    )
    reports_partitions: int = Field(
        12, description="Partitions of the reports topic: the ceiling on aggregator workers."
    )
    log_level: str = Field("INFO", description="Python log level of every queuewatch process.")
    aggregator_group: str = Field(
        "queuewatch-aggregator",
        description="Consumer group (and faust app id) of the aggregator; its state topics "
        "are named after it.",
    )
    raw_sink_group: str = Field(
        "queuewatch-raw-sink", description="Consumer group of the raw-report sink."
    )
    window_sink_group: str = Field(
        "queuewatch-window-sink", description="Consumer group of the window sink."
    )
    query_address: str = Field(
        "127.0.0.1:8124",
        description="Where the process that owns the embedded ClickHouse folder answers "
        "`queuewatch query` (chdb opens a folder in one process only); loopback only.",
    )

    @property
    def resolved_clickhouse_url(self) -> str:
        """The ClickHouse URL, defaulting to the embedded engine under ``home``."""
        if self.clickhouse_url:
            return self.clickhouse_url
        return f"chdb://{(self.home / 'clickhouse').resolve()}"

    @property
    def is_embedded_clickhouse(self) -> bool:
        """True when ClickHouse is the in-process chdb engine (one process per folder)."""
        return self.resolved_clickhouse_url.startswith("chdb://")


class BrokerSettings(BaseSettings):
    """The local Apache Kafka broker that `queuewatch up` starts when none answers."""

    model_config = _ENV

    kafka_libs: Path = Field(
        Path("infra/kafka/target/libs"),
        description="Folder of the broker's jars, filled by Maven from infra/kafka/pom.xml.",
    )
    kafka_heap: str = Field(
        "1g", description="Broker JVM heap (-Xmx); 1 GiB carries the simulator with room to spare."
    )
    broker_start_timeout_s: float = Field(
        60.0, description="How long to wait for a started broker to answer before giving up."
    )


@dataclass(frozen=True)
class SettingDoc:
    """One documented setting: its environment name, default and reason."""

    env: str
    default: Any
    description: str
    group: str


def settings_classes() -> list[type[BaseSettings]]:
    """Every settings class declared in this module, in declaration order.

    All services declare their settings here (config in one place), so this list is complete.
    """
    return [
        obj
        for obj in globals().values()
        if isinstance(obj, type) and issubclass(obj, BaseSettings) and obj is not BaseSettings
    ]


def all_settings() -> list[SettingDoc]:
    """Every setting of every registered class, with its environment name."""
    out: list[SettingDoc] = []
    seen: set[str] = set()
    for cls in settings_classes():
        prefix = cls.model_config.get("env_prefix", "")
        for name, field in cls.model_fields.items():
            env = f"{prefix}{name}".upper()
            if env in seen:
                continue
            seen.add(env)
            out.append(SettingDoc(env, field.default, field.description or "", cls.__name__))
    return out
