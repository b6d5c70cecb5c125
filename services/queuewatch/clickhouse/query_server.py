"""The embedded owner's query endpoint: `queuewatch query` from other processes lands here.

chdb opens a folder in one process only, so while ``queuewatch sink all`` owns the folder,
every other process asks it over HTTP on ``QUEUEWATCH_QUERY_ADDRESS`` (loopback only: the
endpoint has no authentication). The owner runs the SQL on its read-only client, so
ClickHouse's ``readonly=1`` refuses writes here exactly as it does everywhere else.

Protocol: ``POST /query`` with a JSON body ``{"sql": "...", "format": "table|jsonl|csv"}``;
200 with the rendered result, or 400 with ``{"code", "name", "message"}`` (ClickHouse's).
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from queuewatch.clickhouse.exceptions import ClickHouseError, QueryServerError
from queuewatch.clickhouse.query import CLICKHOUSE_FORMATS, OutputFormat, run_query
from queuewatch.errors import ConfigurationError

log = logging.getLogger(__name__)

#: Long enough for a heavy analytical query on a laptop; the caller may wait for a
#: batch write to finish first, since the engine serves one statement at a time.
ROUTED_QUERY_TIMEOUT_S = 600.0


def parse_loopback(address: str) -> tuple[str, int]:
    """``host:port`` of a loopback address, or ConfigurationError for anything else."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host not in {"127.0.0.1", "::1", "localhost"} or not port.isdigit():
        raise ConfigurationError(
            f"query address {address!r} must be 127.0.0.1:PORT (loopback): the endpoint has "
            "no authentication; fix QUEUEWATCH_QUERY_ADDRESS"
        )
    return host, int(port)


class QueryServer:
    """A tiny HTTP server answering read-only queries with one client, one at a time."""

    def __init__(self, address: str, client: Any) -> None:
        host, port = parse_loopback(address)
        self._client = client
        self._lock = threading.Lock()  # the read-only client is not thread-safe
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                server._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("query endpoint: " + format, *args)

        try:
            self._httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot listen for queries on {address}: {exc}; set QUEUEWATCH_QUERY_ADDRESS "
                "to a free loopback port"
            ) from exc
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="query-endpoint", daemon=True
        )

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and free the port."""
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        if request.path != "/query":
            self._reply(request, 404, b'{"message": "POST /query"}', "application/json")
            return
        try:
            length = int(request.headers.get("Content-Length", "0"))
            payload = json.loads(request.rfile.read(length))
            sql = str(payload["sql"])
            output = str(payload.get("format", "table"))
            if output not in CLICKHOUSE_FORMATS:
                raise ValueError(f"format must be one of {sorted(CLICKHOUSE_FORMATS)}")
        except (ValueError, KeyError, TypeError) as exc:
            body = json.dumps({"code": None, "name": None, "message": f"bad request: {exc}"})
            self._reply(request, 400, body.encode(), "application/json")
            return
        try:
            with self._lock:
                result = run_query(self._client, sql, output)  # type: ignore[arg-type]
        except ClickHouseError as exc:
            body = json.dumps({"code": exc.code, "name": exc.name, "message": exc.args[0]})
            self._reply(request, 400, body.encode(), "application/json")
            return
        self._reply(request, 200, result, "text/plain; charset=utf-8")

    @staticmethod
    def _reply(request: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str) -> None:
        request.send_response(status)
        request.send_header("Content-Type", ctype)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)


def routed_query(address: str, sql: str, output: OutputFormat) -> bytes:
    """Ask the owner of the embedded folder to run ``sql``; raise its ClickHouse error."""
    host, port = parse_loopback(address)
    url = f"http://{host}:{port}/query"
    data = json.dumps({"sql": sql, "format": output}).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=ROUTED_QUERY_TIMEOUT_S) as resp:
            return bytes(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            err = json.loads(exc.read())
        except ValueError:
            raise QueryServerError(f"the query endpoint {url} answered {exc.code}") from exc
        raise ClickHouseError(
            str(err.get("message")), err.get("code"), err.get("name"), retryable=False
        ) from exc
    except OSError as exc:
        raise QueryServerError(
            f"the process owning the embedded ClickHouse folder does not answer on {url} "
            f"({exc}); check that `queuewatch sink all` is healthy, or stop it and retry"
        ) from exc
