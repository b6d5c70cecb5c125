"""The ClickHouse server users (infra/clickhouse-server/users.d) grant what they should.

The file is parsed and its grants read back: the writer may insert and read the queuewatch
database and nothing else, the reader may only read it under a read-only profile, the migrator
owns that one database, and `default` answers on loopback only. Each grant is also parsed by
the ClickHouse engine shipped here (chdb), so a misspelt privilege fails now rather than at the
server's start.
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from xml.etree import ElementTree

import pytest

from queuewatch.resources import REPO_ROOT
from queuewatch.settings import CommonSettings

SERVER_DIR = REPO_ROOT / "infra" / "clickhouse-server"
USERS_XML = SERVER_DIR / "users.d" / "queuewatch.xml"
CONFIG_XML = SERVER_DIR / "config.d" / "queuewatch.xml"
DATABASE = CommonSettings().clickhouse_database

_GRANT_RE = re.compile(r"^GRANT\s+(?P<privileges>.+?)\s+ON\s+(?P<target>\S+)$", re.IGNORECASE)


@pytest.fixture(scope="module")
def root() -> ElementTree.Element:
    """The parsed users file (a syntax error fails here)."""
    return ElementTree.parse(USERS_XML).getroot()


def _user(root: ElementTree.Element, name: str) -> ElementTree.Element:
    user = root.find(f"users/{name}")
    assert user is not None, f"user {name} is not defined"
    return user


def _grants(user: ElementTree.Element) -> list[tuple[set[str], str]]:
    """(privileges, target) of each <grants><query> of a user."""
    out = []
    for query in user.findall("grants/query"):
        match = _GRANT_RE.match((query.text or "").strip())
        assert match is not None, f"not a plain GRANT: {query.text!r}"
        privileges = {p.strip().upper() for p in match["privileges"].split(",")}
        out.append((privileges, match["target"]))
    return out


def _profile_settings(root: ElementTree.Element, user: ElementTree.Element) -> dict[str, str]:
    name = user.findtext("profile")
    profile = root.find(f"profiles/{name}")
    assert profile is not None, f"profile {name} is not defined in the file"
    return {child.tag: (child.text or "").strip() for child in profile if len(child) == 0}


def test_the_users_are_migrator_writer_reader_grafana_and_a_restricted_default(
    root: ElementTree.Element,
) -> None:
    users = root.find("users")
    assert users is not None
    assert {user.tag for user in users} == {"default", "migrator", "writer", "reader", "grafana"}


PROJECTIONS = {"queue_reports", "crossing_windows", "window_latest"}


def _may(grants: list[tuple[set[str], str]], privilege: str, table: str) -> bool:
    """Whether the grants allow ``privilege`` on ``queuewatch.<table>`` (db-wide or by table)."""
    return any(
        (privilege in privileges or "ALL" in privileges)
        and target in (f"{DATABASE}.*", f"{DATABASE}.{table}")
        for privileges, target in grants
    )


def test_the_writer_may_insert_into_the_projection_tables_and_select_the_database(
    root: ElementTree.Element,
) -> None:
    grants = _grants(_user(root, "writer"))
    assert grants[0] == ({"SELECT"}, f"{DATABASE}.*")
    inserts = [target for privileges, target in grants if "INSERT" in privileges]
    assert set(inserts) == {f"{DATABASE}.{table}" for table in PROJECTIONS}
    # Beyond that, only the two CREATE ... IF NOT EXISTS a sink's start-up migrate() runs once
    # the `migrate` service has applied everything: nothing that drops, alters or empties.
    assert [g for g in grants if "INSERT" not in g[0]][1:] == [
        ({"CREATE DATABASE"}, f"{DATABASE}.*"),
        ({"CREATE TABLE"}, f"{DATABASE}.schema_migrations"),
    ]


def test_a_forged_schema_migrations_row_is_refused_for_the_writer(
    root: ElementTree.Element,
) -> None:
    # Offline, from the grants: chdb has no users, and no ClickHouse server runs here. The
    # INSERT a forger needs is granted neither on the database nor on the table.
    writer = _grants(_user(root, "writer"))
    assert not _may(writer, "INSERT", "schema_migrations")
    assert not _may(writer, "ALTER", "schema_migrations")
    assert not _may(writer, "TRUNCATE", "schema_migrations")
    # ...while the migrator, which records migrations, may.
    assert _may(_grants(_user(root, "migrator")), "INSERT", "schema_migrations")


def test_every_table_a_sink_writes_is_one_the_writer_may_insert_into(
    root: ElementTree.Element,
) -> None:
    from queuewatch.sinks.runner import sink_spec

    writer = _grants(_user(root, "writer"))
    for kind in ("raw", "windows"):
        table = sink_spec(kind, CommonSettings()).table.split(".", 1)[1]
        assert table in PROJECTIONS
        assert _may(writer, "INSERT", table), f"the {kind} sink could not write {table}"


@pytest.mark.parametrize("name", ["migrator", "writer", "reader", "grafana"])
def test_every_profile_limits_time_and_memory(root: ElementTree.Element, name: str) -> None:
    settings = _profile_settings(root, _user(root, name))
    assert 0 < int(settings.get("max_execution_time", "0")) <= 3600
    assert int(settings.get("max_memory_usage", "0")) > 0


@pytest.mark.parametrize("name", ["migrator", "writer", "grafana"])
def test_a_profile_that_may_change_settings_cannot_raise_its_own_limits(
    root: ElementTree.Element, name: str
) -> None:
    profile = root.find(f"profiles/{_user(root, name).findtext('profile')}")
    assert profile is not None
    settings = _profile_settings(root, _user(root, name))
    for limit in ("max_execution_time", "max_memory_usage"):
        cap = profile.findtext(f"constraints/{limit}/max")
        assert cap is not None, f"{name} may raise {limit}"
        assert int(cap) == int(settings[limit])


def test_the_reader_has_a_result_size_limit_that_throws(root: ElementTree.Element) -> None:
    settings = _profile_settings(root, _user(root, "reader"))
    assert int(settings.get("max_result_rows", "0")) > 0
    assert int(settings.get("max_result_bytes", "0")) > 0
    assert settings.get("result_overflow_mode") == "throw"


def test_the_writers_create_grants_cover_exactly_what_migrate_creates_first() -> None:
    from queuewatch.clickhouse import migrations

    source = inspect.getsource(migrations.migrate)
    assert "CREATE DATABASE IF NOT EXISTS" in source
    assert re.search(r"CREATE TABLE IF NOT EXISTS `\{database\}`\.schema_migrations", source)


def test_the_reader_may_only_select_from_the_queuewatch_database(
    root: ElementTree.Element,
) -> None:
    assert _grants(_user(root, "reader")) == [({"SELECT"}, f"{DATABASE}.*")]


def test_the_reader_profile_is_read_only_settings_included(root: ElementTree.Element) -> None:
    settings = _profile_settings(root, _user(root, "reader"))
    # readonly=1: no writes, no DDL, and no setting changes, so the limits below cannot be lifted.
    assert settings.get("readonly") == "1"
    assert settings.get("allow_ddl") == "0"


def test_the_reader_runs_under_time_and_memory_limits(root: ElementTree.Element) -> None:
    settings = _profile_settings(root, _user(root, "reader"))
    assert 0 < int(settings.get("max_execution_time", "0")) <= 600
    assert int(settings.get("max_memory_usage", "0")) > 0


def test_the_migrator_owns_the_queuewatch_database_and_nothing_beyond(
    root: ElementTree.Element,
) -> None:
    grants = _grants(_user(root, "migrator"))
    assert grants == [({"ALL"}, f"{DATABASE}.*")]


def test_no_user_can_manage_access_or_reach_other_databases(root: ElementTree.Element) -> None:
    for name in ("migrator", "writer", "reader", "grafana"):
        user = _user(root, name)
        assert user.findtext("access_management", "0") == "0"
        for _, target in _grants(user):
            assert target.split(".")[0] == DATABASE, f"{name} is granted {target}"


def test_the_default_user_answers_on_loopback_only(root: ElementTree.Element) -> None:
    networks = _user(root, "default").find("networks")
    assert networks is not None
    # replace, not merge: the stock users.xml opens default to ::/0.
    assert networks.get("replace") == "replace"
    addresses = {child.text for child in networks}
    assert addresses == {"::1", "127.0.0.1"}


@pytest.mark.parametrize("name", ["migrator", "writer", "reader", "grafana"])
def test_the_server_gets_only_a_hash_of_each_password_from_the_environment(
    root: ElementTree.Element, name: str
) -> None:
    user = _user(root, name)
    digest = user.find("password_sha256_hex")
    assert digest is not None and digest.get("from_env"), f"{name} has no password source"
    assert digest.get("from_env", "").endswith("_SHA256")
    assert not (digest.text or "").strip(), f"{name}'s password hash is written in the file"
    for other in ("password", "password_double_sha1_hex", "no_password"):
        assert user.find(other) is None, f"{name} has <{other}> in the file"


def test_the_server_config_is_well_formed_and_allows_backups_to_the_backup_volume() -> None:
    config = ElementTree.parse(CONFIG_XML).getroot()
    assert config.findtext("backups/allowed_disk") == "backups"
    assert config.findtext("storage_configuration/disks/backups/path") == "/backups/"


#: The levels a privilege may have for a grant on ``db.*`` and on ``db.table``.
_DATABASE_LEVELS = {"DATABASE", "TABLE", "VIEW", "DICTIONARY", "COLUMN"}
_TABLE_LEVELS = {"TABLE", "VIEW", "DICTIONARY", "COLUMN"}


GRAFANA_LIMITS = (
    "max_execution_time",
    "max_memory_usage",
    "max_threads",
    "max_result_rows",
    "max_result_bytes",
)
#: Settings whose value decides whether the limits hold at all: never changeable.
GRAFANA_PINNED = ("readonly", "allow_ddl", "result_overflow_mode", "timeout_overflow_mode")
#: The constraint kinds ClickHouse knows (``const`` is an alias of ``readonly``).
CONSTRAINT_KINDS = {"min", "max", "readonly", "const", "changeable_in_readonly", "disallowed"}


def _constraints(root: ElementTree.Element, name: str) -> dict[str, dict[str, str]]:
    """setting -> {kind: value} of the constraints of user ``name``'s profile."""
    profile = root.find(f"profiles/{_user(root, name).findtext('profile')}")
    assert profile is not None
    constraints = profile.find("constraints")
    assert constraints is not None, f"{name}'s profile has no constraints"
    return {
        setting.tag: {kind.tag: (kind.text or "").strip() for kind in setting}
        for setting in constraints
    }


