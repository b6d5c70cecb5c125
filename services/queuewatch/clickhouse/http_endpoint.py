"""ClickHouse's HTTP interface, read-only, for standard clients of the embedded store.

The process that owns the chdb folder answers here so clickhouse-connect, curl or Grafana's
ClickHouse plugin (HTTP mode) can read it as they would read a server. Every query goes
through the same :class:`~queuewatch.clickhouse.query.QueryService` as `queuewatch query`
(the guard's allow-list, ``readonly=1`` and the QUEUEWATCH_QUERY_* limits); this module only
speaks HTTP:

- bound to 127.0.0.1, and a request whose ``Host`` is not a loopback name is refused (DNS
  rebinding: a web page whose name resolves to 127.0.0.1 sends its own ``Host``); no CORS
  header is ever sent, so a browser page cannot read an answer;
- a password (``X-ClickHouse-User``/``X-ClickHouse-Key``, basic auth, or ``user``/``password``
  URL parameters), compared in constant time; a wrong one is 401 with code 516
  AUTHENTICATION_FAILED, as ClickHouse answers;
- ``GET /?query=``, ``POST /`` with the query in the body, or ``?query=`` + body; ``FORMAT``
  in the query, else ``default_format``, else TabSeparated; URL parameters that are not
  transport ones are settings: those of :data:`IGNORED_SETTINGS` are accepted and have no
  effect (our limits hold), any other is refused as ClickHouse refuses a setting change under
  readonly (164 READONLY);
- bounded: a body over QUEUEWATCH_QUERY_REQUEST_MAX_BYTES is 413, a socket read stalls at most
  QUEUEWATCH_QUERY_SOCKET_TIMEOUT_S, and a fixed pool of threads serves requests; a connection
  that finds the pool and its short queue full is answered 503 at once.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import http.server
import json
import logging
import os
import queue
import secrets
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from queuewatch.clickhouse.exceptions import ClickHouseError, QueryRefusedError, QueryServerError
from queuewatch.errors import ConfigurationError, QueuewatchError
from queuewatch.settings import read_secret_file

log = logging.getLogger(__name__)

#: (sql, default format) -> (body, format of the body): QueryService.run_http.
Handler = Callable[[str, str], tuple[bytes, str]]

DEFAULT_FORMAT = "TabSeparated"
#: URL parameters of the HTTP transport itself, never settings.
TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "user",
        "password",
        "database",
        "default_format",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "wait_end_of_query",
        "buffer_size",
        "quota_key",
        "stacktrace",
        "client_protocol_version",
        "role",
    }
)
#: Settings clients send on their own (clickhouse-connect, Grafana) that change nothing a
#: reader could abuse: accepted and not applied, so the guarded session's limits stay.
IGNORED_SETTINGS = frozenset(
    {
        "max_result_rows",
        "max_result_bytes",
        "max_execution_time",
        "result_overflow_mode",
        "readonly",
        "enable_http_compression",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
        "date_time_input_format",
        "date_time_output_format",
        "use_client_time_zone",
        "session_timezone",
        "cast_string_to_dynamic_use_inference",
        "log_comment",
        "output_format_json_quote_64bit_integers",
        "output_format_json_quote_denormals",
        "output_format_write_statistics",
        "output_format_pretty_color",
        "output_format_arrow_string_as_string",
    }
)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
BACKLOG_PER_WORKER = 2

AUTHENTICATION_FAILED = (516, "AUTHENTICATION_FAILED")
READONLY = (164, "READONLY")
UNKNOWN_FORMAT = (73, "UNKNOWN_FORMAT")
TOO_LARGE = (1001, "BAD_ARGUMENTS")
BUSY = (202, "TOO_MANY_SIMULTANEOUS_QUERIES")


PASSWORD_NAME = "query-http.password"


def load_password(home: Path, password_file: Path | None) -> str:
    """The HTTP interface's password: from ``password_file``, else generated once into home.

    The generated file is created 0600 in one step (``O_EXCL``), so no other user ever reads
    it; its content is never logged.
    """
    if password_file is not None:
        return read_secret_file(password_file, "QUERY_HTTP")
    path = home.expanduser() / PASSWORD_NAME
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_urlsafe(24) + "\n")
    if path.stat().st_mode & 0o077:
        raise ConfigurationError(
            f"{path} (the HTTP interface's password) is readable by other users; run "
            f"`chmod 600 {path}`"
        )
    return read_secret_file(path, "QUERY_HTTP")


class HttpError(Exception):
    """An answer in ClickHouse's error shape: HTTP status, code, name, message."""

    def __init__(self, status: int, code: tuple[int, str], message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class _Server(socketserver.TCPServer):
    """A TCP server whose requests are served by a fixed pool of threads, never more."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, address: tuple[str, int], owner: ClickHouseHttpEndpoint) -> None:
        self.owner = owner
        self.pending: queue.Queue[tuple[socket.socket, Any] | None] = queue.Queue(
            maxsize=owner.workers * BACKLOG_PER_WORKER
        )
        super().__init__(address, _RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            self.pending.put_nowait((request, client_address))
        except queue.Full:
            with contextlib.suppress(OSError):
                request.sendall(
                    _error_bytes(503, BUSY, "the HTTP endpoint is busy; retry", keep=False)
                )
            self.shutdown_request(request)

    def work(self) -> None:
        while True:
            item = self.pending.get()
            if item is None:
                return
            request, address = item
            try:
                self.finish_request(request, address)
            except Exception:  # a worker must survive any one request
                log.debug("http endpoint: a request failed", exc_info=True)
            finally:
                self.shutdown_request(request)


class ClickHouseHttpEndpoint:
    """Serves ``handler`` over ClickHouse's HTTP interface on 127.0.0.1:``port``."""

    def __init__(
        self,
        port: int,
        handler: Handler,
        password: str,
        *,
        user: str = "default",
        workers: int,
        request_max_bytes: int,
        timeout_s: float,
        version: str = "",
    ) -> None:
        self.handler = handler
        self.user = user
        self._password = password.encode()
        self.workers = max(1, workers)
        self.request_max_bytes = request_max_bytes
        self.timeout_s = timeout_s
        self.version = version
        self._server = _Server(("127.0.0.1", port), self)
        self.port = int(self._server.server_address[1])
        self._threads = [
            threading.Thread(target=self._server.work, name=f"ch-http-{n}", daemon=True)
            for n in range(self.workers)
        ]
        self._threads.append(
            threading.Thread(target=self._server.serve_forever, name="ch-http-accept", daemon=True)
        )

    def start(self) -> None:
        """Accept and serve in background threads."""
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop accepting, let the workers finish their request, close the port."""
        self._server.shutdown()
        for _ in range(self.workers):
            with contextlib.suppress(queue.Full):
                self._server.pending.put_nowait(None)
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 1)
        self._server.server_close()

    def authenticated(self, user: str | None, password: str | None) -> bool:
        """True when ``user`` (or none) and ``password`` are ours, compared in constant time."""
        user_ok = user in (None, "", self.user)
        return user_ok & hmac.compare_digest((password or "").encode(), self._password)


class _RequestHandler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "queuewatch"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.owner.timeout_s)  # a stalled client lets go

    def log_message(self, format: str, *args: Any) -> None:  # base signature
        log.debug("http endpoint: " + format, *args)  # never the query string: it may hold a key

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("http endpoint: %s %s", self.command, code)

    def do_GET(self) -> None:  # http.server's naming
        self._serve(body=b"")

    def do_POST(self) -> None:
        try:
            body = self._read_body()
        except HttpError as exc:
            self._send_error(exc, keep=False)
            return
        self._serve(body)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise HttpError(411, TOO_LARGE, "send the query with a Content-Length, not chunked")
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.server.owner.request_max_bytes:
            raise HttpError(
                413,
                TOO_LARGE,
                f"the request body is over {self.server.owner.request_max_bytes} bytes "
                "(QUEUEWATCH_QUERY_REQUEST_MAX_BYTES)",
            )
        return self.rfile.read(length)

    def _serve(self, body: bytes) -> None:
        owner = self.server.owner
        query_id = ""
        try:
            self._check_host()
            url = urlsplit(self.path)
            params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            if url.path in ("/ping", "/ping/"):
                self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
                return
            if url.path not in ("/", "/query"):
                raise HttpError(404, (0, "NOT_FOUND"), f"no handler for {url.path}; use / or /ping")
            self._authenticate(params)
            query_id = params.get("query_id") or str(uuid.uuid4())
            sql = self._query_text(params, body)
            if not sql.strip():
                if self.command == "GET":  # ClickHouse's answer to a bare GET /
                    self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
                    return
                raise HttpError(400, (62, "SYNTAX_ERROR"), "empty query; send a SELECT")
            _check_settings(params)
            default = self.headers.get("X-ClickHouse-Format") or params.get(
                "default_format", DEFAULT_FORMAT
            )
            started = time.monotonic_ns()
            result, fmt = owner.handler(sql, default)
        except HttpError as exc:
            self._send_error(exc, query_id=query_id)
            return
        except QueryRefusedError as exc:
            self._send_error(HttpError(403, READONLY, str(exc)), query_id=query_id)
            return
        except ClickHouseError as exc:
            code = (exc.code or 1002, exc.name or "UNKNOWN_EXCEPTION")
            self._send_error(HttpError(500, code, str(exc.args[0])), query_id=query_id)
            return
        except QueryServerError as exc:
            self._send_error(HttpError(503, BUSY, str(exc)), query_id=query_id)
            return
        except QueuewatchError as exc:
            self._send_error(HttpError(500, (1002, "UNKNOWN_EXCEPTION"), str(exc)), query_id)
            return
        summary = {
            "read_rows": "0",
            "read_bytes": "0",
            "written_rows": "0",
            "written_bytes": "0",
            "result_bytes": str(len(result)),
            "elapsed_ns": str(time.monotonic_ns() - started),
        }
        self._send(
            200,
            result,
            {
                "Content-Type": _content_type(fmt),
                "X-ClickHouse-Format": fmt,
                "X-ClickHouse-Query-Id": query_id,
                "X-ClickHouse-Timezone": "UTC",
                "X-ClickHouse-Summary": json.dumps(summary, separators=(",", ":")),
            },
        )

    def _check_host(self) -> None:
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name not in LOOPBACK_HOSTS:
            raise HttpError(
                403,
                (0, "FORBIDDEN"),
                f"the Host {host or '(none)'} is not this machine's loopback; connect to "
                "127.0.0.1 or localhost",
            )

    def _authenticate(self, params: dict[str, str]) -> None:
        user = self.headers.get("X-ClickHouse-User") or params.get("user")
        password = self.headers.get("X-ClickHouse-Key") or params.get("password")
        basic = self.headers.get("Authorization", "")
        if basic.lower().startswith("basic "):
            with contextlib.suppress(ValueError):
                decoded = base64.b64decode(basic[6:], validate=True).decode()
                user, _, password = decoded.partition(":")
        if not self.server.owner.authenticated(user, password):
            raise HttpError(
                401,
                AUTHENTICATION_FAILED,
                f"{user or 'default'}: Authentication failed: password is incorrect, or there "
                "is no user with such name; the password is in the file named by "
                "QUEUEWATCH_QUERY_HTTP_PASSWORD_FILE (default: query-http.password in "
                "QUEUEWATCH_HOME)",
            )

    def _query_text(self, params: dict[str, str], body: bytes) -> str:
        try:
            text = body.decode()
        except UnicodeDecodeError:
            raise HttpError(400, (62, "SYNTAX_ERROR"), "the body is not UTF-8 text") from None
        if "query" in params:
            return f"{params['query']}\n{text}" if text else params["query"]
        return text

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, exc: HttpError, query_id: str = "", *, keep: bool = True) -> None:
        code, name = exc.code
        headers = {
            "Content-Type": "text/plain; charset=UTF-8",
            "X-ClickHouse-Exception-Code": str(code),
        }
        if query_id:
            headers["X-ClickHouse-Query-Id"] = query_id
        if not keep:
            headers["Connection"] = "close"
            self.close_connection = True
        self._send(exc.status, _error_text(code, name, str(exc)), headers)


def _check_settings(params: dict[str, str]) -> None:
    for name in params:
        if name in TRANSPORT_PARAMS or name.startswith("param_"):
            continue
        if name in IGNORED_SETTINGS or name.startswith("output_format_"):
            continue
        raise HttpError(
            403,
            READONLY,
            f"Cannot modify '{name}' setting in readonly mode: this endpoint runs every query "
            "with the limits of QUEUEWATCH_QUERY_* of the process that owns the folder",
        )


def _error_text(code: int, name: str, message: str) -> bytes:
    return f"Code: {code}. DB::Exception: {message}. ({name})\n".encode()


def _error_bytes(status: int, code: tuple[int, str], message: str, *, keep: bool) -> bytes:
    body = _error_text(code[0], code[1], message)
    head = (
        f"HTTP/1.1 {status} Error\r\nContent-Type: text/plain; charset=UTF-8\r\n"
        f"X-ClickHouse-Exception-Code: {code[0]}\r\nContent-Length: {len(body)}\r\n"
        f"{'' if keep else 'Connection: close' + chr(13) + chr(10)}\r\n"
    )
    return head.encode() + body


def _content_type(fmt: str) -> str:
    if fmt.startswith("JSON"):
        return "application/json; charset=UTF-8"
    if fmt.startswith(("CSV", "TSV", "TabSeparated", "Pretty", "Values")):
        return "text/plain; charset=UTF-8"
    return "application/octet-stream"
