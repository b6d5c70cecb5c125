"""``queuewatch dashboard``: one page on 127.0.0.1 with every lane's wait, trend and health.

Why a stdlib HTTP server and a hand-written page: the page is one table, one chart and a
health strip, refreshed every few seconds. A web framework or a JS bundle would add more
code than it saves, and everything the browser loads is served from this package (no CDN),
so the dashboard works on a machine with no internet access.

What it guards against, since a local web server is reachable from every page the user's
browser opens:

- only GET and HEAD; the page never sends SQL, it asks for named figures
  (``dashboard/queries.py``), read through the guarded read-only path of ``queuewatch query``;
- the ``Host`` header must name this server (a loopback name or the configured address with
  its port, or one of ``QUEUEWATCH_DASHBOARD_ALLOWED_HOSTS``), so a hostile page cannot read
  it through DNS rebinding;
- no CORS headers, so other origins cannot read the answers; a strict
  Content-Security-Policy, ``nosniff`` and ``frame-ancestors 'none'`` on every answer;
- at most ``QUEUEWATCH_DASHBOARD_CONCURRENCY`` requests at once, others get 503 at once.

The pipeline's health is what ``queuewatch status`` computes. It asks Kafka and ClickHouse,
which takes a second or more, so one thread refreshes it every
``QUEUEWATCH_DASHBOARD_HEALTH_INTERVAL_S`` and pages read the last answer.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from queuewatch.dashboard import queries
from queuewatch.errors import QueuewatchError
from queuewatch.settings import CommonSettings, DashboardSettings, QuerySettings

log = logging.getLogger(__name__)

#: The files the page loads, by URL path: nothing else under /static is served.
STATIC: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/static/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
LOOPBACK_NAMES: Final = frozenset({"127.0.0.1", "localhost", "[::1]"})


@dataclass
class HealthCache:
    """The last pipeline health (``status``'s report), refreshed by one background thread."""

    settings: CommonSettings
    interval_s: float
    report: dict[str, Any] = field(default_factory=lambda: {"checked_at": None})
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        """Refresh now and then every ``interval_s`` until :meth:`stop`."""
        threading.Thread(target=self._loop, name="dashboard-health", daemon=True).start()

    def stop(self) -> None:
        """End the refresh loop."""
        self._stop.set()

    def current(self) -> dict[str, Any]:
        """The last report, with its age in seconds."""
        with self._lock:
            report = dict(self.report)
        checked = report.get("checked_at")
        report["age_s"] = None if checked is None else round(time.time() - checked, 1)
        return report

    def refresh(self) -> None:
        """Ask Kafka and ClickHouse once (what ``queuewatch status`` does)."""
        from queuewatch.platform.status import collect

        try:
            full = collect(self.settings, query_timeout_s=10.0).to_json()
            report = {
                key: full.get(key)
                for key in (
                    "healthy",
                    "problems",
                    "stalled",
                    "broker_reachable",
                    "clickhouse_reachable",
                    "row_counts",
                    "dead_letters",
                )
            }
            report["groups"] = [
                {k: g[k] for k in ("group", "topic", "lag", "members", "state")}
                for g in full.get("groups", [])
            ]
        except Exception as exc:  # the page shows it; the loop must keep going
            log.warning("pipeline health not read: %s", exc)
            report = {"healthy": False, "problems": [f"health not read: {exc}"]}
        report["checked_at"] = time.time()
        with self._lock:
            self.report = report

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.interval_s)