def test_the_grafana_user_may_only_select_from_the_queuewatch_database(
    root: ElementTree.Element,
) -> None:
    assert _grants(_user(root, "grafana")) == [({"SELECT"}, f"{DATABASE}.*")]


def test_the_grafana_profile_reads_only_but_accepts_the_settings_its_plugin_sends(
    root: ElementTree.Element,
) -> None:
    settings = _profile_settings(root, _user(root, "grafana"))
    # 2, not 1: readonly=1 refuses the max_execution_time the plugin sends with every query.
    assert settings.get("readonly") == "2"
    assert settings.get("allow_ddl") == "0"
    assert settings.get("result_overflow_mode") == "throw"
    assert settings.get("timeout_overflow_mode") == "throw"


@pytest.mark.parametrize("limit", GRAFANA_LIMITS)
def test_every_grafana_limit_is_bounded_on_both_sides_so_zero_cannot_lift_it(
    root: ElementTree.Element, limit: str
) -> None:
    settings = _profile_settings(root, _user(root, "grafana"))
    bounds = _constraints(root, "grafana").get(limit)
    assert bounds is not None, f"a Grafana session could raise {limit} at will"
    # ClickHouse reads 0 as "unlimited": a max alone lets a session send 0.
    assert int(bounds.get("min", "0")) >= 1, f"{limit} may be set to 0 (no limit)"
    assert int(bounds["max"]) == int(settings[limit]), f"{limit}: the cap is not the default"


