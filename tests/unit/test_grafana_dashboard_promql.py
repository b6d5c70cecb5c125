"""Every PromQL query of the Grafana dashboard reads series the processors really serve.

The series are not listed by hand: each processor's own ``_serve_metrics`` builds its registry
(collectors and histograms, as in production) around a fed aggregator and fed sinks, and the
test collects it. The queries are parsed by a PromQL parser (promql-parser, the Rust one of
GreptimeDB), so a misspelt metric, a label a metric does not have, or a legend naming a label
the query aggregates away fails here rather than drawing an empty panel.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import promql_parser
import pytest
from prometheus_client import CollectorRegistry

from queuewatch.aggregator.state import Outcome
from queuewatch.platform import metrics
from queuewatch.settings import AggregatorSettings, CommonSettings, SinkSettings
from tests.support import grafana

#: Labels Prometheus adds to every series it scrapes (the job is the compose service).
TARGET_LABELS = {"job", "instance"}
#: Series Prometheus itself writes for every target.
PROMETHEUS_SERIES = {
    name: set(TARGET_LABELS) for name in ("up", "scrape_duration_seconds", "scrape_samples_scraped")
}


def _registries(monkeypatch: pytest.MonkeyPatch) -> list[CollectorRegistry]:
    """The registries the aggregator and the sink process serve, around fed instances."""
    from queuewatch.aggregator import app
    from queuewatch.sinks import runner

    served: list[CollectorRegistry] = []
    monkeypatch.setattr(metrics, "serve", lambda registry, *_: served.append(registry))
    totals = {"messages": 3, "dead": 1, **{o.value: 1 for o in Outcome}, "redelivered": 0}
    aggregator = SimpleNamespace(
        totals=totals,
        states={"ge-ru-verkhny-lars": SimpleNamespace(watermark=1, lanes={"car": None})},
        progress=SimpleNamespace(partition_lag={0: 4, 1: 0}),
        last_ack_at=time.monotonic(),
        batch_seconds=None,
    )
    common = CommonSettings()
    settings = AggregatorSettings(aggregator_metrics_port=9464)
    app._serve_metrics(aggregator, common, settings)  # type: ignore[arg-type]
    sinks = [
        SimpleNamespace(
            name=name,
            stats=SimpleNamespace(
                records=2,
                rows_written=2,
                batches=1,
                failed_writes=0,
                dead_letters=0,
                last_commit_at=time.monotonic(),
            ),
            lag=0,
            retrying=None,
            flush_seconds=None,
        )
        for name in ("raw-sink", "windows-sink")
    ]
    runner._serve_metrics(sinks, common, SinkSettings(sink_metrics_port=9464))  # type: ignore[arg-type]
    assert len(served) == 2, "a processor no longer serves its registry through metrics.serve"
    # A histogram has samples only once observed, like after the first batch.
    aggregator.batch_seconds.observe(0.1)
    sinks[0].flush_seconds.observe(0.1)
    return served


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, set[str]]]:
    """Series name -> {label: values seen} of everything the processors serve."""
    series: dict[str, dict[str, set[str]]] = {}
    for registry in _registries(monkeypatch):
        for family in registry.collect():
            for sample in family.samples:
                labels = series.setdefault(sample.name, {})
                for key, value in sample.labels.items():
                    labels.setdefault(key, set()).add(value)
    return series


def _selectors(expr: Any) -> Iterator[Any]:
    found: list[Any] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(expr, visit)
    yield from found


def _result_labels(expr: Any, labels_of: dict[str, set[str]]) -> set[str] | None:
    """The labels a query's result series carry, where this can tell (None: it cannot)."""
    if isinstance(expr, promql_parser.ParenExpr):
        return _result_labels(expr.expr, labels_of)
    if isinstance(expr, promql_parser.AggregateExpr):
        modifier = expr.modifier
        if modifier is None:
            return set()
        if modifier.type == promql_parser.AggModifierType.By:
            return set(modifier.labels)
        return None
    if isinstance(expr, promql_parser.Call):
        name = expr.func.name
        if name == "histogram_quantile":
            inner = _result_labels(expr.args[1], labels_of)
            return None if inner is None else inner - {"le"}
        if name in {"rate", "increase", "irate", "delta", "abs"} or name.endswith("_over_time"):
            return _result_labels(expr.args[-1], labels_of)
        return None
    if isinstance(expr, promql_parser.MatrixSelector):
        return _result_labels(expr.vector_selector, labels_of)
    if isinstance(expr, promql_parser.VectorSelector):
        return labels_of.get(str(expr.name), set()) | TARGET_LABELS
    return None


