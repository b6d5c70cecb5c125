"""The embedded owner's query socket, on a real Unix socket with a stand-in handler.

The endpoint knows nothing of SQL (the guard is tested in ``test_query_guard.py``), so these
tests hand it a handler that records what it was asked, and attack the transport: a browser's
cross-site POST, another user, an oversized or stalled request, a flood of connections.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuewatch.clickhouse.endpoint import QueryEndpoint, ask, socket_path
from queuewatch.clickhouse.exceptions import QueryServerError

pytestmark = pytest.mark.integration

NOBODY = 65534


class Recorder:
    """A handler that answers ``ok:<sql>`` and remembers every call; may be made to block."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Semaphore(0)

    def __call__(self, sql: str, output: str) -> bytes:
        self.calls.append((sql, output))
        self.entered.release()
        self.release.wait(60)
        return f"ok:{sql}".encode()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir(mode=0o700)
    return folder


@pytest.fixture
def handler() -> Recorder:
    return Recorder()


@pytest.fixture
def served(home: Path, handler: Recorder) -> Iterator[QueryEndpoint]:
    endpoint = QueryEndpoint(
        socket_path(home), handler, workers=1, request_max_bytes=4096, timeout_s=2.0
    )
    endpoint.start()
    try:
        yield endpoint
    finally:
        handler.release.set()
        endpoint.stop()


def raw_exchange(path: Path, data: bytes, close_write: bool = True) -> dict[str, object]:
    """Send ``data`` as is and return the endpoint's JSON answer line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(30)
        conn.connect(str(path))
        conn.sendall(data)
        if close_write:
            conn.shutdown(socket.SHUT_WR)
        line = conn.makefile("rb").readline()
    answer: dict[str, object] = json.loads(line)
    return answer


def test_a_query_round_trips_and_the_socket_is_ours_alone(
    served: QueryEndpoint, handler: Recorder, home: Path
) -> None:
    assert ask(served.path, "SELECT 1", "csv") == b"ok:SELECT 1"
    assert handler.calls == [("SELECT 1", "csv")]
    info = served.path.stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.getuid()


def test_a_cross_site_post_is_refused_before_the_handler(
    served: QueryEndpoint, handler: Recorder
) -> None:
    """What a web page can send (a text/plain POST) is not JSON, so it never reaches SQL."""
    post = (
        b"POST /query HTTP/1.1\r\nHost: 127.0.0.1:8124\r\nOrigin: http://evil.example\r\n"
        b"Content-Type: text/plain\r\nContent-Length: 38\r\n\r\n"
        b"SELECT file('/proc/self/maps')"
    )
    answer = raw_exchange(served.path, post)
    assert answer["ok"] is False and answer["name"] == "BAD_REQUEST"
    assert "not JSON" in str(answer["message"])
    assert handler.calls == []


def test_a_request_over_the_size_cap_is_refused_unread(
    served: QueryEndpoint, handler: Recorder
) -> None:
    big = json.dumps({"sql": "SELECT '" + "x" * 10_000 + "'"}).encode()
    answer = raw_exchange(served.path, big)
    assert answer["name"] == "BAD_REQUEST" and "over 4096 bytes" in str(answer["message"])
    assert handler.calls == []


def test_a_client_that_never_finishes_its_request_is_dropped(
    served: QueryEndpoint, handler: Recorder
) -> None:
    answer = raw_exchange(served.path, b'{"sql": "SELECT 1"', close_write=False)
    assert answer["name"] == "TIMEOUT"
    assert handler.calls == []
    assert ask(served.path, "SELECT 2", "jsonl") == b"ok:SELECT 2"  # the worker is free again


def test_a_flood_of_connections_is_answered_busy_not_given_threads(
    served: QueryEndpoint, handler: Recorder
) -> None:
    handler.release.clear()  # the one worker stays in its query
    threads_before = threading.active_count()
    first = threading.Thread(target=lambda: ask(served.path, "SELECT 1", "jsonl"))
    first.start()
    assert handler.entered.acquire(timeout=30)
    held = []
    for _ in range(6):  # 2 wait for the busy worker; the rest are turned away at once
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(30)
        conn.connect(str(served.path))
        held.append(conn)
    outcomes = [json.loads(conn.makefile("rb").readline())["name"] for conn in held[2:]]
    assert outcomes == ["BUSY"] * 4
    assert threading.active_count() <= threads_before + 1  # only the test's own client thread
    handler.release.set()
    first.join(30)
    for conn in held:
        conn.close()


def test_the_client_refuses_a_socket_file_it_does_not_own(home: Path) -> None:
    fake = home / "query.sock"
    fake.write_text("not a socket")
    with pytest.raises(QueryServerError, match="not a query socket of yours"):
        ask(fake, "SELECT 1", "jsonl")


NOBODY_CONNECTS = """
import json, os, socket, sys
os.setgid({uid}); os.setuid({uid})
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    conn.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
print(json.loads(conn.makefile("rb").readline())["name"])
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a client as another user")
def test_another_user_is_refused_by_the_socket_mode_and_then_by_its_uid(
    served: QueryEndpoint, handler: Recorder, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # A folder every user may enter, holding a second name of the same socket (same inode,
    # same 0600 mode): only the socket's own permission stands in the way.
    open_dir = Path(tempfile.mkdtemp(prefix="qw-open-"))  # outside the 0700 pytest folders
    request.addfinalizer(lambda: shutil.rmtree(open_dir, ignore_errors=True))
    open_dir.chmod(0o755)
    if any(not parent.stat().st_mode & stat.S_IXOTH for parent in open_dir.parents):
        pytest.skip(f"other users cannot reach {open_dir}")
    alias = open_dir / "query.sock"
    try:
        os.link(served.path, alias)
    except OSError as exc:  # the temp folder is on another file system than pytest's
        pytest.skip(f"cannot link the socket into {open_dir}: {exc}")

    def as_nobody() -> str:
        done = subprocess.run(
            [sys.executable, "-c", NOBODY_CONNECTS.format(uid=NOBODY), str(alias)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert as_nobody() == "EACCES"
    os.chmod(served.path, 0o666)  # should the mode ever be loosened, the uid check remains
    assert as_nobody() == "FORBIDDEN"
    assert handler.calls == []
