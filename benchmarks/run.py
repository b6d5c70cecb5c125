"""Run the benchmarks: ``python -m benchmarks.run --full`` (make bench) or ``--smoke``.

One fresh Kafka broker per run, scenarios in order (each records its own figures or why it
failed or was skipped), one JSON file per run in ``benchmarks/results/``. ``--full`` also
renders the summary table and the latency plot of docs/performance.md from the result file.

``--smoke`` uses tiny inputs and one run of each scenario: it proves the harness works (CI
runs it through tests/integration/test_bench_smoke.py) and its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import machine
from benchmarks.context import FULL, SMOKE, Context
from benchmarks.dataset import WORK_DIR
from benchmarks.kafka_setup import running_broker
from queuewatch.resources import REPO_ROOT

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULT_SCHEMA = "queuewatch-bench/1"
log = logging.getLogger("benchmarks")


def scenarios() -> dict[str, Callable[[Context], dict[str, Any]]]:
    """Scenario name -> function, in the order they run (later ones read earlier results)."""
    from benchmarks import (
        scenario_end_to_end,
        scenario_limit,
        scenario_processors,
        scenario_query,
        scenario_sink,
    )

    return {
        "limit": scenario_limit.limit,
        "aggregator": scenario_processors.aggregator,
        "aggregator_dense": scenario_processors.aggregator_dense,
        "metrics_cost": scenario_processors.metrics_cost,
        "scale_out": scenario_processors.scale_out,
        "peer": scenario_processors.peer,
        "sink": scenario_sink.sink,
        "end_to_end": scenario_end_to_end.end_to_end,
        "query": scenario_query.query,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--full", action="store_true", help="the measured run (make bench)")
    mode.add_argument("--smoke", action="store_true", help="tiny inputs; proves the harness")
    parser.add_argument("--only", default="", help="comma-separated scenarios to run")
    parser.add_argument("--runs", type=int, default=0, help="repetitions (default 3 full, 1 smoke)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the input sizes")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder of result files")
    parser.add_argument(
        "--no-peer-install",
        action="store_true",
        help="do not build the peers' venvs; skip a peer unless its venv is built already",
    )
    parser.add_argument(
        "--peer-install", action="store_true", help="build the peers' venvs (smoke too)"
    )
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/ (full)")
    return parser.parse_args(argv)


def scaled(n: int, factor: float) -> int:
    """``n`` times ``factor``, at least 1."""
    return max(1, int(n * factor))


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios and write the result file; exit 1 if any scenario failed."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("kafka", "aiokafka", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    plan = FULL if args.full else SMOKE
    if args.runs:
        plan = replace(plan, runs=args.runs)
    if args.scale != 1.0:
        s = args.scale
        plan = replace(
            plan,
            limit_reports=scaled(plan.limit_reports, s),
            aggregator_reports=scaled(plan.aggregator_reports, s),
            dense_reports=scaled(plan.dense_reports, s),
            peer_reports=scaled(plan.peer_reports, s),
            query_reports=scaled(plan.query_reports, s),
            sink_reports=scaled(plan.sink_reports, s),
            sink_windows=scaled(plan.sink_windows, s),
        )
    if args.no_peer_install:
        plan = replace(plan, install_peer=False)
    if args.peer_install:
        plan = replace(plan, install_peer=True)
    chosen = scenarios()
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in chosen]
        if unknown:
            print(f"unknown scenario(s) {unknown}; choose from {list(chosen)}", file=sys.stderr)
            return 2
        chosen = {k: v for k, v in chosen.items() if k in wanted}

    started = datetime.now(UTC)
    result: dict[str, Any] = {
        "schema": RESULT_SCHEMA,
        "mode": plan.mode,
        "command": "python -m benchmarks.run "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "started_at": started.isoformat(timespec="seconds"),
        "machine": machine.describe(REPO_ROOT),
        "plan": asdict(plan),
        "scenarios": {},
    }
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"run-{plan.mode}-", dir=WORK_DIR))
    failed = False
    try:
        with running_broker(work / "kafka") as broker:
            ctx = Context(plan=plan, bootstrap=broker.bootstrap, work=work)
            for name, fn in chosen.items():
                log.info("scenario %s: starting (load %s)", name, machine.load_average())
                t0 = time.monotonic()
                entry: dict[str, Any] = {"load_average_before": machine.load_average()}
                try:
                    figures = fn(ctx)
                    entry["status"] = figures.pop("status", "ok")
                    entry.update(figures)
                    ctx.results[name] = figures
                except Exception as exc:  # one failing scenario must not hide the others
                    failed = True
                    entry["status"] = "failed"
                    entry["reason"] = f"{type(exc).__name__}: {exc}"
                    entry["traceback"] = traceback.format_exc().splitlines()[-12:]
                    log.error("scenario %s failed: %s", name, exc)
                entry["load_average_after"] = machine.load_average()
                entry["wall_s"] = round(time.monotonic() - t0, 1)
                result["scenarios"][name] = entry
                log.info("scenario %s: %s in %.0f s", name, entry["status"], entry["wall_s"])
    finally:
        result["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        result["machine"]["load_average_at_end"] = machine.load_average()
        args.out.mkdir(parents=True, exist_ok=True)
        stamp = started.strftime("%Y%m%dT%H%M%SZ")
        path = args.out / f"{stamp}-{plan.mode}.json"
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"result: {path}")
        if not failed:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs of the failed run kept in {work}")
    if plan.mode == "full" and not args.no_docs:
        from benchmarks.report import render

        render(path)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
