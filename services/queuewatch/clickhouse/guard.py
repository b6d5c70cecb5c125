"""The door of every read path: ClickHouse's own parser says what a query is, an allow-list
says whether it runs.

``readonly=1`` alone is not enough. It refuses INSERT, DDL and SET, but ClickHouse still lets a
read-only session call the scalar ``file('/any/path')`` (reads any file) and run
``SELECT ... INTO OUTFILE`` (writes any file, e.g. a ``.pth`` that Python runs at the next
start). So every query of `queuewatch query`, of the embedded endpoint and of `status` passes
this guard first:

1. **Parse with the engine.** ``parseQueryToJSON`` and ``formatQuery`` run on the same client
   that will run the query, the text bound as a query parameter (never spliced into SQL). The
   parser refuses several statements in one text itself; comments, case and backquotes are
   gone once parsed, so no spelling trick reaches the decision.
2. **Decide on the tree** (:func:`decide`, pure): the statement must be a SELECT (WITH, UNION,
   INTERSECT, subqueries) or SHOW TABLES; it may read tables of our database, CTEs and the
   system tables in :data:`SAFE_SYSTEM_TABLES`, and only the table functions in
   :data:`ALLOWED_TABLE_FUNCTIONS`; no function of :data:`DENIED_FUNCTIONS` (files,
   dictionaries, joins to engine tables, remote probes, introspection) anywhere; no
   ``INTO OUTFILE``, no ``FORMAT`` (the caller picks it), no ``SETTINGS`` (the limits are ours).
3. **Run what was checked**: the engine's own formatting of the parsed tree, with the limits
   of :class:`QueryLimits` and ``readonly=1`` as session settings, so even a construct this
   guard failed to foresee cannot raise a limit or write.

Table functions are an allow-list (everything not named is refused, including ones a later
ClickHouse adds). Scalar functions are a deny-list: ClickHouse has some 1,500 and almost all
compute on their arguments; the few that reach outside the query are listed by name and by
prefix, and the engine's aliases of them are looked up in ``system.functions`` when a guard is
made. A later TCP interface (issue 14) runs its queries through the same :class:`QueryGuard`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from queuewatch.clickhouse.client import clickhouse_errors
from queuewatch.clickhouse.exceptions import ClickHouseError, QueryRefusedError

#: The only statement kinds a read may be. Everything else (INSERT, CREATE, ALTER, DROP,
#: SYSTEM, KILL, SET, USE, OPTIMIZE, EXPLAIN, DESCRIBE ...) is refused, named by its kind.
ALLOWED_STATEMENTS = frozenset({"SelectWithUnionQuery", "ShowTablesQuery"})

#: Table functions that only generate rows from their arguments: no file, socket, process,
#: other table or dictionary behind them.
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {"numbers", "numbers_mt", "zeros", "zeros_mt", "values", "generateseries", "generate_series"}
)

#: system tables a user may read: generators and the catalogue of our own schema. Not the
#: logs (other users' query texts), users, grants, disks, processes or dictionaries.
SAFE_SYSTEM_TABLES = frozenset(
    {
        "one",
        "numbers",
        "numbers_mt",
        "zeros",
        "zeros_mt",
        "databases",
        "tables",
        "columns",
        "parts",
        "functions",
        "table_functions",
        "data_type_families",
        "settings",
    }
)

#: Scalar functions that read outside the query, compared in lower case (ClickHouse resolves
#: some names case-insensitively): a file, a dictionary's source, a Join table, a remote server,
#: a model file, the process's memory.
DENIED_FUNCTIONS = frozenset(
    {
        "file",
        "joinget",
        "joingetornull",
        "hascolumnintable",
        "catboostevaluate",
        "modelevaluate",
        "naivebayesclassifier",
        "addresstoline",
        "addresstolinewithinlines",
        "addresstosymbol",
        "demangle",
        "input",
    }
)
#: Every ``dictGet*``, ``dictHas``, ``dictIsIn``...: dictionaries load from sources (files,
#: URLs, databases), so none is reachable from a read.
DENIED_FUNCTION_PREFIXES = ("dict",)

#: Functions whose second argument names a table when it is a bare identifier (``x IN db.t``),
#: the ``...IgnoreSet`` forms included: `inIgnoreSet(1, system.processes)` still reads the table
#: into a set.
_IN_FUNCTIONS = frozenset(
    f"{glob}{neg}{null}in{ignore}"
    for glob in ("", "global")
    for neg in ("", "not")
    for null in ("", "null")
    for ignore in ("", "ignoreset")
)

READ_ONLY_HINT = (
    "the schema changes only through `queuewatch migrate` and the data only through the sinks"
)
UNSUPPORTED_BY_PARSER = 36
UNKNOWN_FUNCTION = 46  # parseQueryToJSON cannot serialise this statement kind
SYNTAX_ERROR = 62


@dataclass(frozen=True)
class QueryLimits:
    """What one guarded query may cost; applied as ClickHouse settings, ``readonly`` last."""

    max_execution_time_s: float
    max_memory_bytes: int
    max_result_rows: int
    max_result_bytes: int

    def session_settings(self) -> dict[str, Any]:
        """Settings of a read-only session, in the order they must be applied.

        The embedded engine applies session settings one by one with SET, and once
        ``readonly=1`` is set no setting may change: so the limits come first, readonly last.
        """
        return {
            # 64-bit integers as JSON numbers, not strings, so jsonl rows are plain JSON.
            "output_format_json_quote_64bit_integers": 0,
            "max_execution_time": self.max_execution_time_s,
            "timeout_overflow_mode": "throw",
            "max_memory_usage": self.max_memory_bytes,
            "max_result_rows": self.max_result_rows,
            "max_result_bytes": self.max_result_bytes,
            "result_overflow_mode": "throw",
            "readonly": 1,
        }


#: Output formats a client of the HTTP interface may name in a FORMAT clause: text and the
#: binary ones clickhouse-connect reads. None writes a file or reads a schema from one.
HTTP_FORMATS = frozenset(
    {
        "TabSeparated",
        "TabSeparatedWithNames",
        "TabSeparatedWithNamesAndTypes",
        "TSV",
        "TSVWithNames",
        "TSVWithNamesAndTypes",
        "TSVRaw",
        "CSV",
        "CSVWithNames",
        "CSVWithNamesAndTypes",
        "JSON",
        "JSONCompact",
        "JSONEachRow",
        "JSONCompactEachRow",
        "JSONStringsEachRow",
        "Pretty",
        "PrettyCompact",
        "PrettyCompactMonoBlock",
        "Values",
        "Native",
        "RowBinary",
        "RowBinaryWithNamesAndTypes",
        "Arrow",
        "ArrowStream",
        "Parquet",
    }
)


@dataclass(frozen=True)
class CheckedQuery:
    """A query the guard let through: the text to run is the engine's formatting of it.

    ``format`` is the output format its FORMAT clause named (HTTP interface only), taken off
    ``text`` so the caller applies it.
    """

    text: str
    format: str | None = None


class QueryGuard:
    """Checks queries for one database on one engine (see the module's numbered steps)."""

    def __init__(self, database: str, denied: frozenset[str] = DENIED_FUNCTIONS) -> None:
        self.database = database
        self.denied = denied

    @classmethod
    def for_client(cls, client: Any, database: str) -> QueryGuard:
        """A guard whose deny-list also holds the engine's aliases of the denied functions."""
        names = ", ".join(f"'{name}'" for name in sorted(DENIED_FUNCTIONS))
        prefixes = " OR ".join(
            f"startsWith(lower(alias_to), '{p}')" for p in DENIED_FUNCTION_PREFIXES
        )
        with clickhouse_errors("reading the engine's function aliases"):
            rows = client.query(
                "SELECT lower(name) FROM system.functions "
                f"WHERE lower(alias_to) IN ({names}) OR {prefixes}"
            ).result_rows
        return cls(database, DENIED_FUNCTIONS | frozenset(str(row[0]) for row in rows))

    def check(self, client: Any, sql: str, *, allow_format: bool = False) -> CheckedQuery:
        """Parse ``sql`` with the engine behind ``client`` and decide; raise QueryRefusedError.

        ``allow_format`` (the HTTP interface, whose clients name their format in the query)
        lets a FORMAT clause of :data:`HTTP_FORMATS` on the outermost query through.
        """
        statement = sql.strip()
        if not statement:
            raise QueryRefusedError("the query is empty; pass a SELECT")
        ast, text = parse(client, statement)
        fmt = None
        if allow_format and "format_ast" in ast:
            fmt, text = _split_format(ast, text.strip().rstrip(";"))
        decide(ast, self.database, self.denied)
        return CheckedQuery(text.strip().rstrip(";"), fmt)


def _split_format(ast: dict[str, Any], text: str) -> tuple[str, str]:
    """The outermost FORMAT's name and ``text`` without it; ``ast`` loses its ``format_ast``."""
    name = str(ast.pop("format_ast").get("name", ""))
    if name not in HTTP_FORMATS:
        raise QueryRefusedError(
            f"the output format {name} is not allowed here; use one of "
            f"{', '.join(sorted(HTTP_FORMATS))}"
        )
    clause = re.search(rf"\s+FORMAT\s+{re.escape(name)}\s*$", text)
    if clause is None:  # the engine's own formatting always ends with it; refuse if not
        raise QueryRefusedError("the FORMAT clause must end the query")
    return name, text[: clause.start()]


def parse(client: Any, sql: str) -> tuple[dict[str, Any], str]:
    """The engine's syntax tree of ``sql`` (as JSON) and its canonical text.

    The text travels as a bound parameter, so nothing in it is ever read as SQL here.
    """
    try:
        with clickhouse_errors("parsing the query"):
            rows = client.query(
                "SELECT parseQueryToJSON({q:String}), formatQuery({q:String})",
                parameters={"q": sql},
            ).result_rows
    except ClickHouseError as exc:
        message = _engine_message(str(exc.args[0]))
        if exc.code == SYNTAX_ERROR and "Multi-statements" in message:
            raise QueryRefusedError(
                "several statements in one query; send one SELECT at a time"
            ) from exc
        if exc.code == UNSUPPORTED_BY_PARSER:
            raise QueryRefusedError(_statement_refusal(message)) from exc
        if exc.code == UNKNOWN_FUNCTION:
            raise ClickHouseError(
                "this ClickHouse has no parseQueryToJSON (added in 26.8), which the query "
                "guard needs to read a query before running it; upgrade the server to 26.8 or "
                "later, or query it with clickhouse-client as its read-only user",
                exc.code,
                exc.name,
                retryable=False,
            ) from exc
        if exc.code == SYNTAX_ERROR:
            raise ClickHouseError(
                f"the query is not valid SQL: {message}", exc.code, exc.name, retryable=False
            ) from exc
        raise
    tree, text = rows[0]
    return json.loads(tree), str(text)


def decide(ast: dict[str, Any], database: str, denied: frozenset[str] = DENIED_FUNCTIONS) -> None:
    """Raise QueryRefusedError unless the parsed query only reads what a user may read.

    Pure: ``ast`` is what ``parseQueryToJSON`` returns. The first refusal wins.
    """
    kind = str(ast.get("type"))
    if kind not in ALLOWED_STATEMENTS:
        raise QueryRefusedError(
            f"{_statement_name(kind)} statements are not allowed here: this path only reads "
            f"(SELECT, WITH, UNION, subqueries, SHOW TABLES); {READ_ONLY_HINT}"
        )
    for node, key in _walk(ast, None):
        _check_node(node, key, database, denied)


def _check_node(
    node: dict[str, Any], key: str | None, database: str, denied: frozenset[str]
) -> None:
    kind = node.get("type")
    if "out_file" in node or node.get("is_into_outfile_with_stdout"):
        raise QueryRefusedError(
            "INTO OUTFILE writes a file on this machine and is never allowed; drop the clause "
            "and redirect the output of `queuewatch query` instead (`> file.csv`)"
        )
    if "format_ast" in node:
        raise QueryRefusedError(
            "a FORMAT clause is not allowed: the output format is chosen by the caller; use "
            "`queuewatch query --format table|jsonl|csv`"
        )
    if kind == "SetQuery":
        raise QueryRefusedError(
            "a SETTINGS clause is not allowed: the limits of every query are set by "
            "QUEUEWATCH_QUERY_* settings of the process that runs it"
        )
    if kind == "Function":
        name = str(node.get("name", ""))
        lowered = name.lower()
        if key == "table_function":
            if lowered not in ALLOWED_TABLE_FUNCTIONS:
                raise QueryRefusedError(
                    f"the table function {name}() is not allowed: it reads outside the "
                    f"database {database}; only {', '.join(sorted(ALLOWED_TABLE_FUNCTIONS))} "
                    "are, or read a table of the database"
                )
        else:
            _check_function(name, database, denied)
        if lowered in _IN_FUNCTIONS:
            args = (node.get("arguments") or {}).get("children") or []
            if len(args) == 2 and args[1].get("type") == "Identifier":
                _check_table(args[1], database)
    if "func_name" in node:
        # A column transformer names its function without calling it: `* APPLY(file)`,
        # `COLUMNS('p') APPLY(file)` run file() on every column all the same.
        _check_function(str(node["func_name"]), database, denied)
    if kind == "TableIdentifier":
        _check_table(node, database)


def _check_function(name: str, database: str, denied: frozenset[str]) -> None:
    lowered = name.lower()
    if lowered in denied or lowered.startswith(DENIED_FUNCTION_PREFIXES):
        raise QueryRefusedError(
            f"the function {name}() is not allowed: it reads outside the query (files, "
            "dictionaries, other tables or servers); use the tables and views of the "
            f"database {database}"
        )


def _check_table(node: dict[str, Any], database: str) -> None:
    parts = [str(p) for p in node.get("name_parts") or [node.get("name", "")]]
    if len(parts) == 1:
        return  # unqualified: our database (the session's default) or a CTE
    if len(parts) == 2:
        db, table = parts
        if db == database:
            return
        if db.lower() == "system" and table.lower() in SAFE_SYSTEM_TABLES:
            return
        if db.lower() == "system":
            raise QueryRefusedError(
                f"system.{table} is not readable here; of the system tables only "
                f"{', '.join(sorted(SAFE_SYSTEM_TABLES))} are"
            )
    raise QueryRefusedError(
        f"the table {'.'.join(parts)} is outside the database {database}; read the tables "
        f"and views of {database} (`SHOW TABLES` lists them)"
    )


def _walk(node: Any, key: str | None) -> Iterator[tuple[dict[str, Any], str | None]]:
    """Every dict of the tree with the key it hangs under (``table_function``, ``where``...)."""
    if isinstance(node, dict):
        yield node, key
        for child_key, child in node.items():
            yield from _walk(child, child_key)
    elif isinstance(node, list):
        for child in node:
            yield from _walk(child, key)


def _statement_name(kind: str) -> str:
    """``InsertQuery`` -> ``INSERT``: the statement as a user wrote it."""
    base = kind.removesuffix("Query")
    known = {
        "Insert": "INSERT",
        "Create": "CREATE",
        "Drop": "DROP",
        "Alter": "ALTER",
        "Rename": "RENAME",
        "System": "SYSTEM",
        "KillQuery": "KILL",
        "Set": "SET",
        "Use": "USE",
        "Optimize": "OPTIMIZE",
        "Explain": "EXPLAIN",
        "Check": "CHECK",
        "Grant": "GRANT",
        "Watch": "WATCH",
        "Undrop": "UNDROP",
        "Delete": "DELETE",
        "Backup": "BACKUP",
        "Describe": "DESCRIBE",
        "ExistsTable": "EXISTS",
        "ShowCreateTable": "SHOW CREATE",
    }
    return known.get(base, base or "this")


def _statement_refusal(message: str) -> str:
    """The refusal for a statement the parser cannot even serialise (DESCRIBE, INSERT ...)."""
    kind = message.split("'")[1].split("__")[0] if "'" in message else ""
    if "INSERT" in message:
        kind = "InsertQuery"
    if kind in {"DescribeQuery", "ExistsTableQuery", "ShowCreateTableQuery"}:
        hint = "`SELECT * FROM system.columns WHERE table = '...'` describes a table"
    else:
        hint = READ_ONLY_HINT
    return (
        f"{_statement_name(kind)} statements are not allowed here: this path only reads "
        f"(SELECT, WITH, UNION, subqueries, SHOW TABLES); {hint}"
    )


def _engine_message(text: str) -> str:
    """ClickHouse's message without the wrapping of our parse call (``In scope SELECT ...``)."""
    text = text.split(": In scope SELECT parseQueryToJSON", 1)[0]
    text = text.split(". : In scope SELECT parseQueryToJSON", 1)[0]
    return text.split("DB::Exception: ", 1)[-1].strip()
