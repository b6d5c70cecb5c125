"""The guard's decisions on syntax trees shaped like ClickHouse's ``parseQueryToJSON`` output.

The hostile SQL itself (comments, case, backquotes, multi-statements) is parsed by the real
engine in ``tests/integration/test_query_guard.py``; here each rule of :func:`decide` is
pinned on a small tree.
"""

from __future__ import annotations

from typing import Any

import pytest

from queuewatch.clickhouse.exceptions import QueryRefusedError
from queuewatch.clickhouse.guard import QueryLimits, decide

DB = "queuewatch"


def select(**clauses: Any) -> dict[str, Any]:
    """``SELECT ... [FROM ...]`` with ``clauses`` on the SelectQuery node."""
    query = {"type": "SelectQuery", "select": {"type": "ExpressionList", "children": []}}
    query.update(clauses)
    return {
        "type": "SelectWithUnionQuery",
        "list_of_selects": {"type": "ExpressionList", "children": [query]},
    }


def function(name: str, *args: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "Function",
        "name": name,
        "arguments": {"type": "ExpressionList", "children": list(args)},
    }


def from_table(*parts: str) -> dict[str, Any]:
    return {
        "type": "TablesInSelectQuery",
        "children": [
            {
                "type": "TablesInSelectQueryElement",
                "table_expression": {
                    "type": "TableExpression",
                    "database_and_table_name": {
                        "type": "TableIdentifier",
                        "name": ".".join(parts),
                        "name_parts": list(parts),
                    },
                },
            }
        ],
    }


def from_function(name: str) -> dict[str, Any]:
    return {
        "type": "TablesInSelectQuery",
        "children": [
            {
                "type": "TablesInSelectQueryElement",
                "table_expression": {"type": "TableExpression", "table_function": function(name)},
            }
        ],
    }


def literal(value: str) -> dict[str, Any]:
    return {"type": "Literal", "value": {"field_type": "String", "value": value}}


@pytest.mark.parametrize(
    "tree",
    [
        select(tables=from_table("queuewatch", "queue_reports")),
        select(tables=from_table("crossing_status")),  # unqualified: our database or a CTE
        select(tables=from_table("system", "numbers")),
        select(tables=from_table("SYSTEM", "Tables")),
        select(tables=from_function("numbers")),
        select(tables=from_function("generate_series")),
        select(
            select={"type": "ExpressionList", "children": [function("toStartOfHour", literal("x"))]}
        ),
        {"type": "ShowTablesQuery"},
    ],
)
def test_reads_of_our_tables_generators_and_the_catalogue_pass(tree: dict[str, Any]) -> None:
    decide(tree, DB)


