"""The attacks of issue 13, replayed against a running owner (`queuewatch sink all`) through
`queuewatch query` as another process, the way a local user would try them.

Each is refused with a message naming what and why; the freezing query ends by the time limit
while the sinks keep writing.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from queuewatch.clickhouse import embedded
from tests.integration.test_sinks_harness import (
    CATCH_UP_TIMEOUT_S,
    SinkEnv,
    SinkProcess,
    make_reports,
    new_env,
    publish,
    query,
    query_rows,
    wait_until,
)

pytestmark = pytest.mark.integration

#: Long enough for a batch of reports to be written and read while the freezing query runs
#: on a busy machine; the test's point is the order of events, not this figure.
FREEZE_LIMIT_S = 40
COUNT_SQL = "SELECT count() AS n FROM queue_reports FINAL"


@dataclass
class Owner:
    env: SinkEnv
    process: SinkProcess
    written: int


@pytest.fixture(scope="module")
def owner(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Owner]:
    home = tmp_path_factory.mktemp("qp-home")
    env = new_env(bootstrap, home, QUEUEWATCH_QUERY_MAX_EXECUTION_TIME_S=str(FREEZE_LIMIT_S))
    reports = make_reports(200, seed=13)
    publish(bootstrap, env.reports_topic, reports.messages)
    process = SinkProcess(env, home / "sink.log")
    try:
        process.wait_serving()
        wait_until(
            lambda: query_rows(env, COUNT_SQL)[0]["n"] == len(reports.expected),
            CATCH_UP_TIMEOUT_S,
            "the raw sink to write the first reports",
            process,
        )
        yield Owner(env, process, len(reports.expected))
    finally:
        if process.alive():
            process.stop()


def site_packages(tmp: Path) -> Path:
    folder = tmp / "venv" / "lib" / "python3.11" / "site-packages"
    folder.mkdir(parents=True)
    return folder


def test_the_pth_write_is_refused_in_every_form_and_nothing_lands(
    owner: Owner, tmp_path: Path
) -> None:
    target = site_packages(tmp_path) / "evil.pth"
    line = "import os; os.system(chr(105) + chr(100))"  # runs `id` at the next start
    for tail in ("", " APPEND", " TRUNCATE", " AND STDOUT", " COMPRESSION 'none'"):
        done = query(owner.env, f"SELECT '{line}'\nINTO   OUTFILE '{target}'{tail}")
        assert done.returncode == 1, done.stdout
        assert "query refused: INTO OUTFILE writes a file" in done.stderr
    assert list(target.parent.iterdir()) == []


def test_the_file_read_is_refused(owner: Owner) -> None:
    done = query(owner.env, "SELECT /**/ FiLe('/proc/self/maps')")
    assert done.returncode == 1
    assert "query refused: the function FiLe() is not allowed" in done.stderr
    assert "/proc/self/maps" not in done.stdout


def tcp_listening_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                if fields[3] == "0A":  # LISTEN
                    inodes.add(fields[9])
    return inodes


def test_the_owner_listens_on_no_tcp_port_only_on_its_own_socket(owner: Owner) -> None:
    """A web page can only reach TCP: with no TCP listener there is nothing to POST to."""
    pid = owner.process.proc.pid
    fd_dir = Path(f"/proc/{pid}/fd")
    sockets = {
        os.readlink(fd).removeprefix("socket:[").rstrip("]")
        for fd in fd_dir.iterdir()
        if os.readlink(fd).startswith("socket:")
    }
    assert sockets, "the owner holds sockets (Kafka clients, the query socket)"
    assert sockets.isdisjoint(tcp_listening_inodes())
    found = embedded.current_owner(owner.env.home / "clickhouse")
    assert found is not None and found.pid == pid
    info = Path(found.query_socket).stat()
    assert Path(found.query_socket).parent == owner.env.home.resolve()
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.getuid()


def test_a_freezing_query_ends_by_the_limit_while_the_sinks_keep_writing(
    owner: Owner,
) -> None:
    freezing = subprocess.Popen(
        [sys.executable, "-m", "queuewatch", "query", "SELECT count() FROM numbers(1e13)"],
        env=owner.env.environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: query(owner.env, "SELECT 1").returncode == 0,
            30,
            "a second query to answer beside the freezing one",
        )
        more = make_reports(100, seed=14)
        publish(owner.env.bootstrap, owner.env.reports_topic, more.messages)
        want = owner.written + len(more.expected)
        wait_until(
            lambda: query_rows(owner.env, COUNT_SQL)[0]["n"] == want,
            FREEZE_LIMIT_S,
            "new reports to be written while the freezing query runs",
            owner.process,
        )
        assert freezing.poll() is None, "the freezing query must still run: writes went on"
        _, err = freezing.communicate(timeout=FREEZE_LIMIT_S + 60)
    finally:
        if freezing.poll() is None:
            freezing.kill()
            freezing.wait()
    assert freezing.returncode == 1
    assert "159 TIMEOUT_EXCEEDED" in err
    assert f"ran longer than {FREEZE_LIMIT_S} s and was stopped" in err
    owner.written = want