@pytest.mark.parametrize("setting", GRAFANA_PINNED)
def test_the_grafana_profile_pins_what_keeps_it_read_only_and_its_limits_refusing(
    root: ElementTree.Element, setting: str
) -> None:
    kinds = _constraints(root, "grafana").get(setting, {})
    assert {"const", "readonly"} & set(kinds), f"a Grafana session may change {setting}"
    assert "changeable_in_readonly" not in kinds


def test_every_constraint_is_of_a_kind_clickhouse_knows(root: ElementTree.Element) -> None:
    for name in ("migrator", "writer", "grafana"):
        for setting, kinds in _constraints(root, name).items():
            unknown = set(kinds) - CONSTRAINT_KINDS
            assert not unknown, f"{name}: {setting} has constraints {unknown}"


def test_the_grafana_plugin_timeout_fits_under_the_profiles_time_cap(
    root: ElementTree.Element,
) -> None:
    from tests.support.grafana import clickhouse_datasource

    # clickhouse-go (under the plugin) sends max_execution_time = query timeout + 5 s; above
    # the cap, ClickHouse refuses every query of the dashboard.
    timeout = int(clickhouse_datasource()["jsonData"]["queryTimeout"])
    cap = int(_constraints(root, "grafana")["max_execution_time"]["max"])
    assert timeout + 5 <= cap


