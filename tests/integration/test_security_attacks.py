"""Attacks on issue 13's controls that got through, replayed against the real engine.

Each test here failed before its fix: the attack read a file, or got a secret shown, through
a control that ``docs/security.md`` says closes it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from queuewatch.clickhouse.exceptions import QueryRefusedError
from queuewatch.clickhouse.query import GuardedReader

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "template",
    [
        "SELECT * APPLY(file) FROM (SELECT '{path}' AS p)",
        "SELECT * APPLY file FROM (SELECT '{path}' AS p)",
        "SELECT COLUMNS('p') APPLY(file) FROM (SELECT '{path}' AS p)",
        "SELECT s.* APPLY(FiLe) FROM (SELECT '{path}' AS p) AS s",
        "SELECT * EXCEPT (q) APPLY(file) FROM (SELECT '{path}' AS p, 1 AS q)",
        "SELECT * APPLY(dictGetString) FROM (SELECT '{path}' AS p)",
    ],
)
def test_a_function_named_by_a_column_transformer_is_checked_like_a_call(
    reader: GuardedReader, tmp_path: Path, template: str
) -> None:
    """``SELECT * APPLY(file)`` names the function in a transformer, not in a call: the
    guard looked at calls only, so this read any file the operator can."""
    secret = tmp_path / "secret.txt"
    secret.write_text("the operator's secret\n")
    sql = template.format(path=secret)
    with pytest.raises(QueryRefusedError, match=r"the function \w+\(\) is not allowed"):
        reader.run(sql, "jsonl")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT inIgnoreSet(1, system.processes)",
        "SELECT notInIgnoreSet(1, system.processes)",
        "SELECT globalInIgnoreSet(1, system.processes)",
        "SELECT globalNotNullInIgnoreSet(1, system.processes)",
        "SELECT nullInIgnoreSet('x', default.t)",
    ],
)
def test_the_ignore_set_forms_of_in_are_checked_for_their_table(
    reader: GuardedReader, sql: str
) -> None:
    """`inIgnoreSet(x, system.processes)` reads the table into a set like `x IN` does, but the
    guard knew only the plain IN names, so the table allow-list did not apply."""
    with pytest.raises(QueryRefusedError, match=r"(not readable here|outside the database)"):
        reader.run(sql, "jsonl")
