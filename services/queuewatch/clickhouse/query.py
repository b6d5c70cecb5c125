"""Read-only SQL for people: `queuewatch query`, run by ClickHouse with ``readonly=1``.

Writes are refused by ClickHouse itself (code 164 READONLY), not by parsing the statement
here, so no clever SQL gets past it. Output is rendered by ClickHouse's own formats, so
types print as ClickHouse prints them.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from queuewatch.clickhouse.client import ENGINE_LOCK, clickhouse_errors, connect
from queuewatch.clickhouse.exceptions import ClickHouseError, EngineBusyError, QueryServerError
from queuewatch.errors import ConfigurationError

READONLY = 164
UNKNOWN_DATABASE = 81

OutputFormat = Literal["table", "jsonl", "csv"]

#: Our output names -> ClickHouse formats. jsonl is one JSON object per row keyed by column.
CLICKHOUSE_FORMATS: dict[str, str] = {
    "table": "PrettyCompactMonoBlock",
    "jsonl": "JSONEachRow",
    "csv": "CSVWithNames",
}

#: Session settings of every query client. Order matters on the embedded engine, where they
#: are applied one by one with SET: once readonly=1 is set, no setting may change.
READONLY_SETTINGS: dict[str, Any] = {
    # 64-bit integers as JSON numbers, not strings, so jsonl rows are plain JSON objects.
    "output_format_json_quote_64bit_integers": 0,
    "readonly": 1,
}


def readonly_client(url: str, database: str) -> Any:
    """A client whose session refuses every statement that writes or changes settings."""
    try:
        return connect(url, database=database, settings=dict(READONLY_SETTINGS))
    except ClickHouseError as exc:
        if exc.code == UNKNOWN_DATABASE:
            raise ClickHouseError(
                f"database {database} does not exist yet; run `queuewatch migrate` (or "
                "`queuewatch up`) first, or check QUEUEWATCH_CLICKHOUSE_DATABASE",
                exc.code,
                exc.name,
                retryable=False,
            ) from exc
        raise


def query_projections(url: str, database: str, sql: str, output: OutputFormat) -> bytes:
    """Run read-only ``sql`` wherever the data is; what `queuewatch query` (and status) use.

    Embedded: routed to the process that owns the folder when one runs, else the folder is
    opened here. Server: a read-only session on it.
    """
    from queuewatch.clickhouse import ownership
    from queuewatch.clickhouse.client import chdb_folder, is_embedded
    from queuewatch.clickhouse.query_server import routed_query

    lock = None
    if is_embedded(url):
        folder = chdb_folder(url)
        if not folder.is_dir():
            raise ConfigurationError(
                f"no embedded ClickHouse at {folder}; run `queuewatch migrate` or "
                "`queuewatch up` first, or set QUEUEWATCH_CLICKHOUSE_URL"
            )
        # Route to the owner, or take the folder for this one statement. A holder without a
        # query address is an owner starting up or another short query: wait for it.
        deadline = time.monotonic() + ownership.OWNER_WAIT_S
        while lock is None:
            owner = ownership.current_owner(folder)
            if owner is not None and owner.query_address:
                return routed_query(owner.query_address, sql, output)
            if owner is None:
                try:
                    lock = ownership.acquire(folder, "")
                    break
                except EngineBusyError:
                    pass  # taken between the look and the grab: look again
            if time.monotonic() >= deadline:
                holder = owner.pid if owner else "another process"
                raise QueryServerError(
                    f"the embedded ClickHouse folder is open in process {holder}, "
                    "which does not answer queries (it may be starting or migrating); "
                    "retry in a moment"
                )
            time.sleep(0.1)
    try:
        client = readonly_client(url, database)
        try:
            return run_query(client, sql, output)
        finally:
            client.close()
    finally:
        if lock is not None:
            lock.release()


def run_query(client: Any, sql: str, output: OutputFormat) -> bytes:
    """Run ``sql`` on a read-only client and return it rendered in ``output``."""
    statement = sql.strip().rstrip(";").strip()
    fmt = CLICKHOUSE_FORMATS[output]
    try:
        with ENGINE_LOCK, clickhouse_errors("running the query"):
            body = client.raw_query(statement, fmt=fmt)
    except ClickHouseError as exc:
        if exc.code == READONLY:
            raise ClickHouseError(
                "`queuewatch query` is read-only and ClickHouse refused a statement that writes "
                "or changes settings; the schema changes only through `queuewatch migrate`",
                exc.code,
                exc.name,
                retryable=False,
            ) from exc
        raise
    return bytes(body)
