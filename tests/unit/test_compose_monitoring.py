"""The compose `monitoring` profile: Prometheus and Grafana, checked without a Docker engine.

The compose model is the one the Compose v2 binary builds (as in test_compose_file.py); the
Prometheus and Grafana files are read as those servers read them. What ties them together is
checked across files: the targets Prometheus scrapes are the processors and the metrics ports
compose gives them, the mounts put each file where its server looks, and the data sources log
in as the users the ClickHouse server defines.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
import yaml

from queuewatch.settings import CommonSettings
from tests.support import grafana
from tests.unit.test_compose_file import ENV_EXAMPLE, USERS_XML, normalised

MONITORING = ("prometheus", "grafana")
#: Each processor and the variable that sets its metrics port.
PROCESSOR_PORTS = {
    "aggregator": "QUEUEWATCH_AGGREGATOR_METRICS_PORT",
    "raw-sink": "QUEUEWATCH_SINK_METRICS_PORT",
    "window-sink": "QUEUEWATCH_SINK_METRICS_PORT",
}
SEMVER = r"\d+\.\d+\.\d+"


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    """The normalised services with the monitoring profile on (and the example .env)."""
    result: dict[str, dict[str, Any]] = normalised(ENV_EXAMPLE, "monitoring")["services"]
    return result


@pytest.fixture(scope="module")
def prometheus_config() -> dict[str, Any]:
    """infra/prometheus/prometheus.yml, parsed."""
    loaded: dict[str, Any] = yaml.safe_load(grafana.PROMETHEUS_FILE.read_text())
    return loaded


def test_prometheus_and_grafana_run_only_under_the_monitoring_profile(
    services: dict[str, Any],
) -> None:
    default = normalised(ENV_EXAMPLE)["services"]
    for name in MONITORING:
        assert name in services
        assert name not in default, f"{name} starts without --profile monitoring"
        assert services[name]["profiles"] == ["monitoring"]


@pytest.mark.parametrize(
    ("name", "image", "tag"),
    [("prometheus", "prom/prometheus", rf"v{SEMVER}"), ("grafana", "grafana/grafana", SEMVER)],
)
def test_the_monitoring_images_are_the_official_ones_pinned_to_a_release(
    services: dict[str, Any], name: str, image: str, tag: str
) -> None:
    repository, _, pinned = services[name]["image"].partition(":")
    assert repository == image
    assert re.fullmatch(tag, pinned), f"{name}: pin a full release, not {pinned!r}"


def test_the_clickhouse_plugin_is_installed_pinned_and_matches_the_dashboard(
    services: dict[str, Any],
) -> None:
    env = services["grafana"]["environment"]
    plugins = env["GF_PLUGINS_PREINSTALL_SYNC"].split(",")
    pinned = [p for p in plugins if p.startswith(f"{grafana.CLICKHOUSE_PLUGIN}@")]
    assert len(pinned) == 1, f"the ClickHouse plugin is not pinned: {plugins}"
    version = pinned[0].partition("@")[2]
    assert re.fullmatch(SEMVER, version), version
    targets = [
        t
        for p in grafana.panels(grafana.dashboard())
        for t in p.get("targets", [])
        if t["datasource"]["type"] == grafana.CLICKHOUSE_PLUGIN
    ]
    assert targets and {t["pluginVersion"] for t in targets} == {version}
    # Grafana reads preinstall_sync only when preinstall is not disabled
    # (pkg/setting/setting_plugins.go): disabling the default set would skip the plugin too.
    assert env.get("GF_PLUGINS_PREINSTALL_DISABLED", "false").lower() != "true"


@pytest.mark.parametrize("name", MONITORING)
def test_a_monitoring_service_publishes_on_loopback_only(
    services: dict[str, Any], name: str
) -> None:
    ports = services[name].get("ports", [])
    assert ports, f"{name} publishes nothing to open in a browser"
    for port in ports:
        assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond loopback"


@pytest.mark.parametrize("name", MONITORING)
def test_a_monitoring_service_runs_read_only_unprivileged_and_healthchecked(
    services: dict[str, Any], name: str
) -> None:
    service = services[name]
    assert service.get("read_only") is True
    assert "ALL" in service.get("cap_drop", [])
    assert "no-new-privileges:true" in service.get("security_opt", [])
    assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert service.get("restart") == "unless-stopped"
    # Their data outlives the container: a named volume, not the read-only root.
    assert [m for m in service["volumes"] if m["type"] == "volume"], f"{name} keeps no data"


def test_prometheus_scrapes_every_processor_on_the_port_compose_gives_it(
    services: dict[str, Any], prometheus_config: dict[str, Any]
) -> None:
    scraped: dict[str, set[int]] = {}
    for job in prometheus_config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            # Type A on the service name: every replica of a scaled service is a target.
            assert sd["type"] == "A"
            for name in sd["names"]:
                scraped.setdefault(name, set()).add(int(sd["port"]))
        assert not job.get("static_configs"), "a static target reaches one replica of a service"
    processors = {
        name
        for name, service in services.items()
        if (service.get("command") or [None])[0] in {"aggregator", "sink"}
    }
    assert processors == set(PROCESSOR_PORTS), "a processor was added: give it a metrics port"
    assert set(scraped) == processors
    for name, variable in PROCESSOR_PORTS.items():
        env = services[name]["environment"]
        assert scraped[name] == {int(env[variable])}, f"{name} serves on {env[variable]}"
        # Bound to every interface of the container, or Prometheus cannot reach it.
        assert env["QUEUEWATCH_METRICS_ADDRESS"] == "0.0.0.0"
        assert "ports" not in services[name], f"{name}'s metrics must not be published"


def test_prometheus_reads_the_config_file_of_the_repository(services: dict[str, Any]) -> None:
    service = services["prometheus"]
    target = grafana.mounted_target(service, grafana.PROMETHEUS_FILE)
    assert f"--config.file={target}" in service["command"]
    storage = next(a for a in service["command"] if a.startswith("--storage.tsdb.path="))
    data = [m for m in service["volumes"] if m["type"] == "volume"]
    assert storage.partition("=")[2] == data[0]["target"], "the samples would be lost"


def test_grafana_finds_its_provisioning_and_the_dashboard_where_the_files_say(
    services: dict[str, Any],
) -> None:
    service = services["grafana"]
    provisioning = grafana.GRAFANA_DIR / "provisioning"
    for kind in ("datasources", "dashboards"):
        target = grafana.mounted_target(service, provisioning / kind)
        assert target == f"/etc/grafana/provisioning/{kind}"
    providers = yaml.safe_load(grafana.DASHBOARD_PROVIDERS_FILE.read_text())["providers"]
    assert len(providers) == 1
    path = providers[0]["options"]["path"]
    assert grafana.mounted_target(service, grafana.DASHBOARDS_DIR) == path
    home = service["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert grafana.repository_file(home, service).resolve() == grafana.DASHBOARD_FILE


def test_grafana_reads_its_passwords_from_secret_files_only(
    services: dict[str, Any],
) -> None:
    service = services["grafana"]
    env = service["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert not [k for k in env if "PASSWORD" in k and not k.endswith("__FILE")]
    mounted = {s["source"] for s in service["secrets"]}
    assert mounted == {"grafana_admin_password", "clickhouse_grafana_password"}
    password = grafana.clickhouse_datasource()["secureJsonData"]["password"]
    assert password == "$__file{/run/secrets/clickhouse_grafana_password}"
    # No other provisioned field holds a secret.
    for ds in grafana.datasources():
        assert set(ds.get("secureJsonData", {})) <= {"password"}
        assert "password" not in ds.get("jsonData", {})


def test_the_clickhouse_data_source_logs_in_as_the_grafana_user_of_the_server(
    services: dict[str, Any],
) -> None:
    ds = grafana.clickhouse_datasource()["jsonData"]
    assert ds["host"] == "clickhouse" and "clickhouse" in services
    assert ds["protocol"] == "http"
    assert ds["port"] in {p["target"] for p in services["clickhouse"]["ports"]}
    assert ds["defaultDatabase"] == CommonSettings().clickhouse_database
    users = ElementTree.parse(USERS_XML).getroot()
    assert users.find(f"users/{ds['username']}") is not None, "no such ClickHouse user"
    # The user's hash comes from the environment compose gives the server.
    assert "CLICKHOUSE_GRAFANA_PASSWORD_SHA256" in services["clickhouse"]["environment"]


def test_the_prometheus_data_source_is_the_compose_service_at_its_scrape_interval(
    services: dict[str, Any], prometheus_config: dict[str, Any]
) -> None:
    ds = grafana.datasource("prometheus")
    assert ds["url"] == "http://prometheus:9090"
    assert 9090 in {p["target"] for p in services["prometheus"]["ports"]}
    assert ds["jsonData"]["timeInterval"] == prometheus_config["global"]["scrape_interval"]


def test_grafana_starts_after_what_it_reads(services: dict[str, Any]) -> None:
    deps = services["grafana"]["depends_on"]
    assert deps["clickhouse"]["condition"] == "service_healthy"
    assert deps["prometheus"]["condition"] == "service_healthy"


def test_the_pipeline_row_reads_prometheus_and_the_crossings_row_clickhouse() -> None:
    model = grafana.dashboard()
    uids = {ds["uid"]: ds["type"] for ds in grafana.datasources()}
    rows: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] | None = None
    for panel in model["panels"]:
        if panel["type"] == "row":
            current = rows.setdefault(panel["title"], [])
            continue
        assert current is not None, f"panel {panel['title']!r} is above every row"
        current.append(panel)
    assert list(rows) == ["Pipeline", "Crossings"]
    expected = {"Pipeline": "prometheus", "Crossings": grafana.CLICKHOUSE_PLUGIN}
    for title, kind in expected.items():
        assert rows[title], f"the {title} row is empty"
        for panel in rows[title]:
            for target in panel["targets"]:
                uid = target["datasource"]["uid"]
                assert uid in uids, f"{panel['title']!r}: no provisioned data source {uid}"
                assert uids[uid] == kind, f"{panel['title']!r} of {title} reads {uids[uid]}"
    # Panel ids are unique, or Grafana shows one panel's queries in another's editor.
    ids = [p["id"] for p in grafana.panels(model)]
    assert len(ids) == len(set(ids))


#: Panel types Grafana ships (no plugin to install for them).
CORE_PANELS = {"row", "timeseries", "stat", "table", "bargauge", "gauge", "piechart", "text"}


def test_every_panel_is_a_core_panel_on_the_24_column_grid_without_overlaps() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in grafana.panels(grafana.dashboard()):
        assert panel["type"] in CORE_PANELS, f"{panel['title']!r}: {panel['type']}"
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, f"{panel['title']!r} is off the grid"
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                other = taken.setdefault((x, y), panel["title"])
                assert other == panel["title"], f"{panel['title']!r} covers {other!r}"


def test_the_dashboard_covers_the_figures_of_the_issue() -> None:
    texts = " ".join(q.text for q in grafana.queries(grafana.dashboard()))
    for needle in (
        "queuewatch_aggregator_reports_total",  # reports by outcome
        "queuewatch_aggregator_consumer_lag",  # lag per partition
        "queuewatch_sink_rows_written_total",  # sink rows/s
        "queuewatch_aggregator_batch_seconds_bucket",  # batch latency quantiles
        "queuewatch_sink_flush_seconds_bucket",  # flush latency quantiles
        "last_commit_age_seconds",
        "queuewatch_sink_paused",
        "dead_letters_total",
        "crossing_status",  # current wait and queue, freshness, confidence
        "crossing_windows",  # wait over time
        "freshness_s",
        "confidence",
    ):
        assert needle in texts, f"no panel reads {needle}"


def test_every_file_of_the_profile_is_in_the_repository() -> None:
    for path in (
        grafana.PROMETHEUS_FILE,
        grafana.DATASOURCES_FILE,
        grafana.DASHBOARD_PROVIDERS_FILE,
        grafana.DASHBOARD_FILE,
    ):
        assert Path(path).is_file(), path


def test_the_sql_macros_expand_as_the_plugin_expands_them_and_unknown_ones_are_refused() -> None:
    variables = {"crossing": ["a", "b'c"]}
    sql = "SELECT 1 WHERE $__timeFilter(toDateTime(t)) AND c IN (${crossing:singlequote})"
    start, end = grafana.TIME_FROM_S, grafana.TIME_TO_S
    assert grafana.expand_sql(sql, variables) == (
        f"SELECT 1 WHERE toDateTime(t) >= toDateTime({start}) AND toDateTime(t) <= "
        f"toDateTime({end}) AND c IN ('a','b\\'c')"
    )
    for unknown in ("$__timeGroup(t, '1h')", "$region", "${crossing:csv}", "$__timeFilter(t"):
        with pytest.raises(ValueError):
            grafana.expand_sql(f"SELECT {unknown}", variables)
