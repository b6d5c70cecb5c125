"""The embedded engine's home: the folder lock turns a race for a folder into a short wait,
and the query socket's folder and requests are checked before anything is served."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from queuewatch.clickhouse import embedded, endpoint
from queuewatch.clickhouse.exceptions import EngineBusyError
from queuewatch.errors import ConfigurationError

SOCKET = "/run/qw/query.sock"


def test_owner_waits_for_a_short_lived_holder_then_takes_the_folder(tmp_path: Path) -> None:
    query_lock = embedded.acquire(tmp_path)  # a `queuewatch query` mid-statement
    taken: list[embedded.FolderLock] = []
    errors: list[BaseException] = []

    def start_owner() -> None:
        try:
            taken.append(embedded.acquire(tmp_path, SOCKET, wait_s=30))
        except BaseException as exc:  # reported below
            errors.append(exc)

    owner = threading.Thread(target=start_owner)
    owner.start()
    owner.join(0.5)
    assert owner.is_alive(), "the owner must wait while the folder is held"
    query_lock.release()
    owner.join(30)
    assert errors == []
    assert len(taken) == 1
    assert embedded.current_owner(tmp_path) == embedded.Owner(pid=os.getpid(), query_socket=SOCKET)
    taken[0].release()
    assert embedded.current_owner(tmp_path) is None


def test_a_second_owner_is_refused_at_once_naming_the_first(tmp_path: Path) -> None:
    first = embedded.acquire(tmp_path, SOCKET)
    try:
        with pytest.raises(EngineBusyError, match="already open in process"):
            embedded.acquire(tmp_path, "/elsewhere/query.sock", wait_s=30)
    finally:
        first.release()


def test_a_home_other_users_may_write_is_refused_for_the_socket(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    with pytest.raises(ConfigurationError, match=r"writable by other users.*chmod go-w"):
        endpoint.check_socket_folder(tmp_path)
    tmp_path.chmod(0o755)
    endpoint.check_socket_folder(tmp_path)  # group and others may read, not replace


def test_a_socket_path_over_the_unix_limit_says_to_shorten_the_home(tmp_path: Path) -> None:
    long_home = tmp_path / ("h" * 120)
    with pytest.raises(ConfigurationError, match="shorter folder"):
        endpoint.QueryEndpoint(
            endpoint.socket_path(long_home),
            lambda sql, fmt: b"",
            workers=1,
            request_max_bytes=100,
            timeout_s=1,
        )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"SELECT 1", "not JSON"),  # a browser's text/plain cross-site POST body
        (b"sql=SELECT+1", "not JSON"),
        (b'["SELECT 1"]', "JSON object"),
        (b'{"sql": 1}', "JSON object"),
        (b'{"sql": "SELECT 1", "format": "Native"}', "format must be one of"),
        (json.dumps({"sql": "SELECT 1" + " " * 200}).encode(), "over 100 bytes"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_requests_that_are_not_a_small_json_query_are_refused(body: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        endpoint.parse_request(body, max_bytes=100)


def test_a_json_query_request_is_read_with_its_format() -> None:
    assert endpoint.parse_request(b'{"sql": "SELECT 1", "format": "csv"}', 100) == (
        "SELECT 1",
        "csv",
    )
    assert endpoint.parse_request(b'{"sql": "SELECT 1"}', 100) == ("SELECT 1", "table")
