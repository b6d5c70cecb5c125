"""Turns a result file into the summary of docs/performance.md and its latency plot.

``python -m benchmarks.report benchmarks/results/<file>.json`` (``--full`` runs it itself).
Only the part between the ``results:begin`` and ``results:end`` markers of
docs/performance.md is rewritten; the method and the discussion around it are prose kept by
hand. The plot is docs/performance-latency.png (matplotlib, Agg backend).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from queuewatch.resources import REPO_ROOT

DOC = REPO_ROOT / "docs" / "performance.md"
PLOT = REPO_ROOT / "docs" / "performance-latency.png"
BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


def _ok(entry: dict[str, Any] | None) -> bool:
    return bool(entry) and entry.get("status") == "ok"  # type: ignore[union-attr]


#: Each peer's short name and the version its requirements pin, for the table.
PEER_NAMES = {"quix": ("Quix", "Quix Streams 3.28"), "bytewax": ("Bytewax", "Bytewax 0.21")}


def _peers(peer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Name -> entry; a result file from before the Bytewax peer held only Quix's figures."""
    if "peers" in peer:
        return dict(peer["peers"])
    return {
        "quix": {
            "status": "ok",
            "median": peer["peer"]["median"],
            "ratio_ours_to_peer": peer["ratio_ours_to_peer"],
            "equality": peer["equality"],
        }
    }


def _peer_rows(peer: dict[str, Any]) -> list[str]:
    """Ours and every peer side by side: throughput, ratio, start-up, equality of windows."""
    ds = peer["dataset"]
    ours = peer["ours"]["median"]
    peers = _peers(peer)
    output = peer["ours"].get("output")
    lines = [
        f"| peer ({ds['reports']:,} reports, {ds['crossings']} crossings) | "
        f"queuewatch aggregator{f', output {output}' if output else ''} | "
        f"{_fmt(ours['events_per_s'])} events/s |"
    ]
    measured = {name: entry for name, entry in peers.items() if entry.get("status") == "ok"}
    for name, entry in peers.items():
        title = PEER_NAMES.get(name, (name, name))[1]
        if name not in measured:
            lines.append(f"| peer | {title} | not measured: {entry.get('reason', '')} |")
            continue
        lines.append(
            f"| peer | {title} | {_fmt(entry['median']['events_per_s'])} events/s "
            f"(ours is {_fmt(entry['ratio_ours_to_peer'], 2)}x) |"
        )
    startups = " / ".join(_fmt(e["median"].get("startup_s"), 1) + " s" for e in measured.values())
    names = " / ".join(PEER_NAMES.get(n, (n, n))[0] for n in measured)
    lines.append(
        f"| peer | start-up, ours / {names} | {_fmt(ours['startup_s'], 1)} s / {startups} |"
    )
    for name, entry in measured.items():
        eq = entry["equality"]
        late = eq.get("beyond_grace_windows")
        tolerated = (
            f"; {late} windows holding a report later than the grace checked on their count"
            if late
            else ""
        )
        lines.append(
            f"| peer | closed windows equal, {PEER_NAMES.get(name, (name, name))[1]} | "
            f"{'yes' if eq.get('equal') else 'NO'}: {eq.get('compared')} compared, "
            f"{eq.get('mismatched')} differ, {eq.get('missing_in_peer')} missing in peer, "
            f"{eq.get('missing_in_ours')} missing in ours{tolerated} |"
        )
    return lines


