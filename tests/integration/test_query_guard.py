"""Each attack on the read path, replayed against the real embedded engine and refused.

The guard parses with the engine itself, so these hostile strings go through ClickHouse's own
parser: comments, case, backquotes, line breaks and statements hidden after a ``;`` are
resolved exactly as the engine would run them. Nothing may land on disk, and the refusal says
which construct and what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from queuewatch.clickhouse.exceptions import ClickHouseError, QueryRefusedError
from queuewatch.clickhouse.query import GuardedReader
from tests.integration.conftest import LIMITS

pytestmark = pytest.mark.integration


def outfile_attacks(target: Path) -> list[str]:
    """Every spelling of the `.pth` write: clauses, case, comments, line breaks."""
    t = str(target)
    return [
        f"SELECT 'import os' INTO OUTFILE '{t}'",
        f"SELECT 'import os' INTO OUTFILE '{t}' APPEND",
        f"SELECT 'import os' INTO OUTFILE '{t}' TRUNCATE",
        f"SELECT 'import os' INTO OUTFILE '{t}' AND STDOUT",
        f"SELECT 'import os' INTO OUTFILE '{t}' COMPRESSION 'gzip' LEVEL 1",
        f"SELECT 'import os' INTO OUTFILE '{t}' TRUNCATE FORMAT TSVRaw",
        f"select 'import os'\ninto  OUTFILE\n'{t}'\n",
        f"SeLeCt 'import os' InTo/**/OutFile '{t}' aPpEnD",
        f"SELECT 'import os' -- a comment\nINTO OUTFILE '{t}'",
        f"SELECT * FROM (SELECT 'import os') INTO OUTFILE '{t}'",
        f"SELECT 1 UNION ALL SELECT 2 INTO OUTFILE '{t}'",
        f"SHOW TABLES INTO OUTFILE '{t}'",
    ]


def test_every_into_outfile_variant_is_refused_and_writes_nothing(
    reader: GuardedReader, tmp_path: Path
) -> None:
    target = tmp_path / "site-packages" / "evil.pth"
    target.parent.mkdir()
    for sql in outfile_attacks(target):
        with pytest.raises(QueryRefusedError, match="INTO OUTFILE writes a file") as caught:
            reader.run(sql, "jsonl")
        assert "redirect the output" in str(caught.value), sql
    assert list(target.parent.iterdir()) == []


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT file('/proc/self/maps')",
        "SELECT FiLe('/proc/self/maps')",
        "SELECT `file`('/proc/self/maps')",
        "SELECT /**/file/**/('/proc/self/maps')",
        "SELECT length(file('/etc/passwd')) AS n",
        "SELECT arrayMap(x -> file(x), ['/etc/passwd'])",
        "SELECT 1 WHERE file('/etc/passwd') != ''",
        "SELECT (SELECT file('/etc/passwd'))",
        "WITH f AS (SELECT file('/etc/passwd') AS t) SELECT * FROM f",
    ],
)
def test_the_scalar_file_function_is_refused_however_it_is_spelled(
    reader: GuardedReader, sql: str
) -> None:
    with pytest.raises(
        QueryRefusedError, match=r"the function [Ff][Ii][Ll][Ee]\(\) is not allowed"
    ):
        reader.run(sql, "jsonl")


@pytest.mark.parametrize(
    ("sql", "name"),
    [
        ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "file"),
        ("SELECT * FROM FILE('/etc/passwd')", "FILE"),
        ("SELECT * FROM url('http://127.0.0.1:1/', 'CSV', 'a String')", "url"),
        ("SELECT * FROM s3('http://127.0.0.1:1/b/k', 'CSV', 'a String')", "s3"),
        ("SELECT * FROM hdfs('hdfs://127.0.0.1:1/x', 'CSV', 'a String')", "hdfs"),
        ("SELECT * FROM remote('127.0.0.1:1', system.one)", "remote"),
        ("SELECT * FROM mysql('127.0.0.1:1', 'd', 't', 'u', 'p')", "mysql"),
        ("SELECT * FROM postgresql('127.0.0.1:1', 'd', 't', 'u', 'p')", "postgresql"),
        ("SELECT * FROM executable('id', 'LineAsString', 'x String')", "executable"),
        ("SELECT * FROM input('x String')", "input"),
        ("SELECT * FROM jdbc('x', 'y', 'z')", "jdbc"),
        ("SELECT * FROM python('x')", "python"),
        ("SELECT * FROM merge('system', '.*')", "merge"),
        ("SELECT * FROM dictionary('d')", "dictionary"),
        ("SELECT * FROM system.one JOIN file('/etc/passwd') ON 1", "file"),
        ("SELECT count() FROM (SELECT * FROM url('http://x/'))", "url"),
    ],
)
def test_table_functions_outside_the_allow_list_are_refused(
    reader: GuardedReader, sql: str, name: str
) -> None:
    with pytest.raises(QueryRefusedError, match=rf"table function {name}\(\) is not allowed"):
        reader.run(sql, "jsonl")


@pytest.mark.parametrize(
    ("sql", "says"),
    [
        ("SELECT 1; SELECT file('/etc/passwd')", "several statements"),
        ("SELECT 1;\nINSERT INTO queue_reports (event_id) VALUES ('x')", "several statements"),
        ("SELECT 1 -- ;\n; DROP TABLE queue_reports", "several statements"),
        ("SELECT 1 SETTINGS readonly = 0", "SETTINGS clause"),
        ("SELECT count() FROM numbers(1e13) SETTINGS max_execution_time = 0", "SETTINGS clause"),
        ("SELECT 1 UNION ALL SELECT 2 SETTINGS max_result_rows = 0", "SETTINGS clause"),
        ("SELECT 1 FORMAT Native", "FORMAT clause"),
        ("SET readonly = 0", "SET statements"),
        ("SYSTEM SHUTDOWN", "SYSTEM statements"),
        ("system reload config", "SYSTEM statements"),
        ("KILL QUERY WHERE 1", "KILL statements"),
        ("INSERT INTO queue_reports (event_id) VALUES ('x')", "INSERT statements"),
        ("INSERT INTO queue_reports SELECT * FROM queue_reports", "INSERT statements"),
        ("CREATE TABLE t (x UInt8) ENGINE = Memory", "CREATE statements"),
        (
            "CREATE DICTIONARY d (x UInt64) PRIMARY KEY x "
            "SOURCE(FILE(path '/etc/passwd' format 'CSV')) LAYOUT(FLAT()) LIFETIME(0)",
            "CREATE statements",
        ),
        ("DROP TABLE queue_reports", "DROP statements"),
        ("TRUNCATE TABLE queue_reports", "statements are not allowed"),
        ("ALTER TABLE queue_reports DELETE WHERE 1", "ALTER statements"),
        ("EXPLAIN SELECT 1", "EXPLAIN statements"),
        ("USE system", "USE statements"),
        ("SELECT dictGet('d', 'x', toUInt64(1))", r"dictGet\(\)"),
        ("SELECT dictHas('d', toUInt64(1))", r"dictHas\(\)"),
        ("SELECT joinGet('t', 'x', 1)", r"joinGet\(\)"),
        ("SELECT hasColumnInTable('127.0.0.1', 9000, 'u', 'p', 'd', 't', 'c')", "hasColumnInTable"),
        ("SELECT * FROM system.processes", "system.processes is not readable"),
        ("SELECT query FROM system.query_log", "system.query_log is not readable"),
        ("SELECT 1 IN system.users", "system.users is not readable"),
        ("SELECT * FROM `system`.`users`", "system.users is not readable"),
        ("SELECT * FROM default.t", "outside the database queuewatch"),
        (
            "SELECT * FROM QUEUEWATCH.queue_reports",
            "outside the database",
        ),  # names are case-sensitive
        ("   ", "the query is empty"),
    ],
)
def test_other_attacks_are_refused_naming_what_and_why(
    reader: GuardedReader, sql: str, says: str
) -> None:
    with pytest.raises(QueryRefusedError, match=says):
        reader.run(sql, "jsonl")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count() AS n FROM queue_reports FINAL",
        "select COUNT() as n from queuewatch.queue_reports",
        "SELECT count() AS n FROM queuewatch.crossing_status",
        "WITH w AS (SELECT * FROM crossing_windows) SELECT count() AS n FROM w",
        "SELECT count() AS n FROM (SELECT 1 UNION ALL SELECT 2)",
        "SELECT count() AS n FROM numbers(10)",
        "SELECT count() AS n FROM system.tables WHERE database = 'queuewatch'",
        "SELECT 'INTO OUTFILE ''/tmp/x''; file(''/etc/passwd'')' AS n",  # only a string
        "SELECT 1 AS n -- INTO OUTFILE '/tmp/x'",
        "SELECT 1 AS n; ",
    ],
)
def test_reads_of_the_projections_pass(reader: GuardedReader, sql: str) -> None:
    assert reader.run(sql, "jsonl")


def test_a_query_that_runs_long_ends_by_the_time_limit_with_what_to_do(
    reader: GuardedReader,
) -> None:
    with pytest.raises(ClickHouseError) as caught:
        reader.run("SELECT count() FROM numbers(1e13)", "jsonl")
    assert caught.value.name == "TIMEOUT_EXCEEDED"
    assert "QUEUEWATCH_QUERY_MAX_EXECUTION_TIME_S" in str(caught.value)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT number FROM numbers(100000)",  # rows over max_result_rows
        "SELECT groupArray(number) FROM numbers(1000000)",  # bytes over max_result_bytes
    ],
)
def test_a_result_over_the_limits_is_refused_not_cut(reader: GuardedReader, sql: str) -> None:
    with pytest.raises(ClickHouseError) as caught:
        reader.run(sql, "jsonl")
    assert caught.value.name == "TOO_MANY_ROWS_OR_BYTES"


def test_the_session_itself_refuses_to_raise_its_limits(reader: GuardedReader) -> None:
    """Beneath the guard, ``readonly=1`` keeps the limits even for a statement it missed."""
    with pytest.raises(Exception, match="READONLY"):
        reader.client.command("SET max_execution_time = 0")
    rows: Any = reader.client.query("SELECT getSetting('max_execution_time')").result_rows
    assert float(rows[0][0]) == LIMITS.max_execution_time_s
