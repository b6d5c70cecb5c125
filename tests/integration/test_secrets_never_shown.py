"""No password is ever shown: not by `status`, `settings`, `query`, nor in a sink's log.

Each command runs as a process with a ClickHouse password in QUEUEWATCH_CLICKHOUSE_URL (or in
QUEUEWATCH_CLICKHOUSE_PASSWORD_FILE) and a Kafka SASL password, against addresses where
nothing answers, so every error path that could quote a URL or a credential runs; the
passwords are then looked for in everything the process printed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from queuewatch.platform.broker import free_port

pytestmark = pytest.mark.integration

CH_SECRET = f"ch-secret-{uuid.uuid4().hex[:12]}"
KAFKA_SECRET = f"kafka-secret-{uuid.uuid4().hex[:12]}"


def environ(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUEWATCH_")}
    env.update(
        QUEUEWATCH_HOME=str(home),
        QUEUEWATCH_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}",
        QUEUEWATCH_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        QUEUEWATCH_KAFKA_SASL_USERNAME="queuewatch",
        QUEUEWATCH_KAFKA_SASL_PASSWORD=KAFKA_SECRET,
        QUEUEWATCH_CLICKHOUSE_URL=f"http://writer:{CH_SECRET}@127.0.0.1:{free_port()}",
        QUEUEWATCH_LOG_LEVEL="DEBUG",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "queuewatch", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.stdout + done.stderr


def assert_hidden(text: str) -> None:
    assert text.strip(), "the command printed nothing: the check would prove nothing"
    assert CH_SECRET not in text
    assert KAFKA_SECRET not in text


@pytest.mark.parametrize("args", [["status"], ["status", "--json"]])
def test_status_shows_the_user_and_host_but_no_password(tmp_path: Path, args: list[str]) -> None:
    out = run(args, environ(tmp_path))
    assert_hidden(out)
    assert "http://writer:***@127.0.0.1" in out  # what it does show, so the check is real


def test_status_with_the_password_in_a_file_shows_none_either(tmp_path: Path) -> None:
    secret = tmp_path / "clickhouse-password"
    secret.write_text(CH_SECRET + "\n")
    env = environ(
        tmp_path,
        QUEUEWATCH_CLICKHOUSE_URL=f"http://writer@127.0.0.1:{free_port()}",
        QUEUEWATCH_CLICKHOUSE_PASSWORD_FILE=str(secret),
    )
    out = run(["status", "--json"], env)
    assert_hidden(out)
    assert "http://writer@127.0.0.1" in out


@pytest.mark.parametrize("args", [["settings"], ["settings", "--markdown"]])
def test_settings_lists_no_configured_secret(tmp_path: Path, args: list[str]) -> None:
    assert_hidden(run(args, environ(tmp_path)))


def test_a_malformed_clickhouse_url_is_refused_without_quoting_its_password(
    tmp_path: Path,
) -> None:
    env = environ(tmp_path, QUEUEWATCH_CLICKHOUSE_URL=f"clickhouse://writer:{CH_SECRET}@ch:9000")
    out = run(["query", "SELECT 1"], env)
    assert "QUEUEWATCH_CLICKHOUSE_URL" in out
    assert_hidden(out)


def test_a_sink_that_cannot_connect_logs_no_password(tmp_path: Path) -> None:
    log = tmp_path / "sink.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "queuewatch", "sink", "raw"],
            env=environ(tmp_path),
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        proc.wait(timeout=25)  # it gives up on Kafka and ClickHouse, or we stop it
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert_hidden(log.read_text(errors="replace"))


def test_kafka_pythons_debug_dump_of_its_configuration_is_masked(tmp_path: Path) -> None:
    # kafka-python logs every client's configuration at DEBUG, SASL password included: the
    # line must still appear (so the check is real), with the password masked.
    script = (
        "from kafka import KafkaAdminClient\n"
        "from queuewatch.cli.app import setup_logging\n"
        "from queuewatch.kafka.security import client_security\n"
        "from queuewatch.settings import CommonSettings\n"
        "setup_logging('DEBUG')\n"
        "s = CommonSettings()\n"
        "try:\n"
        "    KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap, bootstrap_timeout_ms=500,\n"
        "                     **client_security(s))\n"
        "except Exception as exc:\n"
        "    print('refused:', type(exc).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=environ(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = done.stdout + done.stderr
    assert "'sasl_plain_password': '***'" in out, out[-2000:]
    assert_hidden(out)