def summary(result: dict[str, Any], result_path: str) -> str:
    """The markdown between the markers."""
    m = result["machine"]
    sc = result["scenarios"]
    lines = [
        f"Measured {result['started_at']} to {result['finished_at']} with "
        f"`{result['command']}` (commit {m['git_commit']}); raw figures in "
        f"[`{result_path}`](../{result_path}).",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"Linux {m['kernel']}, Python {m['versions']['python']}. Load average (1/5/15 min) "
        f"{m['load_average_at_start']} at the start, {m.get('load_average_at_end')} at the end.",
        "",
        "| Scenario | Figure | Value |",
        "|---|---|---|",
    ]
    limit = sc.get("limit")
    if _ok(limit):
        assert limit is not None
        for client, data in limit["clients"].items():
            lines.append(
                f"| limit ({limit['reports']:,} reports) | consume + decode, {client} | "
                f"{_fmt(data['median']['events_per_s'])} events/s |"
            )
        lines.append(
            f"| limit | decode only (no Kafka) | {_fmt(limit['decode_only_events_per_s'])} "
            "events/s |"
        )
        if "faust_agent" in limit:
            lines.append(
                f"| limit ({limit['faust_agent'].get('reports', limit['reports']):,} reports) | "
                "faust-streaming agent that only decodes (take_events 5000) | "
                f"{_fmt(limit['faust_agent']['median']['events_per_s'])} events/s |"
            )
    limit_rate = limit.get("limit_events_per_s") if _ok(limit) and limit else None
    for name, shape in (("aggregator", "sparse"), ("aggregator_dense", "dense")):
        agg = sc.get(name)
        if not _ok(agg):
            continue
        assert agg is not None
        med = agg["median"]
        ds = agg["dataset"]
        # Result files before aggregator v2 hold only output windows, as "median".
        outputs = (
            [("contributions", med), ("windows", agg["windows_median"])]
            if "windows_median" in agg
            else [("windows", med)]
        )
        for output, m in outputs:
            lines += [
                f"| aggregator, 1 worker, {shape} ({ds['reports']:,} reports, "
                f"{ds['crossings']:,} crossings, {ds['span_hours']} h), output {output} | "
                "throughput until the last output message | "
                f"{_fmt(m['events_per_s'])} events/s "
                f"({_fmt(m['events_per_s'] / limit_rate * 100 if limit_rate else 0, 2)} % of "
                f"the limit); {_fmt(m['output_messages_per_report'], 2)} output messages, "
                f"{_fmt(m.get('changelog_bytes_per_report'))} changelog bytes and "
                f"{_fmt(m.get('cpu_us_per_report'))} µs of CPU per report |",
                f"| aggregator, {shape}, output {output} | peak RSS / memory per active "
                f"crossing; start-up (process start to probe committed) | "
                f"{_fmt(m['peak_rss_mib'])} MiB / {_fmt(m['kib_per_active_crossing'], 1)} KiB;"
                f" {_fmt(m['startup_s'], 1)} s |",
            ]
    peer = sc.get("peer")
    if _ok(peer):
        assert peer is not None
        lines += _peer_rows(peer)
    elif peer:
        lines.append(f"| peer | not measured | {peer.get('reason', '')} |")
    sink = sc.get("sink")
    if _ok(sink):
        assert sink is not None
        for table, key in (("queue_reports", "raw"), ("crossing_windows", "windows")):
            live = sink.get(f"{key}_live")
            while_publishing = (
                f" ({_fmt(live['median']['rows_per_s'])} rows/s read while published)"
                if live
                else ""
            )
            lines.append(
                f"| sink all, chdb ({sink[key]['rows']:,} rows) | drains into {table} | "
                f"{_fmt(sink[key]['median']['rows_per_s'])} rows/s{while_publishing} |"
            )
        contrib = sink.get("contributions")
        if contrib:
            m = contrib["median"]
            lines.append(
                f"| sink all, chdb, output contributions ({contrib['rows']:,} contributions of "
                f"{sink['raw']['rows']:,} reports) | drains into crossing_contributions (the "
                "windows are views over it) | "
                f"{_fmt(m['rows_per_s'])} contributions/s; "
                f"{_stored(contrib['runs'][-1])} |"
            )
        sparse = sink.get("contributions_sparse")
        if sparse:
            lines.append(
                f"| sink all, chdb, output contributions, the sparse replay's log "
                f"({sparse['reports']:,} reports) | rows stored per contribution | "
                f"{_stored(sparse)} ({_fmt(sparse['rows_per_s'])} contributions/s) |"
            )
        logs = []
        if contrib:
            logs.append((f"{contrib['rows']:,} contributions (last drain)", contrib["runs"][-1]))
        if sparse:
            logs.append(("the sparse replay's log", sparse))
        for label, run in logs:
            for query, r in (run.get("reads") or {}).items():
                lines.append(
                    f"| reading the assembled windows, chdb, {label} | `{query}` "
                    f"(median of {_READ_REPEATS}, slowest) | {_fmt(r['median_s'], 3)} s, "
                    f"{_fmt(r['max_s'], 3)} s; {r['rows']:,} rows |"
                )
    e2e = sc.get("end_to_end")
    if _ok(e2e):
        assert e2e is not None
        lines += _e2e_rows(e2e["rates"], e2e["highest_sustained_per_s"], "")
        contributions = e2e.get("contributions")
        if contributions:
            lines += _e2e_rows(
                contributions["rates"],
                contributions["highest_sustained_per_s"],
                ", output contributions",
            )
    scale = sc.get("scale_out")
    if _ok(scale):
        assert scale is not None
        for shape in ("sparse", "dense"):
            part = scale[shape]
            one, two = part["workers_1"]["median"], part["workers_2"]["median"]
            lines.append(
                f"| scale-out, {shape} ({part['reports']:,} reports, {part['crossings']:,} "
                f"crossings) | 1 / 2 workers, events/s; CPU per report | "
                f"{_fmt(one['events_per_s'])} / {_fmt(two['events_per_s'])} "
                f"({part['speedup']}x); {_fmt(one.get('cpu_us_per_report'))} / "
                f"{_fmt(two.get('cpu_us_per_report'))} µs |"
            )
    cost = sc.get("metrics_cost")
    if _ok(cost):
        assert cost is not None
        lines.append(
            f"| metrics cost (dense replay, scraped every 1 s) | aggregator events/s off / on | "
            f"{_fmt(cost['off']['median']['events_per_s'])} / "
            f"{_fmt(cost['on']['median']['events_per_s'])} "
            + (
                f"({cost['cost_share'] * 100:.1f} % less) |"
                if cost["cost_share"] >= 0
                else f"(on was {-cost['cost_share'] * 100:.1f} % faster: no measurable cost) |"
            )
        )
    query = sc.get("query")
    if _ok(query):
        assert query is not None
        for name, q in query["queries"].items():
            lines.append(
                f"| query ({query['queue_reports_rows']:,} raw reports, "
                f"{query['crossing_windows_rows']:,} window rows) | {name} "
                f"({q['rows_returned']} rows) | p50 {_fmt(q['p50_s'] * 1000)} ms "
                f"(min {_fmt(q['min_s'] * 1000)}, max {_fmt(q['max_s'] * 1000)}) |"
            )
        dash = query.get("dashboard") or {}
        for name in ("api_crossings", "api_lane", "browser"):
            q = dash.get(name)
            if not q or "p50_s" not in q:
                continue
            what = {
                "api_crossings": f"dashboard data, every lane ({dash.get('lanes')} lanes)",
                "api_lane": "dashboard data, one lane's detail",
                "browser": "dashboard page in headless Chromium, start to rendered "
                f"(Chromium's own start {_fmt(q.get('chromium_start_s', 0) * 1000)} ms)",
            }[name]
            lines.append(
                f"| query ({query['queue_reports_rows']:,} raw reports) | {what} | "
                f"p50 {_fmt(q['p50_s'] * 1000)} ms (min {_fmt(q['min_s'] * 1000)}, "
                f"max {_fmt(q['max_s'] * 1000)}) |"
            )
    failed = [k for k, v in sc.items() if v.get("status") == "failed"]
    if failed:
        lines += [
            "",
            "Failed in this run: " + ", ".join(f"{k} ({sc[k]['reason']})" for k in failed),
        ]
    table = targets(result)
    if table:
        lines += ["", *table]
    if _ok(e2e):
        lines += ["", f"![latency vs offered rate]({PLOT.name})"]
    return "\n".join(lines)


