"""The compose `monitoring` profile's files, read as Grafana and Prometheus would read them.

No Grafana runs here, so the tests read the provisioning files themselves: the data sources,
the dashboard's panels and template variables, and each query in the form the server would
run it. For that the Grafana macros and variables are expanded the way Grafana's ClickHouse
plugin expands them (``pkg/macros`` of grafana/clickhouse-datasource: ``$__timeFilter(col)``
becomes ``col >= toDateTime(FROM) AND col <= toDateTime(TO)``), and an unknown one is an error,
so a query the test cannot expand fails instead of being skipped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from queuewatch.resources import REPO_ROOT

INFRA = REPO_ROOT / "infra"
GRAFANA_DIR = INFRA / "grafana"
DATASOURCES_FILE = GRAFANA_DIR / "provisioning" / "datasources" / "queuewatch.yml"
DASHBOARD_PROVIDERS_FILE = GRAFANA_DIR / "provisioning" / "dashboards" / "queuewatch.yml"
DASHBOARDS_DIR = GRAFANA_DIR / "dashboards"
DASHBOARD_FILE = DASHBOARDS_DIR / "queuewatch.json"
PROMETHEUS_FILE = INFRA / "prometheus" / "prometheus.yml"

CLICKHOUSE_PLUGIN = "grafana-clickhouse-datasource"

#: The time range the tests give ``$__timeFilter`` and friends: one day (UTC seconds).
TIME_FROM_S = 1_790_000_000
TIME_TO_S = TIME_FROM_S + 86_400

#: What Grafana substitutes for its built-in PromQL range variables, at a typical size.
PROMQL_RANGES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "6h"}


@dataclass(frozen=True)
class Query:
    """One query of the dashboard: a panel's target or a template variable's query."""

    where: str  # the panel title and refId, or the variable's name, for messages
    datasource_type: str
    text: str
    fmt: str | None = None  # the ClickHouse target's queryType (table, timeseries)
    legend: str | None = None  # a Prometheus target's legendFormat


def datasources() -> list[dict[str, Any]]:
    """The provisioned data sources."""
    loaded = yaml.safe_load(DATASOURCES_FILE.read_text())
    result: list[dict[str, Any]] = loaded["datasources"]
    return result


def datasource(kind: str) -> dict[str, Any]:
    """The one provisioned data source of type ``kind``."""
    found = [ds for ds in datasources() if ds["type"] == kind]
    assert len(found) == 1, f"{len(found)} data sources of type {kind}"
    return found[0]


def clickhouse_datasource() -> dict[str, Any]:
    """The ClickHouse data source (the official plugin)."""
    return datasource(CLICKHOUSE_PLUGIN)


def dashboard() -> dict[str, Any]:
    """The provisioned dashboard's JSON model."""
    result: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return result


def panels(model: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels a collapsed row holds."""
    for panel in model.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def queries(model: Mapping[str, Any]) -> list[Query]:
    """Every query of the dashboard, with the data source type it goes to."""
    found: list[Query] = []
    for panel in panels(model):
        for target in panel.get("targets", []):
            ds = target.get("datasource") or panel.get("datasource") or {}
            kind = str(ds.get("type"))
            text = target.get("rawSql") if kind == CLICKHOUSE_PLUGIN else target.get("expr")
            assert text, f"panel {panel.get('title')!r} {target.get('refId')}: no query"
            found.append(
                Query(
                    f"panel {panel.get('title')!r} {target.get('refId')}",
                    kind,
                    str(text),
                    target.get("queryType"),
                    target.get("legendFormat"),
                )
            )
    for variable in model.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            text = query if isinstance(query, str) else query.get("rawSql") or query.get("query")
            found.append(
                Query(f"variable {variable['name']}", str(variable["datasource"]["type"]), text)
            )
    return found


def expand_sql(sql: str, variables: Mapping[str, list[str]]) -> str:
    """``sql`` as the ClickHouse plugin sends it, for the test time range and ``variables``.

    Raises ValueError on a macro or variable this function does not know.
    """
    out = _expand_call(sql, "$__timeFilter_ms", _time_filter_ms)
    out = _expand_call(out, "$__timeFilter", _time_filter)
    out = out.replace("$__fromTime", f"toDateTime({TIME_FROM_S})")
    out = out.replace("$__toTime", f"toDateTime({TIME_TO_S})")

    def variable(match: re.Match[str]) -> str:
        name, option = match["name"] or match["bare"], match["option"]
        if name not in variables:
            raise ValueError(f"unknown Grafana variable ${name} in: {sql}")
        values = variables[name]
        if option == "singlequote":
            return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
        if option is None and len(values) == 1:
            return values[0]
        raise ValueError(f"${{{name}:{option}}} is not expanded here; use :singlequote")

    out = re.sub(r"\$\{(?P<name>\w+)(?::(?P<option>\w+))?\}|\$(?P<bare>[a-z]\w*)", variable, out)
    if "$" in out:
        raise ValueError(f"a Grafana macro is left unexpanded in: {out}")
    return out


def expand_promql(expr: str) -> str:
    """``expr`` with Grafana's range variables replaced; ValueError on any other variable."""
    out = expr
    # Longest first: $__range must not eat the start of $__rate_interval.
    for name in sorted(PROMQL_RANGES, key=len, reverse=True):
        out = out.replace(name, PROMQL_RANGES[name])
    if "$" in out:
        raise ValueError(f"a Grafana variable is left unexpanded in: {out}")
    return out


def _time_filter(column: str) -> str:
    return f"{column} >= toDateTime({TIME_FROM_S}) AND {column} <= toDateTime({TIME_TO_S})"


def _time_filter_ms(column: str) -> str:
    return (
        f"{column} >= fromUnixTimestamp64Milli({TIME_FROM_S * 1000}) AND "
        f"{column} <= fromUnixTimestamp64Milli({TIME_TO_S * 1000})"
    )


def _expand_call(sql: str, macro: str, expand: Any) -> str:
    """Replace every ``macro(arg)`` in ``sql`` with ``expand(arg)``; parentheses may nest."""
    pattern = re.compile(re.escape(macro) + r"\s*\(")
    while (match := pattern.search(sql)) is not None:
        depth, end = 1, match.end()
        while depth:
            if end >= len(sql):
                raise ValueError(f"unbalanced {macro}( in: {sql}")
            depth += {"(": 1, ")": -1}.get(sql[end], 0)
            end += 1
        argument = sql[match.end() : end - 1].strip()
        sql = sql[: match.start()] + expand(argument) + sql[end:]
    return sql


def mounted_target(service: Mapping[str, Any], source: Path) -> str:
    """Where ``source`` (a file or folder of the repo) is mounted in a normalised service."""
    for mount in service.get("volumes", []):
        if mount.get("type") == "bind" and Path(mount["source"]).resolve() == source.resolve():
            return str(mount["target"])
    raise AssertionError(f"{source} is not mounted into the service")


def repository_file(path: str, service: Mapping[str, Any]) -> Path:
    """The repository file behind ``path`` inside ``service``'s bind mounts."""
    for mount in service.get("volumes", []):
        target = str(mount.get("target", ""))
        if mount.get("type") == "bind" and (path == target or path.startswith(target + "/")):
            return Path(mount["source"]) / path[len(target) :].lstrip("/")
    raise AssertionError(f"{path} is on no bind mount of the service")