def _prometheus_queries() -> list[grafana.Query]:
    found = [q for q in grafana.queries(grafana.dashboard()) if q.datasource_type == "prometheus"]
    assert found, "the dashboard has no Prometheus query"
    return found


def check_query(query: grafana.Query, served: dict[str, dict[str, set[str]]]) -> None:
    """Raise AssertionError unless ``query`` reads only what ``served`` holds, as it is labelled."""
    expr = promql_parser.parse(grafana.expand_promql(query.text))
    known = {**{k: set(v) for k, v in served.items()}, **PROMETHEUS_SERIES}
    selectors = list(_selectors(expr))
    assert selectors, f"{query.where} reads no series"
    for selector in selectors:
        name = selector.name
        assert name in known, f"{query.where}: no processor serves {name}"
        values = served.get(name, {})
        for matcher in selector.matchers.matchers:
            assert matcher.name in known[name] | TARGET_LABELS, (
                f"{query.where}: {name} has no label {matcher.name}"
            )
            if matcher.op == promql_parser.MatchOp.Equal and matcher.name in values:
                assert matcher.value in values[matcher.name], (
                    f"{query.where}: {name}{{{matcher.name}}} is never {matcher.value!r}"
                )

    labels_of = {name: set(labels) for name, labels in known.items()}

    def check_grouping(node: Any) -> None:
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            below = set().union(*(labels_of[s.name] for s in _selectors(node.expr)))
            missing = set(node.modifier.labels) - below - TARGET_LABELS
            assert not missing, f"{query.where}: grouped by labels no series has: {missing}"

    promql_parser.walk(expr, check_grouping)
    legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", query.legend or ""))
    result = _result_labels(expr, labels_of)
    if result is not None:
        assert legend <= result, f"{query.where}: the legend names {legend - result}, gone"


@pytest.mark.parametrize("query", _prometheus_queries(), ids=lambda q: q.where)
def test_a_dashboard_query_reads_only_series_and_labels_the_processors_serve(
    served: dict[str, dict[str, set[str]]], query: grafana.Query
) -> None:
    check_query(query, served)


@pytest.mark.parametrize(
    ("expr", "legend", "why"),
    [
        ("sum(rate(queuewatch_sink_rows_writen_total[5m]))", None, "no processor serves"),
        ('queuewatch_sink_paused{sinc="raw-sink"}', None, "has no label sinc"),
        ('queuewatch_aggregator_reports_total{outcome="daed"}', None, "is never 'daed'"),
        ("sum by (sink) (queuewatch_aggregator_consumer_lag)", None, "grouped by labels"),
        ("sum by (le) (rate(queuewatch_sink_flush_seconds_bucket[5m]))", "{{sink}}", "legend"),
    ],
)
def test_a_query_that_would_draw_nothing_is_refused_naming_why(
    served: dict[str, dict[str, set[str]]], expr: str, legend: str | None, why: str
) -> None:
    with pytest.raises(AssertionError, match=re.escape(why)):
        check_query(grafana.Query("a panel", "prometheus", expr, legend=legend), served)


def test_the_grafana_range_variables_are_expanded_and_others_refused() -> None:
    assert grafana.expand_promql("rate(x[$__rate_interval])") == "rate(x[1m])"
    assert grafana.expand_promql("increase(x[$__range])") == "increase(x[6h])"
    with pytest.raises(ValueError, match="unexpanded"):
        grafana.expand_promql('x{job="$job"}')