def _e2e_rows(rates: list[dict[str, Any]], highest: int | None, label: str) -> list[str]:
    """One row per offered rate, and the highest rate sustained."""
    lines = []
    for rate in rates:
        med = rate["median"]
        bound = {
            t: "≥ " if any(r[t]["percentiles_are_lower_bounds"] for r in rate["runs"]) else ""
            for t in ("queue_reports", "crossing_windows")
        }
        lines.append(
            f"| end to end{label}, offered {rate['offered_per_s']:,}/s | p50 / p95 / p99 to "
            f"queue_reports; to crossing_windows | {bound['queue_reports']}"
            f"{_fmt(med['queue_reports_p50_s'], 2)} / "
            f"{_fmt(med['queue_reports_p95_s'], 2)} / {_fmt(med['queue_reports_p99_s'], 2)}"
            f" s; {bound['crossing_windows']}{_fmt(med['crossing_windows_p50_s'], 2)} / "
            f"{_fmt(med['crossing_windows_p95_s'], 2)} / "
            f"{_fmt(med['crossing_windows_p99_s'], 2)} s; sustained in "
            f"{rate['sustained_runs']}/{len(rate['runs'])} runs |"
        )
    lines.append(
        f"| end to end{label} | highest offered rate sustained | {_fmt(highest)} reports/s |"
    )
    return lines


