"""Dashboard load time on the query scenario's big store (10 million raw reports in --full).

Two figures, on the folder the query scenario filled (this process owns it):

* the page's data: the statements of ``dashboard/queries.py`` through the guarded read-only
  reader (the dashboard's path without the owner's socket hop), timed like the consumer
  queries: ``/api/crossings`` (every lane and its 24 h line) and ``/api/lane`` (one lane's
  windows and latest raw reports);
* the page in a browser: the real dashboard server, in this process, read by Debian's
  headless Chromium until the script has rendered the table (``--dump-dom`` with a virtual
  time budget, which waits for pending fetches). That wall time includes Chromium's own start
  (about 1 s here), so it is what a person opening the page waits at most. Skipped when
  chromium is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from typing import Any

from benchmarks.stats import percentile

LANE = ("q-x0042", "RU", "KZ", "car")


def _timed(call: Any, repeats: int) -> dict[str, Any]:
    call()  # warm-up: caches, marks
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - t0)
    return {
        "p50_s": round(percentile(seconds, 0.5) or 0.0, 4),
        "min_s": round(min(seconds), 4),
        "max_s": round(max(seconds), 4),
        "repeats": len(seconds),
    }


def dashboard_load(url: str, db: str, repeats: int) -> dict[str, Any]:
    """Time the dashboard's data and, where Chromium is, the page itself."""
    from queuewatch.clickhouse.query import GuardedReader, limits_from, readonly_client
    from queuewatch.dashboard import queries
    from queuewatch.settings import QuerySettings

    limits = limits_from(QuerySettings())
    reader = GuardedReader(readonly_client(url, db, limits), db, limits)
    lock = threading.Lock()  # one client, so one query at a time (as one reader of the pool)

    def run(sql: str) -> bytes:
        with lock:
            return reader.run(sql, "jsonl")

    lane = queries.Lane(*LANE)
    try:
        lanes = queries.crossings(run)
        detail = queries.detail(run, lane)
        out: dict[str, Any] = {
            "lanes": len(lanes),
            "sparkline_points": sum(len(row["sparkline"]) for row in lanes),
            "detail_windows": len(detail["windows"]),
            "detail_reports": len(detail["reports"]),
            "api_crossings": _timed(lambda: queries.crossings(run), repeats),
            "api_lane": _timed(lambda: queries.detail(run, lane), repeats),
        }
        out["browser"] = _browser(run, repeats)
    finally:
        reader.close()
    return out


def _browser(run: Any, repeats: int) -> dict[str, Any]:
    chromium = shutil.which("chromium")
    if chromium is None:
        return {"status": "skipped", "reason": "chromium is not installed"}
    from queuewatch.dashboard.server import DashboardServer, HealthCache
    from queuewatch.platform.broker import free_port
    from queuewatch.settings import CommonSettings, DashboardSettings, QuerySettings

    settings = DashboardSettings(dashboard_port=free_port())
    health = HealthCache(CommonSettings(), interval_s=3600)  # not started: health not timed
    server = DashboardServer(CommonSettings(), settings, QuerySettings(), health)
    server.run_query = run  # type: ignore[method-assign]  # this process owns the folder
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page = f"http://127.0.0.1:{settings.dashboard_port}/"
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu"]
    # A virtual time budget below the page's refresh interval (15 s): the fetches of the first
    # load are waited for (virtual time stands still while they are pending), and the budget
    # is then skipped through at once, before a refresh would load everything again.
    args += ["--virtual-time-budget=5000", "--dump-dom", page]

    def load() -> None:
        done = subprocess.run(args, capture_output=True, text=True, timeout=300)
        if 'data-ready="1"' not in done.stdout:
            raise RuntimeError(f"the page did not render: {done.stderr[-500:]}")

    try:
        timing = _timed(load, repeats)
        t0 = time.perf_counter()
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", "about:blank"],
            capture_output=True,
            timeout=120,
        )
        timing["chromium_start_s"] = round(time.perf_counter() - t0, 3)
        return timing
    finally:
        server.shutdown()
        server.server_close()