@pytest.mark.parametrize(
    ("tree", "says"),
    [
        ({"type": "InsertQuery"}, "INSERT statements are not allowed"),
        ({"type": "SystemQuery"}, "SYSTEM statements"),
        ({"type": "KillQueryQuery"}, "KILL statements"),
        ({"type": "SetQuery", "is_standalone": True}, "SET statements"),
        ({"type": "CreateQuery", "is_dictionary": True}, "CREATE statements"),
        ({"type": "ExplainQuery", "query": select()}, "EXPLAIN statements"),
        ({"type": "UseQuery"}, "USE statements"),
        ({**select(), "out_file": literal("/x.pth")}, "INTO OUTFILE"),
        ({**select(), "out_file": literal("/x.pth"), "is_outfile_append": True}, "INTO OUTFILE"),
        ({**select(), "is_into_outfile_with_stdout": True}, "INTO OUTFILE"),
        ({**select(), "format_ast": {"type": "Identifier", "name": "CSV"}}, "FORMAT clause"),
        (select(settings={"type": "SetQuery", "changes": []}), "SETTINGS clause"),
        ({**select(), "settings_ast": {"type": "SetQuery"}}, "SETTINGS clause"),
        (select(tables=from_function("file")), r"table function file\(\)"),
        (select(tables=from_function("URL")), r"table function URL\(\)"),
        (select(tables=from_function("s3")), r"table function s3\(\)"),
        (select(tables=from_function("remote")), r"table function remote\(\)"),
        (select(tables=from_function("executable")), r"table function executable\(\)"),
        (select(tables=from_function("python")), r"table function python\(\)"),
        (select(tables=from_function("dictionary")), r"table function dictionary\(\)"),
        (select(tables=from_function("merge")), r"table function merge\(\)"),
        (select(tables=from_function("a_function_a_later_clickhouse_adds")), "table function"),
        (
            select(
                select={
                    "type": "ExpressionList",
                    "children": [function("file", literal("/etc/passwd"))],
                }
            ),
            r"function file\(\)",
        ),
        (
            select(select={"type": "ExpressionList", "children": [function("FILE")]}),
            r"function FILE\(\)",
        ),
        (
            select(select={"type": "ExpressionList", "children": [function("dictGetOrDefault")]}),
            "dictGetOrDefault",
        ),
        (select(select={"type": "ExpressionList", "children": [function("joinGet")]}), "joinGet"),
        (
            select(where=function("plus", function("lambda", function("file")))),
            r"function file\(\)",
        ),
        (select(tables=from_table("system", "query_log")), r"system.query_log is not readable"),
        (select(tables=from_table("system", "users")), "system.users"),
        (select(tables=from_table("default", "t")), "outside the database queuewatch"),
        (select(tables=from_table("INFORMATION_SCHEMA", "tables")), "outside the database"),
        (select(tables=from_table("a", "b", "c")), "outside the database"),
        (
            select(
                where=function(
                    "in",
                    literal("1"),
                    {
                        "type": "Identifier",
                        "name": "system.users",
                        "name_parts": ["system", "users"],
                    },
                )
            ),
            "system.users",
        ),
    ],
)
def test_everything_else_is_refused_naming_the_construct(tree: dict[str, Any], says: str) -> None:
    with pytest.raises(QueryRefusedError, match=says):
        decide(tree, DB)


def test_a_subquery_deep_in_the_tree_is_checked_like_the_top() -> None:
    inner = select(tables=from_function("file"))
    tree = select(where=function("in", literal("x"), {"type": "Subquery", "children": [inner]}))
    with pytest.raises(QueryRefusedError, match="file"):
        decide(tree, DB)


def test_limits_are_applied_before_readonly_which_freezes_every_setting() -> None:
    settings = QueryLimits(5.0, 1000, 10, 100).session_settings()
    assert list(settings)[-1] == "readonly" and settings["readonly"] == 1
    assert settings["max_execution_time"] == 5.0
    assert settings["result_overflow_mode"] == "throw"
    assert settings["timeout_overflow_mode"] == "throw"


class FakeServerClient:
    """What readonly_client reads of a server client: its settings and whether each is fixed."""

    def __init__(self, fixed: set[str]) -> None:
        from clickhouse_connect.driver.models import SettingDef

        self.server_settings = {
            name: SettingDef(name, "1", 1 if name in fixed else 0)
            for name in QueryLimits(1.0, 1, 1, 1).session_settings()
        }
        self.applied: dict[str, Any] = {}

    def set_client_setting(self, key: str, value: Any) -> None:
        self.applied[key] = value


def test_on_a_server_the_limits_a_read_only_profile_fixes_are_left_to_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from queuewatch.clickhouse import query

    fake = FakeServerClient(fixed={"readonly", "max_execution_time"})
    monkeypatch.setattr(query, "connect", lambda url, database=None, settings=None: fake)
    limits = QueryLimits(5.0, 1000, 10, 100)
    query.readonly_client("http://reader@ch:8123", DB, limits)
    assert "max_execution_time" not in fake.applied and "readonly" not in fake.applied
    assert fake.applied["max_result_rows"] == 10
    assert fake.applied["result_overflow_mode"] == "throw"