#: benchmarks.view_reads.REPEATS, without importing the module that runs them.
_READ_REPEATS = 5


def _stored(run: dict[str, Any]) -> str:
    """Rows stored per contribution, and in which tables."""
    if "clickhouse_rows_per_contribution" not in run:  # result files before the views
        return f"{_fmt(run.get('window_rows_per_contribution'), 1)} window rows assembled"
    tables = ", ".join(f"{t} {n:,}" for t, n in sorted(run["stored_rows"].items()) if n)
    return f"{run['clickhouse_rows_per_contribution']:.3f} rows stored per contribution ({tables})"


def _verdict(value: float | None, target: float, at_most: bool = False) -> str:
    if value is None:
        return "not measured"
    return "met" if (value <= target if at_most else value >= target) else "missed"


def targets(result: dict[str, Any]) -> list[str]:
    """The table of issue 12 (aggregator v2), from this run's figures: each figure, the
    version-1 figure the issue quoted (commit 488e56d), the target and whether it is met.
    Empty for a run without the aggregator scenarios."""
    sc = result["scenarios"]
    sparse, dense = sc.get("aggregator"), sc.get("aggregator_dense")
    if not (_ok(sparse) and _ok(dense)) or "windows_median" not in (sparse or {}):
        return []
    assert sparse is not None and dense is not None
    rows: list[tuple[str, str, str, str, str]] = []
    sink = sc.get("sink") if _ok(sc.get("sink")) else None
    in_sparse = (sink or {}).get("contributions_sparse")
    msgs = sparse["median"]["output_messages_per_report"]
    if in_sparse and "clickhouse_rows_per_contribution" in in_sparse:
        # Kafka: the contributions; ClickHouse: every row the folder stores per contribution
        # (the windows are views, so none for them).
        stored = in_sparse["clickhouse_rows_per_contribution"]
        total = msgs + stored
        value = (
            f"{total:.2f}: {msgs:.2f} contribution messages + {stored:.2f} rows stored "
            "in ClickHouse (crossing_contributions; windows are views)"
        )
        rows.append(
            ("rows written downstream per report, sparse replay (Kafka output + ClickHouse)",
             "31.5 window messages + 31.5 rows", "≤ 4 in all", value, _verdict(total, 4, True))
        )  # fmt: skip
    changelog = [
        a["median"].get("changelog_bytes_per_report") for a in (dense, sparse)
    ]  # fmt: skip
    if None not in changelog:
        worst = max(c for c in changelog if c is not None)
        rows.append(
            ("changelog bytes per report (dense replay: busy crossings / sparse)",
             "~0.9 kB dense / ~10 kB sparse", "≤ 1 kB",
             f"{_fmt(changelog[0])} B / {_fmt(changelog[1])} B", _verdict(worst, 1000, True))
        )  # fmt: skip
    plan = ((sparse, "sparse", 861, 5000), (dense, "dense", 7630, 10000))
    for agg, shape, before, target in plan:
        rate = agg["median"]["events_per_s"]
        rows.append(
            (f"aggregator, {shape} replay, 1 worker (output contributions; windows)",
             f"{before:,}/s", f"≥ {target:,}/s",
             f"{_fmt(rate)}/s; {_fmt(agg['windows_median']['events_per_s'])}/s",
             _verdict(rate, target))
        )  # fmt: skip
    e2e = sc.get("end_to_end")
    if _ok(e2e):
        assert e2e is not None
        v2 = (e2e.get("contributions") or {}).get("rates") or e2e["rates"]
        within = [
            r["offered_per_s"]
            for r in v2
            if r["sustained_runs"] == len(r["runs"])
            and r["median"]["crossing_windows_p99_s"] is not None
            and r["median"]["crossing_windows_p99_s"] <= 3.0
            and not any(x["crossing_windows"]["percentiles_are_lower_bounds"] for x in r["runs"])
        ]
        best = max(within) if within else None
        rows.append(
            ("end to end sustained with windows p99 ≤ 3 s (output contributions)",
             "1,000/s offered (p50 10 s)", "≥ 5,000/s offered",
             f"{best:,}/s offered" if best else "none of the rates offered",
             _verdict(best or 0, 5000))
        )  # fmt: skip
    if sink:
        rates = {
            key: sink[key]["median"]["rows_per_s"]
            for key in ("raw", "windows", "contributions")
            if key in sink
        }
        rows.append(
            ("sinks on chdb, drain (raw / windows / contributions)", "17.6k rows/s",
             "≥ 50k rows/s", " / ".join(f"{_fmt(v)}" for v in rates.values()) + " rows/s",
             _verdict(min(rates.values()), 50_000))
        )  # fmt: skip
    peer = sc.get("peer")
    if _ok(peer):
        assert peer is not None
        peers = _peers(peer)
        ratios = {
            name: peers[name]["ratio_ours_to_peer"]
            for name in ("quix", "bytewax")
            if peers.get(name, {}).get("status") == "ok"
        }
        if ratios:
            met = ratios.get("quix", 0) >= 2 and ratios.get("bytewax", 0) > 1
            rows.append(
                ("vs Quix Streams / vs Bytewax, same job, same run (ours is ...)", "1.15× / –",
                 "≥ 2× / ahead",
                 " / ".join(f"{_fmt(ratios[n], 2)}×" if n in ratios else "–"
                            for n in ("quix", "bytewax")),
                 "met" if met else "missed")
            )  # fmt: skip
    return [
        "Issue 12 (aggregator v2), its targets against this run:",
        "",
        "| figure | version 1 (488e56d) | target | this run | |",
        "|---|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows),
    ]


