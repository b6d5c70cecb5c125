"""The dashboard in a real browser: Debian's headless Chromium against a running pipeline.

The pipeline is real: the simulator publishes a day of September-2022-shaped reports (moved
to the last 30 hours) to the broker, the aggregator and ``sink all`` write them to chdb, and
``queuewatch dashboard`` serves the page. Chromium loads it and runs its script; the test
reads the rendered DOM and checks every lane's figures against a ``queuewatch query`` of
``crossing_status`` written here, independently of the dashboard's own SQL.

A report whose note is an HTML payload shows that what sources send is shown as text, never
run. The same server is then asked what it must refuse: SQL in the lane parameters, a
foreign ``Host`` (DNS rebinding), a write method.

The screenshot is kept in ``$QUEUEWATCH_TEST_ARTIFACTS`` (default ``build/test-artifacts``).
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from queuewatch.platform.broker import free_port
from queuewatch.resources import REPO_ROOT
from queuewatch.settings import CommonSettings
from tests.integration.test_aggregator_harness import AggregatorProcess
from tests.integration.test_sinks_harness import (
    SinkEnv,
    SinkProcess,
    lag,
    new_env,
    publish,
    query_rows,
    report_message,
    wait_until,
)

pytestmark = pytest.mark.integration

SIMULATED = 2000
XSS_NOTE = '<img src=x onerror="document.body.dataset.pwned=1"><script>pwned()</script>'
XSS_LANE = ("ge-ru-zemo-larsi", "RU", "GE", "car")


def chromium() -> str:
    """Debian's chromium; CI installs it (.ci/run), so there a missing one is a failure."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def artifacts() -> Path:
    folder = Path(os.environ.get("QUEUEWATCH_TEST_ARTIFACTS", REPO_ROOT / "build/test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def browse(url: str, *, screenshot: Path | None = None, size: str = "1500,1000") -> str:
    """The DOM after the page's scripts ran (or a screenshot of it)."""
    args = [
        chromium(),
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={size}",
        # Virtual time does not advance while fetches are pending: the budget is spent only
        # once the page is idle, so the figures are in before the DOM is read. Below the
        # refresh interval (15 s), so the page is read after its first load.
        "--virtual-time-budget=10000",
    ]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    done = subprocess.run(
        [*args, url], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@dataclass
class Cell:
    text: str
    value: str | None
    title: str | None


class Page(HTMLParser):
    """The rendered page's table rows, health strip and markers, read from the DOM."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.body: dict[str, str | None] = {}
        self.lanes: dict[str, dict[str, Cell]] = {}
        self.tables: dict[str, list[dict[str, Cell]]] = {}
        self.health = ""
        self.error = ""
        self.images = 0
        self._table: str | None = None
        self._row: dict[str, Cell] | None = None
        self._lane: str | None = None
        self._cell: tuple[str, dict[str, str | None]] | None = None
        self._text: list[str] = []
        self._capture: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "img":
            self.images += 1
        elif tag == "table":
            self._table = a.get("id")
        elif tag == "tr" and self._table:
            self._row, self._lane = {}, a.get("data-lane")
        elif tag == "td" and self._row is not None and a.get("data-field"):
            self._cell, self._text = (a["data-field"] or "", a), []
        elif a.get("id") in ("health", "error"):
            self._capture, self._text = a["id"], []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._row is not None:
            field, a = self._cell
            self._row[field] = Cell(
                "".join(self._text).strip(), a.get("data-value"), a.get("title")
            )
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            if self._table == "lanes" and self._lane:
                self.lanes[self._lane] = self._row
            elif self._row:
                self.tables.setdefault(self._table, []).append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag in ("div", "p") and self._capture:
            setattr(self, self._capture, "".join(self._text).strip())
            self._capture = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None or self._capture:
            self._text.append(data)


def shown(value: Any) -> str:
    """How the page prints a figure: the number, or an en dash for none."""
    return "\u2013" if value is None else str(value)


def rounded(value: Any) -> int | None:
    # ClickHouse and Python both round halves to even for floats.
    return None if value is None else round(float(value))


@dataclass
class Running:
    env: SinkEnv
    url: str


def xss_report() -> tuple[bytes, bytes]:
    crossing, frm, to, cls = XSS_LANE
    at = int(time.time() * 1000) - 10 * 60_000
    return report_message(
        crossing, frm, to, at, "crowd", "<b>chat</b>", cls, wait_minutes=95, note=XSS_NOTE
    )


@pytest.fixture(scope="module")
def running(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    chromium()
    home = tmp_path_factory.mktemp("dashboard-home")
    group = f"agg-dash-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = new_env(
        bootstrap,
        home,
        QUEUEWATCH_AGGREGATOR_GROUP=group,
        QUEUEWATCH_DASHBOARD_PORT=str(port),
        QUEUEWATCH_DASHBOARD_HEALTH_INTERVAL_S="2",
    )
    start = (datetime.now(UTC) - timedelta(hours=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    simulated = subprocess.run(
        [
            *(sys.executable, "-m", "queuewatch", "simulate", "--count", str(SIMULATED)),
            *("--speed", "0", "--seed", "11", "--start", start),
        ],
        env=env.environ(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert simulated.returncode == 0, simulated.stderr
    publish(bootstrap, env.reports_topic, [xss_report()])
    settings = CommonSettings(
        kafka_bootstrap=bootstrap,
        reports_topic=env.reports_topic,
        dlq_topic=env.dlq_topic,
        windows_topic=env.windows_topic,
    )
    aggregator = AggregatorProcess(settings, home, group)
    aggregator.start()
    sinks = SinkProcess(env, home / "sink.log")
    page = SinkProcess(env, home / "dashboard.log", ["-m", "queuewatch", "dashboard"])
    try:
        sinks.wait_serving()

        def settled() -> bool:
            assert aggregator.alive(), aggregator.logs()
            return (
                lag(bootstrap, group, env.reports_topic) == 0
                and lag(bootstrap, env.raw_group, env.reports_topic) == 0
                and lag(bootstrap, env.window_group, env.windows_topic) == 0
            )

        wait_until(settled, 240, "the pipeline to take in every simulated report", sinks)
        wait_until(lambda: _answers(port), 60, "the dashboard to answer", page)
        yield Running(env, f"http://127.0.0.1:{port}/")
    finally:
        page.stop()
        aggregator.stop()
        if sinks.alive():
            sinks.stop()


def _answers(port: int) -> bool:
    try:
        status, _ = _get(port, "/api/health")
    except OSError:
        return False
    return status == 200


def _get(port: int, path: str, host: str | None = None, method: str = "GET") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True)
        conn.putheader("Host", host or f"127.0.0.1:{port}")
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_the_rendered_page_shows_every_lane_with_the_figures_of_crossing_status(
    running: Running,
) -> None:
    expected = query_rows(
        running.env,
        "SELECT crossing_id, from_country, to_country, traffic_class, status, wait_minutes, "
        "consensus_wait_minutes, queue_vehicles, consensus_queue_vehicles, wait_trend, "
        "reports_3h, sources_3h, toString(last_report_at) AS last_at, confidence "
        "FROM crossing_status",
    )
    page = Page(browse(running.url))
    shot = artifacts() / "dashboard.png"
    browse(running.url, screenshot=shot)

    assert page.body.get("data-ready") == "1", page.error
    assert len(expected) > 20  # ten crossings, several directions and classes each
    assert set(page.lanes) == {
        "|".join([r["crossing_id"], r["from_country"], r["to_country"], r["traffic_class"]])
        for r in expected
    }
    for r in expected:
        key = "|".join([r["crossing_id"], r["from_country"], r["to_country"], r["traffic_class"]])
        cells = page.lanes[key]
        wait = r["consensus_wait_minutes"]
        queue = r["consensus_queue_vehicles"]
        assert cells["wait_now"].text == shown(rounded(r["wait_minutes"] if wait is None else wait))
        assert cells["queue_now"].text == shown(
            rounded(r["queue_vehicles"] if queue is None else queue)
        )
        assert cells["status"].text == r["status"]
        assert cells["wait_trend"].value == r["wait_trend"]
        assert cells["reports_3h"].text == f"{shown(r['reports_3h'])} / {shown(r['sources_3h'])}"
        assert cells["last_report_at"].value == r["last_at"]
        assert cells["confidence"].text == r["confidence"]
    # The pipeline's health is there too, from `status`'s own checks.
    assert "pipeline healthy" in page.health or "UNHEALTHY" in page.health
    # Every letter on the dead-letter topic (a group that never committed lags by all of them).
    letters = lag(running.env.bootstrap, f"nobody-{running.env.suffix}", running.env.dlq_topic)
    assert letters > 0  # the simulator sends some invalid reports on purpose
    assert f"dead letters {letters}" in page.health
    assert shot.stat().st_size > 10_000


def test_the_detail_view_shows_a_lanes_windows_and_its_latest_raw_reports(
    running: Running,
) -> None:
    busiest = query_rows(
        running.env,
        "SELECT crossing_id, from_country, to_country, traffic_class, count() AS n "
        "FROM queue_reports FINAL GROUP BY crossing_id, from_country, to_country, "
        "traffic_class ORDER BY n DESC, crossing_id LIMIT 1",
    )[0]
    lane = [busiest[k] for k in ("crossing_id", "from_country", "to_country", "traffic_class")]
    where = (
        f"crossing_id = '{lane[0]}' AND from_country = '{lane[1]}' AND to_country = '{lane[2]}' "
        f"AND traffic_class = '{lane[3]}'"
    )
    reports = query_rows(
        running.env,
        f"SELECT toString(observed_at) AS at, source_name FROM queue_reports FINAL "
        f"WHERE {where} ORDER BY observed_at DESC, event_id LIMIT 50",
    )
    windows = query_rows(
        running.env,
        f"SELECT toString(window_start) AS at, reports FROM crossing_windows FINAL "
        f"WHERE {where} AND window_size = '1h' AND toMinute(window_start) = 0 "
        "ORDER BY window_start",
    )
    url = running.url + "#lane=" + quote("|".join(lane))
    page = Page(browse(url))
    browse(url, screenshot=artifacts() / "dashboard-detail.png")

    assert page.body.get("data-detail") == "|".join(lane), page.error
    shown_reports = page.tables["detail-reports"]
    assert [(c["observed_at"].text, c["source_name"].text) for c in shown_reports] == [
        (r["at"], r["source_name"]) for r in reports
    ]
    shown_windows = page.tables["detail-windows"]
    # The last 48 h of the lane's data: here all of the 30 simulated hours, one window per
    # hour that had a report.
    assert [(c["start_at"].text, c["reports"].text) for c in shown_windows] == [
        (w["at"], str(w["reports"])) for w in windows
    ]
    assert len(shown_windows) >= 5


def test_what_a_source_sends_is_shown_as_text_and_never_run(running: Running) -> None:
    url = running.url + "#lane=" + quote("|".join(XSS_LANE))
    page = Page(browse(url))
    assert page.body.get("data-detail") == "|".join(XSS_LANE), page.error
    [row] = page.tables["detail-reports"]
    assert row["note"].text == XSS_NOTE
    assert row["source_name"].text == "<b>chat</b>"
    assert page.images == 0  # the <img> of the note was never made an element
    assert "data-pwned" not in str(page.body)


def test_the_dashboard_refuses_sql_in_its_parameters_foreign_hosts_and_writes(
    running: Running,
) -> None:
    port = int(running.url.rsplit(":", 1)[1].strip("/"))
    injected = quote("ge-ru-verkhny-lars' OR 1=1 --")
    status, body = _get(port, f"/api/lane?crossing={injected}&from=RU&to=GE&class=car")
    assert (status, b"is not a crossing id" in body) == (400, True)
    status, body = _get(port, "/api/lane?crossing=ge-ru-verkhny-lars&from=RU&to=GE&class=x'")
    assert status == 400
    # DNS rebinding: a page of evil.example resolved to 127.0.0.1 sends its own Host.
    status, _ = _get(port, "/api/crossings", host=f"evil.example:{port}")
    assert status == 421
    status, _ = _get(port, "/api/crossings", method="POST")
    assert status == 501
    # Nothing outside the page's own files is served.
    for path in ("/static/../server.py", "/static/queries.py", "/etc/passwd"):
        status, _ = _get(port, path)
        assert status == 404, path
