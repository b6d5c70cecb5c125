"""The whole pipeline through a real SASL_SSL broker, and the clients it refuses.

One broker for this module, listening SASL_SSL only (its controller too), with certificates
made here and a SCRAM-SHA-512 user written into its storage at format time. Every queuewatch
process gets its security from the settings alone (QUEUEWATCH_KAFKA_*), the password from a
file: ``topics`` creates the topics, ``publish`` sends reports, the aggregator (faust over
aiokafka) folds them into windows, ``sink all`` writes both to a chdb folder, and
``queuewatch query`` reads the rows back. A client with no credentials, and one with a wrong
password, are refused with a message that says which.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from queuewatch.kafka.security import KafkaSecurity
from queuewatch.platform.broker import BrokerSecurity, LocalBroker, free_port
from tests.integration.test_sinks_harness import wait_until
from tests.support.tls import make_broker_certificates

pytestmark = pytest.mark.integration

USER = "queuewatch"
#: Reports the test publishes; small, since the point is the path, not the volume.
REPORTS = 120
PIPELINE_TIMEOUT_S = 180.0


@dataclass
class SecureKafka:
    """The module's SASL_SSL broker and a client's way in."""

    broker: LocalBroker
    security: BrokerSecurity
    password_file: Path

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap


@pytest.fixture(scope="module")
def secure_kafka(
    tmp_path_factory: pytest.TempPathFactory, kafka_libs: Path
) -> Iterator[SecureKafka]:
    """A real broker that speaks SASL_SSL only (SCRAM-SHA-512 and PLAIN)."""
    root = tmp_path_factory.mktemp("sasl-ssl")
    certs = make_broker_certificates(root / "tls")
    password = uuid.uuid4().hex
    security = BrokerSecurity(keystore=certs.keystore, truststore=certs.ca, users={USER: password})
    password_file = root / "kafka-password"
    password_file.write_text(password + "\n")  # as a Docker secret would hold it
    password_file.chmod(0o600)
    broker = LocalBroker(
        data_root=root / "kafka",
        libs_dir=kafka_libs,
        port=free_port(),
        controller_port=free_port(),
        heap="512m",
        security=security,
    )
    broker.start(timeout_s=90)
    try:
        yield SecureKafka(broker, security, password_file)
    finally:
        broker.stop()


def environ(kafka: SecureKafka, home: Path, suffix: str, **extra: str) -> dict[str, str]:
    """A queuewatch process's environment: secured Kafka, fresh topics, groups and chdb."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUEWATCH_")}
    env.update(
        QUEUEWATCH_HOME=str(home),
        QUEUEWATCH_KAFKA_BOOTSTRAP=kafka.bootstrap,
        QUEUEWATCH_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        QUEUEWATCH_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        QUEUEWATCH_KAFKA_SASL_USERNAME=USER,
        QUEUEWATCH_KAFKA_SASL_PASSWORD_FILE=str(kafka.password_file),
        QUEUEWATCH_KAFKA_SSL_CAFILE=str(kafka.security.truststore),
        QUEUEWATCH_CLICKHOUSE_URL=f"chdb://{home / 'clickhouse'}",
        QUEUEWATCH_REPORTS_TOPIC=f"reports-{suffix}",
        QUEUEWATCH_WINDOWS_TOPIC=f"windows-{suffix}",
        QUEUEWATCH_DLQ_TOPIC=f"dlq-{suffix}",
        QUEUEWATCH_REPORTS_PARTITIONS="3",
        QUEUEWATCH_AGGREGATOR_GROUP=f"agg-{suffix}",
        QUEUEWATCH_RAW_SINK_GROUP=f"raw-{suffix}",
        QUEUEWATCH_WINDOW_SINK_GROUP=f"win-{suffix}",
        QUEUEWATCH_AGGREGATOR_FLUSH_INTERVAL_S="0.5",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def cli(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "queuewatch", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "queuewatch", *args],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def count(env: dict[str, str], sql: str) -> int | None:
    done = cli(["query", sql, "--format", "jsonl"], env)
    if done.returncode != 0:
        return None
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return int(next(iter(rows[0].values()))) if rows else None


@dataclass
class Pipeline:
    env: dict[str, str]
    published: int
    distinct: int  # event ids among them: a re-sent report is one row of queue_reports FINAL
    logs: Path


@pytest.fixture(scope="module")
def pipeline(
    secure_kafka: SecureKafka, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    """topics, publish, aggregator and sink all, every one through SASL_SSL."""
    home = tmp_path_factory.mktemp("sasl-home")
    env = environ(secure_kafka, home, uuid.uuid4().hex[:10])
    created = cli(["topics"], env)
    assert created.returncode == 0, created.stderr
    reports = home / "reports.jsonl"
    generated = cli(
        ["simulate", "--count", str(REPORTS), "--invalid-share", "0", "--out", str(reports)], env
    )
    assert generated.returncode == 0, generated.stderr
    published = cli(["publish", str(reports)], env)
    assert published.returncode == 0, published.stderr
    accepted = int(published.stderr.strip().splitlines()[-1].split()[0])
    lines = reports.read_text().splitlines()
    distinct = len({json.loads(line)["event_id"] for line in lines if line.strip()})
    aggregator = spawn(["aggregator"], env, home / "aggregator.log")
    sinks = spawn(["sink", "all"], env, home / "sink.log")
    try:
        yield Pipeline(env, accepted, distinct, home)
    finally:
        stop(aggregator)
        stop(sinks)


def test_topics_publish_aggregator_and_sinks_work_through_sasl_ssl(pipeline: Pipeline) -> None:
    env = pipeline.env
    assert pipeline.published == REPORTS  # every simulated report is valid here
    seen: list[tuple[int | None, int | None]] = []

    def rows_arrived() -> bool:
        reports = count(env, "SELECT count() FROM queue_reports FINAL")
        windows = count(env, "SELECT count() FROM crossing_windows FINAL")
        seen.append((reports, windows))
        return reports == pipeline.distinct and bool(windows)

    try:
        wait_until(rows_arrived, PIPELINE_TIMEOUT_S, "reports and windows in ClickHouse")
    except AssertionError:
        logs = "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(pipeline.logs.glob("*.log"))
        )
        raise AssertionError(
            f"the pipeline did not deliver through SASL_SSL (want {pipeline.distinct} reports; "
            f"last counts {seen[-3:]})\n{logs}"
        ) from None
    # The windows were made by the aggregator from these very reports.
    reports_in_windows = count(
        env, "SELECT max(reports) FROM crossing_windows FINAL WHERE window_size = '24h'"
    )
    assert reports_in_windows and reports_in_windows > 0


def test_status_reads_topics_and_lag_through_sasl_ssl(
    secure_kafka: SecureKafka, pipeline: Pipeline
) -> None:
    done = cli(["status", "--json"], pipeline.env)
    report = json.loads(done.stdout)
    assert report["broker_reachable"], report["problems"]
    assert all(parts == 3 for parts in report["topics"].values()), report["topics"]
    assert {g["group"] for g in report["groups"]} == {
        pipeline.env[f"QUEUEWATCH_{name}_GROUP"]
        for name in ("AGGREGATOR", "RAW_SINK", "WINDOW_SINK")
    }
    assert secure_kafka.security.users[USER] not in done.stdout + done.stderr


def test_the_aggregators_changelog_has_the_configured_min_insync_replicas(
    secure_kafka: SecureKafka, pipeline: Pipeline
) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    changelog = f"{pipeline.env['QUEUEWATCH_AGGREGATOR_GROUP']}-crossing-state-changelog"
    admin = KafkaAdminClient(
        bootstrap_servers=secure_kafka.bootstrap,
        **secure_kafka.security.client(USER).kafka_python(),
    )

    def exists() -> bool:
        return changelog in admin.list_topics()

    try:
        wait_until(exists, PIPELINE_TIMEOUT_S, f"the changelog {changelog}")
        names = [pipeline.env["QUEUEWATCH_REPORTS_TOPIC"], changelog]
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    finally:
        admin.close()
    # {resource type: {topic: {config: {"value": ...}}}}; set by us, so "modified"
    found = {
        topic: (configs.get("min.insync.replicas") or {}).get("value")
        for by_name in described.values()
        for topic, configs in by_name.items()
    }
    assert found == {name: "1" for name in names}


WRONG_PASSWORD = f"wrong-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def refused(
    secure_kafka: SecureKafka, tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], subprocess.CompletedProcess[str]]:
    """`topics` and `publish` with no credentials and with a wrong password, run side by side.

    Each waits out its client's bootstrap timeout (30 s for the admin client), so they run at
    once: the module costs one wait, not four.
    """
    home = tmp_path_factory.mktemp("refused")
    secret = home / "wrong-password"
    secret.write_text(WRONG_PASSWORD)
    envs = {
        "no credentials": environ(
            secure_kafka,
            home,
            "nocreds",
            QUEUEWATCH_KAFKA_SECURITY_PROTOCOL="PLAINTEXT",
            QUEUEWATCH_PRODUCER_MAX_BLOCK_S="10",
        ),
        "wrong password": environ(
            secure_kafka,
            home,
            "wrongpw",
            QUEUEWATCH_KAFKA_SASL_PASSWORD_FILE=str(secret),
            QUEUEWATCH_PRODUCER_MAX_BLOCK_S="10",
        ),
    }
    report = home / "one.jsonl"
    made = cli(
        ["simulate", "--count", "1", "--invalid-share", "0", "--out", str(report)],
        envs["no credentials"],
    )
    assert made.returncode == 0, made.stderr
    commands = {"topics": ["topics"], "publish": ["publish", str(report)]}
    procs = {
        (who, name): subprocess.Popen(
            [sys.executable, "-m", "queuewatch", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who, env in envs.items()
        for name, args in commands.items()
    }
    results = {}
    for key, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        results[key] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


@pytest.mark.parametrize("command", ["topics", "publish"])
def test_a_client_without_credentials_is_refused_and_told_what_to_set(
    secure_kafka: SecureKafka,
    refused: dict[tuple[str, str], subprocess.CompletedProcess[str]],
    command: str,
) -> None:
    done = refused[("no credentials", command)]
    assert done.returncode != 0
    assert secure_kafka.bootstrap in done.stderr, done.stderr
    assert "QUEUEWATCH_KAFKA_SECURITY_PROTOCOL" in done.stderr, done.stderr


@pytest.mark.parametrize("command", ["topics", "publish"])
def test_a_wrong_password_is_refused_by_name_and_never_printed(
    refused: dict[tuple[str, str], subprocess.CompletedProcess[str]], command: str
) -> None:
    done = refused[("wrong password", command)]
    assert done.returncode != 0
    assert f"refused the login of SASL user {USER!r}" in done.stderr, done.stderr
    assert WRONG_PASSWORD not in done.stdout + done.stderr


def test_a_plain_kafka_python_admin_cannot_even_list_the_topics(secure_kafka: SecureKafka) -> None:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaTimeoutError

    with pytest.raises(KafkaTimeoutError):
        KafkaAdminClient(
            bootstrap_servers=secure_kafka.bootstrap,
            bootstrap_timeout_ms=3000,
            **KafkaSecurity().kafka_python(),
        )