class DashboardServer(ThreadingHTTPServer):
    """The HTTP server with what its handlers need: settings, the query runner, health."""

    daemon_threads = True

    def __init__(
        self,
        common: CommonSettings,
        settings: DashboardSettings,
        query_settings: QuerySettings,
        health: HealthCache,
    ) -> None:
        self.common = common
        self.settings = settings
        self.query_settings = query_settings
        self.health = health
        self.slots = threading.BoundedSemaphore(max(1, settings.dashboard_concurrency))
        super().__init__((settings.dashboard_address, settings.dashboard_port), DashboardHandler)
        port = self.server_address[1]
        extra = {h.strip() for h in settings.dashboard_allowed_hosts.split(",") if h.strip()}
        self.allowed_hosts = (
            {f"{name}:{port}" for name in LOOPBACK_NAMES}
            | {f"{settings.dashboard_address}:{port}"}
            | extra
        )

    def run_query(self, sql: str) -> bytes:
        """One guarded read-only query, answered as JSONEachRow."""
        from queuewatch.clickhouse.query import query_projections

        return query_projections(
            self.common.resolved_clickhouse_url,
            self.common.clickhouse_database,
            sql,
            "jsonl",
            self.query_settings,
        )


class DashboardHandler(BaseHTTPRequestHandler):
    """Serves the page, its two static files and the JSON it reads."""

    server: DashboardServer
    server_version = "queuewatch-dashboard"
    sys_version = ""
    #: Seconds a connection may take to send its request: a client that opens connections
    #: and sends nothing cannot hold threads for ever.
    timeout = 10

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _serve(self, head: bool) -> None:
        host = self.headers.get("Host", "")
        if host not in self.server.allowed_hosts:
            self._json(HTTPStatus.MISDIRECTED_REQUEST, {"error": "unknown Host"}, head)
            return
        if not self.server.slots.acquire(blocking=False):
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "busy, retry"}, head)
            return
        try:
            self._route(head)
        finally:
            self.server.slots.release()

    def _route(self, head: bool) -> None:
        url = urlsplit(self.path)
        if url.path in STATIC:
            name, content_type = STATIC[url.path]
            body = resources.files("queuewatch.dashboard").joinpath("static", name).read_bytes()
            if name == "index.html":
                refresh = f"{self.server.settings.dashboard_refresh_s:g}"
                body = body.replace(b"{{refresh_s}}", refresh.encode())
            self._send(HTTPStatus.OK, body, content_type, head)
            return
        try:
            if url.path == "/api/crossings":
                lanes = queries.crossings(self.server.run_query)
                self._json(HTTPStatus.OK, {"generated_at": time.time(), "lanes": lanes}, head)
            elif url.path == "/api/lane":
                params = parse_qs(url.query)

                def one(name: str) -> str:
                    return (params.get(name) or [""])[0]

                lane = queries.Lane.parse(one("crossing"), one("from"), one("to"), one("class"))
                self._json(HTTPStatus.OK, queries.detail(self.server.run_query, lane), head)
            elif url.path == "/api/health":
                self._json(HTTPStatus.OK, self.server.health.current(), head)
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": "no such page"}, head)
        except queries.LaneError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)}, head)
        except QueuewatchError as exc:
            # ClickHouse not there yet, or busy: the page says so and retries.
            self._json(HTTPStatus.BAD_GATEWAY, {"error": str(exc)}, head)

    def _json(self, status: HTTPStatus, data: Any, head: bool) -> None:
        body = json.dumps(data, default=str).encode()
        self._send(status, body, "application/json", head)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)


def serve(
    common: CommonSettings, settings: DashboardSettings, query_settings: QuerySettings
) -> None:
    """Serve the dashboard until SIGTERM or SIGINT."""
    import signal

    if settings.dashboard_port <= 0:
        raise QueuewatchError(
            "QUEUEWATCH_DASHBOARD_PORT is 0 (off); set it to a free port to serve the dashboard"
        )
    health = HealthCache(common, settings.dashboard_health_interval_s)
    try:
        server = DashboardServer(common, settings, query_settings, health)
    except OSError as exc:
        raise QueuewatchError(
            f"the dashboard cannot listen on {settings.dashboard_address}:"
            f"{settings.dashboard_port} ({exc.strerror}); set QUEUEWATCH_DASHBOARD_PORT to a "
            "free port"
        ) from exc

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    health.start()
    host, port = str(server.server_address[0]), int(server.server_address[1])
    log.info("dashboard on http://%s:%d/", host, port)
    print(f"queuewatch dashboard on http://{host}:{port}/", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        health.stop()
        server.server_close()