def plot(result: dict[str, Any], path: Path) -> bool:
    """Latency percentiles against offered rate; False when there is nothing to plot."""
    e2e = result["scenarios"].get("end_to_end")
    if not _ok(e2e):
        return False
    assert e2e is not None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [r["offered_per_s"] for r in e2e["rates"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, table in zip(axes, ("queue_reports", "crossing_windows"), strict=True):
        for q, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^:")):
            values = [r["median"][f"{table}_{q}_s"] for r in e2e["rates"]]
            ax.plot(rates, values, style, label=q)
        for r in e2e["rates"]:
            if r["sustained_runs"] * 2 <= len(r["runs"]):
                ax.axvline(r["offered_per_s"], color="red", alpha=0.2)
        ax.set_title(f"published -> visible in {table}")
        ax.set_xlabel("offered rate (reports/s)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    runs = len(e2e["rates"][0]["runs"])
    axes[0].set_ylabel(f"latency (s), median of {runs} run(s) per rate")
    m = result["machine"]
    fig.suptitle(
        f"queuewatch end to end on {m['nproc']} cores ({result['started_at'][:10]}); red: not "
        "sustained (reports still invisible at the end: values are lower bounds)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def render(result_path: Path, doc: Path = DOC, plot_path: Path = PLOT) -> None:
    """Rewrite the results section of ``doc`` and the plot from ``result_path``."""
    result = json.loads(result_path.read_text())
    try:
        rel = str(result_path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        rel = str(result_path)
    block = f"{BEGIN}\n{summary(result, rel)}\n{END}"
    text = doc.read_text() if doc.exists() else f"# Performance\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)
    plot(result, plot_path)
    print(f"updated {doc} and {plot_path}")


if __name__ == "__main__":
    render(Path(sys.argv[1]))
