"""ClickHouse's HTTP interface of the embedded store, read by clickhouse-connect and curl."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import clickhouse_connect
import pytest

from queuewatch.clickhouse.client import connect
from queuewatch.clickhouse.http_endpoint import ClickHouseHttpEndpoint
from queuewatch.clickhouse.migrations import migrate
from queuewatch.clickhouse.query import QueryService
from queuewatch.settings import QuerySettings

pytestmark = pytest.mark.integration

PASSWORD = "test-only-password"


@pytest.fixture
def endpoint(chdb_url: str) -> Iterator[ClickHouseHttpEndpoint]:
    """The HTTP interface on a free port over a migrated chdb folder."""
    admin = connect(chdb_url)
    migrate(admin, "queuewatch")
    service = QueryService(chdb_url, "queuewatch", QuerySettings(query_max_result_rows=10_000))
    served = ClickHouseHttpEndpoint(
        0, service.run_http, PASSWORD, workers=2, request_max_bytes=4096, timeout_s=5.0
    )
    served.start()
    try:
        yield served
    finally:
        served.stop()
        service.close()
        admin.close()


def curl(endpoint: ClickHouseHttpEndpoint, *args: str, path: str = "/") -> tuple[int, str]:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    out = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", *args, f"http://127.0.0.1:{endpoint.port}{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    body, _, status = out.rpartition("\n")
    return int(status), body


def test_clickhouse_connect_reads_typed_results(endpoint: ClickHouseHttpEndpoint) -> None:
    client = clickhouse_connect.get_client(
        host="127.0.0.1", port=endpoint.port, username="default", password=PASSWORD
    )
    rows = client.query("SELECT number, toString(number) AS s FROM numbers(3)").result_rows
    assert rows == [(0, "0"), (1, "1"), (2, "2")]
    assert ("crossing_windows",) in client.query("SHOW TABLES").result_rows


@pytest.mark.parametrize(
    ("args", "path", "expected"),
    [
        ((), "/?query=SELECT+1+AS+x+FORMAT+JSONEachRow", '{"x":1}'),
        (("-d", "SELECT 1, 'a' FORMAT CSV"), "/", '1,"a"'),
        (("-d", "SELECT 1, 'a'"), "/?default_format=TabSeparated", "1\ta"),
        (("-d", "FORMAT TSV"), "/?query=SELECT+2", "2"),
    ],
)
def test_curl_get_post_and_formats(
    endpoint: ClickHouseHttpEndpoint, args: tuple[str, ...], path: str, expected: str
) -> None:
    status, body = curl(endpoint, "-H", f"X-ClickHouse-Key: {PASSWORD}", *args, path=path)
    assert (status, body.strip()) == (200, expected)


def test_wrong_password_is_516(endpoint: ClickHouseHttpEndpoint) -> None:
    status, body = curl(endpoint, "-u", "default:wrong", "-d", "SELECT 1")
    assert status == 401
    assert body.startswith("Code: 516.") and "AUTHENTICATION_FAILED" in body


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM file('/etc/passwd')",
        "SELECT 1 INTO OUTFILE '/tmp/x'",
        "INSERT INTO crossing_windows SELECT * FROM crossing_windows",
        "SET max_result_rows = 0",
    ],
)
def test_writes_and_files_are_refused(endpoint: ClickHouseHttpEndpoint, sql: str) -> None:
    status, body = curl(endpoint, "-u", f"default:{PASSWORD}", "-d", sql)
    assert status == 403
    assert body.startswith("Code: 164.") and "query refused" in body


def test_a_setting_outside_the_allow_list_is_refused(endpoint: ClickHouseHttpEndpoint) -> None:
    status, body = curl(
        endpoint, "-u", f"default:{PASSWORD}", "-d", "SELECT 1", path="/?max_memory_usage=0"
    )
    assert status == 403 and "Cannot modify 'max_memory_usage'" in body


def test_the_row_limit_holds(endpoint: ClickHouseHttpEndpoint) -> None:
    status, body = curl(endpoint, "-u", f"default:{PASSWORD}", "-d", "SELECT * FROM numbers(50000)")
    assert status == 500 and "TOO_MANY_ROWS_OR_BYTES" in body


def test_foreign_host_and_big_body_are_refused(endpoint: ClickHouseHttpEndpoint) -> None:
    assert curl(endpoint, "-H", "Host: evil.example", path="/ping")[0] == 403
    status, _ = curl(endpoint, "-u", f"default:{PASSWORD}", "-d", "SELECT 1 -- " + "x" * 5000)
    assert status == 413
    assert curl(endpoint, path="/ping") == (200, "Ok.\n")
