"""How ClickHouse serves the windows: stored rows, or assembled from contributions when read.

With output ``windows`` (the default) ``crossing_windows`` and ``window_latest`` are tables,
written by the window sink and by ``window_latest_mv``. With output ``contributions`` they
are views over ``crossing_contributions`` (:mod:`queuewatch.clickhouse.assembly`): every
past window is computed from the reports it holds when it is read, so ClickHouse stores one
row per report instead of one per window a report lies in (48 with the default families).
``current_windows``, ``crossing_status`` and every consumer query read them by name and see
the same columns and keys either way.

Why views made here and not a migration file: the windows' families and the consensus rules
are literals in the view's query, so the views follow the aggregator's settings, and which
layout a database has follows the output it is fed by. The contributions sink calls
:func:`serve_assembled` when it starts (same settings, same views: a no-op in effect); the
window sink and ``rebuild --windows`` call :func:`require_stored`, so the two layouts never
mix in one database. Windows stored before a switch are kept, renamed ``*_stored``, not
dropped: the log can rebuild them, but the switch should not cost anyone their data.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, Literal

from queuewatch.aggregator.state import AggregationConfig
from queuewatch.clickhouse.assembly import CONTRIBUTIONS, windows_select
from queuewatch.clickhouse.client import ENGINE_LOCK, clickhouse_errors
from queuewatch.clickhouse.migrations import check_database_name
from queuewatch.errors import ConfigurationError

log = logging.getLogger(__name__)

#: The two objects whose layout depends on the output, and the feed of the second.
WINDOWS = "crossing_windows"
LATEST = "window_latest"
LATEST_MV = "window_latest_mv"
#: Where the rows of a stored layout go when a database switches to assembled windows.
STORED_SUFFIX = "_stored"
#: The views' queries carry every rule as a literal; far below ClickHouse's default limit of
#: 256 KiB, but a view is read back by ``SHOW CREATE`` and by every query that names it.
_MAX_QUERY_BYTES = 1 << 20

Layout = Literal["stored", "assembled", "none"]


def _tables(client: Any, database: str) -> dict[str, tuple[str, str]]:
    """Name -> (engine, comment) of every table and view of ``database``."""
    with ENGINE_LOCK, clickhouse_errors(f"reading the tables of {database}"):
        rows = client.query(
            "SELECT name, engine, comment FROM system.tables WHERE database = {d:String}",
            parameters={"d": database},
        ).result_rows
    return {str(name): (str(engine), str(comment)) for name, engine, comment in rows}


def _engines(client: Any, database: str) -> dict[str, str]:
    return {name: engine for name, (engine, _) in _tables(client, database).items()}


def layout(client: Any, database: str) -> Layout:
    """``stored`` (tables), ``assembled`` (views over contributions) or ``none`` (no schema)."""
    engines = _engines(client, database)
    engine = engines.get(WINDOWS)
    if engine is None:
        # A switch interrupted between dropping the table and making the view.
        return "assembled" if CONTRIBUTIONS in engines else "none"
    return "assembled" if engine == "View" else "stored"


def require_stored(client: Any, database: str, who: str) -> None:
    """Refuse ``who`` (the window sink, a windows rebuild) when the windows are assembled.

    Writing window rows into a database whose windows are views over contributions would
    fail at the first insert, or worse, under another layout, mix two sources of truth.
    """
    found = layout(client, database)
    if found == "stored" and LATEST_MV not in _engines(client, database):
        raise ConfigurationError(
            f"{who}: {database}.{LATEST_MV} is missing, so window_latest and crossing_status "
            "would stop following the windows written. A switch to output contributions was "
            "interrupted: finish it with `queuewatch migrate` under "
            "QUEUEWATCH_AGGREGATOR_OUTPUT=contributions, or, to stay with output windows, "
            "use a fresh database (QUEUEWATCH_CLICKHOUSE_DATABASE) and replay the windows topic"
        )
    if found == "assembled":
        raise ConfigurationError(
            f"{who}: {database}.{WINDOWS} is a view over crossing_contributions here (the "
            "contributions sink made it: QUEUEWATCH_AGGREGATOR_OUTPUT=contributions), so there "
            "is no window table to write. Set QUEUEWATCH_AGGREGATOR_OUTPUT to the output this "
            "database is fed by, or give output windows a database of its own "
            "(QUEUEWATCH_CLICKHOUSE_DATABASE) and replay the windows topic into it"
        )


def view_statements(database: str, config: AggregationConfig) -> dict[str, tuple[str, str]]:
    """Name -> (statement, digest) of the two views, for these families and consensus rules.

    The view carries the digest of its query as its comment, so a sink that starts with the
    same settings finds the views as they should be and changes nothing (under compose the
    sinks' user may not run DDL: ``queuewatch migrate`` makes them, as the DDL user).
    """
    args = (config.families, config.consensus, config.consensus_max_size, f"`{database}`")
    out = {}
    for name, select in ((WINDOWS, windows_select(*args)), (LATEST, windows_select(*args, True))):
        digest = "queuewatch assembly sha256:" + hashlib.sha256(select.encode()).hexdigest()
        statement = f"CREATE OR REPLACE VIEW `{database}`.{name} AS {select} COMMENT '{digest}'"
        out[name] = (statement, digest)
    return out


def serve_assembled(client: Any, database: str, config: AggregationConfig) -> list[str]:
    """Make ``crossing_windows`` and ``window_latest`` views over the contributions.

    A database migrated for stored windows has ``window_latest_mv`` dropped and its window
    tables renamed (``*_stored``) or, when empty, dropped; the views are then made from
    ``config``, unless they already are (their comment holds the digest of their query).
    Returns what it changed.

    Every step is read from the catalogue just before it is taken and written to be taken
    again (``IF EXISTS``; an object already in its end state is left alone), so a switch
    interrupted at any step (a crash, a refused statement) is finished by the next call, and
    two processes starting at once end in the same schema.
    """
    check_database_name(database)
    if CONTRIBUTIONS not in _engines(client, database):
        raise ConfigurationError(
            f"{database} has no {CONTRIBUTIONS}: run the migrations first (`queuewatch migrate`)"
        )
    done: list[str] = []
    db = f"`{database}`"
    with ENGINE_LOCK, clickhouse_errors(f"switching {database} to assembled windows"):
        if LATEST_MV in _engines(client, database):
            client.command(f"DROP VIEW IF EXISTS {db}.{LATEST_MV}")
            done.append(f"dropped {LATEST_MV}")
        for name in (WINDOWS, LATEST):
            engine = _engines(client, database).get(name)
            if engine is None or engine == "View":
                continue
            rows = int(client.command(f"SELECT count() FROM {db}.{name}"))
            if rows == 0:
                client.command(f"DROP TABLE IF EXISTS {db}.{name}")
                done.append(f"dropped the empty table {name}")
                continue
            keep = name + STORED_SUFFIX
            if keep in _engines(client, database):  # switched before: keep both copies
                keep = f"{keep}_{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
            client.command(f"RENAME TABLE {db}.{name} TO {db}.{keep}")
            done.append(f"kept the {rows:,} stored rows of {name} as {keep}")
        tables = _tables(client, database)
        for name, (statement, digest) in view_statements(database, config).items():
            if tables.get(name) != ("View", digest):
                client.command(statement, settings={"max_query_size": _MAX_QUERY_BYTES})
                done.append(f"made the view {name}")
    for line in done:
        log.info("%s: %s (windows assembled from crossing_contributions)", database, line)
    return done
