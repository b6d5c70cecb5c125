"""`queuewatch up` refuses bad setups with one line that names the fix, and starts nothing.

Each test runs the real command in a subprocess with its own QUEUEWATCH_HOME and then
checks that no process carrying that home in its environment is left running.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuewatch.platform.broker import free_port
from queuewatch.platform.processes import processes_with_env

pytestmark = pytest.mark.integration


def up_env(home: Path, kafka_libs: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "QUEUEWATCH_HOME": str(home),
            "QUEUEWATCH_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
            "QUEUEWATCH_KAFKA_CONTROLLER_PORT": str(free_port()),
            "QUEUEWATCH_KAFKA_LIBS": str(kafka_libs),
            "QUEUEWATCH_KAFKA_HEAP": "256m",
        }
    )
    env.update(extra)
    return env


def run_up(env: dict[str, str], timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "queuewatch", "up", "--no-simulate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one `queuewatch: error:` line; fails when there is not exactly one."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("queuewatch: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def assert_nothing_left(home: Path) -> None:
    assert processes_with_env("QUEUEWATCH_HOME", str(home)) == []


@pytest.fixture
def bin_with_only(tmp_path: Path) -> Iterator[object]:
    """Make a PATH folder holding only the named tools (to hide java or mvn)."""

    def make(*tools: str) -> str:
        folder = tmp_path / "bin"
        folder.mkdir(exist_ok=True)
        for tool in tools:
            real = subprocess.run(["which", tool], capture_output=True, text=True, check=True)
            (folder / tool).symlink_to(real.stdout.strip())
        return str(folder)

    yield make


def test_missing_java_fails_with_how_to_install_it(
    tmp_path: Path, kafka_libs: Path, bin_with_only: object
) -> None:
    home = tmp_path / "home"
    env = up_env(home, kafka_libs, PATH=bin_with_only())  # type: ignore[operator]
    result = run_up(env)
    assert result.returncode == 1
    assert "java was not found on PATH" in error_line(result)
    assert "apt-get install openjdk-17-jre-headless" in error_line(result)
    assert not (home / "kafka" / "data").exists()
    assert_nothing_left(home)


def test_missing_maven_with_no_jars_fails_with_how_to_install_it(
    tmp_path: Path, bin_with_only: object
) -> None:
    home = tmp_path / "home"
    empty_libs = tmp_path / "libs"
    env = up_env(home, empty_libs, PATH=bin_with_only("java"))  # type: ignore[operator]
    result = run_up(env)
    assert result.returncode == 1
    assert "mvn (Apache Maven) was not found" in error_line(result)
    assert_nothing_left(home)


def test_broker_port_taken_by_a_program_that_is_not_kafka_is_refused(
    tmp_path: Path, kafka_libs: Path
) -> None:
    home = tmp_path / "home"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(16)
        port = squatter.getsockname()[1]
        env = up_env(home, kafka_libs, QUEUEWATCH_KAFKA_BOOTSTRAP=f"127.0.0.1:{port}")
        result = run_up(env)
    assert result.returncode == 1
    line = error_line(result)
    assert f"port {port} on 127.0.0.1 is taken by a program that is not Kafka" in line
    assert "QUEUEWATCH_KAFKA_BOOTSTRAP" in line
    assert not (home / "kafka" / "data").exists()
    assert_nothing_left(home)


def test_unreachable_remote_bootstrap_is_refused_without_starting_a_broker(
    tmp_path: Path, kafka_libs: Path
) -> None:
    home = tmp_path / "home"
    # 192.0.2.0/24 is TEST-NET-1: never routed, so nothing can answer there.
    env = up_env(home, kafka_libs, QUEUEWATCH_KAFKA_BOOTSTRAP="192.0.2.1:9092")
    result = run_up(env)
    assert result.returncode == 1
    line = error_line(result)
    assert "no Kafka broker answers at 192.0.2.1:9092" in line
    assert "will not start one" in line
    assert not (home / "kafka").exists()
    assert_nothing_left(home)


def test_unwritable_home_is_refused(tmp_path: Path, kafka_libs: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the home's parent folder should be")
    home = blocker / "home"
    result = run_up(up_env(home, kafka_libs))
    assert result.returncode == 1
    assert "set QUEUEWATCH_HOME to a folder you can write" in error_line(result)
    assert_nothing_left(home)


def test_chdb_folder_open_in_another_process_is_refused_naming_that_process(
    tmp_path: Path, kafka_libs: Path
) -> None:
    home = tmp_path / "home"
    folder = home / "clickhouse"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from chdb import session\n"
            "s = session.Session(sys.argv[1])\n"
            "s.query('SELECT 1')\n"
            "print('open', flush=True)\n"
            "time.sleep(600)\n",
            str(folder),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        result = run_up(up_env(home, kafka_libs))
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1
    line = error_line(result)
    assert f"is open in process {holder.pid}" in line
    assert "QUEUEWATCH_CLICKHOUSE_URL" in line
    assert not (home / "kafka" / "data").exists()
    assert_nothing_left(home)


def test_status_without_a_broker_is_unhealthy_and_says_how_to_start_one(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.update(
        {
            "QUEUEWATCH_HOME": str(tmp_path),
            "QUEUEWATCH_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "queuewatch", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["healthy"] is False and report["broker_reachable"] is False
    assert any("queuewatch up" in p for p in report["problems"])


def test_failed_migrations_stop_the_broker_already_started_and_leave_nothing(
    tmp_path: Path, kafka_libs: Path
) -> None:
    home = tmp_path / "home"
    # A ClickHouse server URL where nothing listens: the broker starts, then migrate fails.
    env = up_env(home, kafka_libs, QUEUEWATCH_CLICKHOUSE_URL=f"http://127.0.0.1:{free_port()}")
    result = run_up(env, timeout_s=240)
    assert result.returncode == 1
    assert "ClickHouse migrations failed:" in error_line(result)
    assert "starting the Kafka broker" in result.stderr  # it did get that far
    assert (home / "kafka" / "data" / "meta.properties").exists()
    assert not (home / "kafka" / "broker.pid").exists()
    assert_nothing_left(home)