@pytest.fixture(scope="module")
def engine_check(root: ElementTree.Element) -> dict[str, object]:
    """Each grant formatted by the ClickHouse engine shipped here, and its privilege levels."""
    # XML grants name no grantee; the engine's parser wants one, so each is tried "TO <user>".
    queries = [
        f"{(query.text or '').strip()} TO {user.tag}"
        for user in root.findall("users/*")
        for query in user.findall("grants/query")
    ]
    # In a child process: chdb keeps one engine per process, and other tests own theirs.
    script = (
        "import json, sys, chdb\n"
        "formatted = []\n"
        "for q in json.loads(sys.argv[1]):\n"
        '    quoted = q.replace("\'", "\\\\\'")\n'
        "    out = chdb.query(f\"SELECT formatQuery('{quoted}')\", 'TSVRaw')\n"
        "    formatted.append(str(out).strip())\n"
        "rows = chdb.query('SELECT privilege, level FROM system.privileges', 'JSONCompact')\n"
        "levels = {p: lv for p, lv in json.loads(str(rows))['data']}\n"
        "rows = chdb.query('SELECT name FROM system.settings', 'JSONCompact')\n"
        "settings = [r[0] for r in json.loads(str(rows))['data']]\n"
        "print(json.dumps({'formatted': formatted, 'levels': levels, 'settings': settings}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(queries)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, object] = json.loads(proc.stdout)
    result["queries"] = queries
    return result


def test_the_grants_parse_in_the_clickhouse_engine_shipped_here(
    engine_check: dict[str, object],
) -> None:
    assert engine_check["queries"]
    assert engine_check["formatted"] == engine_check["queries"]


def test_every_granted_privilege_exists_at_the_level_it_is_granted_on(
    root: ElementTree.Element, engine_check: dict[str, object]
) -> None:
    levels = engine_check["levels"]
    assert isinstance(levels, dict) and "INSERT" in levels
    for user in root.findall("users/*"):
        for privileges, target in _grants(user):
            allowed = _DATABASE_LEVELS if target.endswith(".*") else _TABLE_LEVELS
            for privilege in privileges - {"ALL"}:
                assert privilege in levels, f"{user.tag}: unknown privilege {privilege}"
                assert levels[privilege] in allowed, (
                    f"{user.tag}: {privilege} is a {levels[privilege]} privilege, "
                    f"it cannot be granted ON {target}"
                )


def test_every_profile_setting_and_constraint_names_a_setting_of_the_engine(
    root: ElementTree.Element, engine_check: dict[str, object]
) -> None:
    known = engine_check["settings"]
    assert isinstance(known, list) and "readonly" in known
    for profile in root.findall("profiles/*"):
        names = {child.tag for child in profile if child.tag != "constraints"}
        names |= {child.tag for child in profile.findall("constraints/*")}
        unknown = names - set(known)
        assert not unknown, f"profile {profile.tag}: no such settings {sorted(unknown)}"
