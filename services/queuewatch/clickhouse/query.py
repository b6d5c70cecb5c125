"""Read-only SQL for people: `queuewatch query`, the embedded endpoint and `status` read here.

Every query passes the guard (``clickhouse/guard.py``: ClickHouse's parser and an allow-list)
and then runs on a session with the limits of ``QuerySettings`` and ``readonly=1``, so a write
is refused twice: at the door by the guard, and by ClickHouse (code 164 READONLY) should
anything get past it. Output is rendered by ClickHouse's own formats, so types print as
ClickHouse prints them.

Reads never take ``ENGINE_LOCK``: chdb runs statements of different connection handles of one
process at the same time, so a long query does not hold back the sinks' inserts (measured in
``docs/security.md``). Each read-only client is its own handle; :class:`QueryService` keeps
a fixed number of them, which bounds how many queries the embedded owner runs at once.
"""

from __future__ import annotations

import contextlib
import logging
import queue
from typing import Any, Literal

from queuewatch.clickhouse import embedded
from queuewatch.clickhouse.client import clickhouse_errors, connect
from queuewatch.clickhouse.exceptions import ClickHouseError, QueryRefusedError, QueryServerError
from queuewatch.clickhouse.guard import HTTP_FORMATS, QueryGuard, QueryLimits
from queuewatch.settings import QuerySettings

log = logging.getLogger(__name__)

READONLY = 164
UNKNOWN_DATABASE = 81
TIMEOUT_EXCEEDED = 159
#: How much longer than its own time limit a caller waits for the owner's answer: the time to
#: queue for a free reader and to send the result back.
ANSWER_MARGIN_S = 30.0

OutputFormat = Literal["table", "jsonl", "csv"]

#: Our output names -> ClickHouse formats. jsonl is one JSON object per row keyed by column.
CLICKHOUSE_FORMATS: dict[str, str] = {
    "table": "PrettyCompactMonoBlock",
    "jsonl": "JSONEachRow",
    "csv": "CSVWithNames",
}


def limits_from(settings: QuerySettings) -> QueryLimits:
    """The limits every guarded query runs with, from the QUEUEWATCH_QUERY_* settings."""
    return QueryLimits(
        max_execution_time_s=settings.query_max_execution_time_s,
        max_memory_bytes=settings.query_max_memory_bytes,
        max_result_rows=settings.query_max_result_rows,
        max_result_bytes=settings.query_max_result_bytes,
    )


def readonly_client(url: str, database: str, limits: QueryLimits | None = None) -> Any:
    """A client whose session has the query limits and refuses every write or setting change.

    On a server whose user already has a read-only profile, the settings that profile fixes
    cannot be sent (ClickHouse refuses the request); there the profile's own limits hold, and
    only the settings the user may still change are applied.
    """
    limits = limits or limits_from(QuerySettings())
    wanted = limits.session_settings()
    try:
        if embedded.is_embedded(url):
            return connect(url, database=database, settings=wanted)
        client = connect(url, database=database)
        for key, value in wanted.items():
            known = client.server_settings.get(key)
            if known is not None and known.readonly:
                log.debug("the server's profile fixes %s=%s; keeping it", key, known.value)
                continue
            client.set_client_setting(key, value)
        return client
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


class GuardedReader:
    """One read-only client and the guard made for its engine: runs one query at a time."""

    def __init__(self, client: Any, database: str, limits: QueryLimits) -> None:
        self.client = client
        self.limits = limits
        self.guard = QueryGuard.for_client(client, database)

    def run(self, sql: str, output: OutputFormat) -> bytes:
        """Check ``sql`` with the guard, run what was checked, return it rendered in ``output``."""
        checked = self.guard.check(self.client, sql)
        fmt = CLICKHOUSE_FORMATS[output]
        try:
            with clickhouse_errors("running the query"):
                body = self.client.raw_query(checked.text, fmt=fmt)
        except ClickHouseError as exc:
            raise self._explained(exc) from exc
        return bytes(body)

    def run_http(self, sql: str, default_format: str) -> tuple[bytes, str]:
        """Like :meth:`run` for the HTTP interface: the query's own FORMAT, else the default.

        Returns the body and the format it is in.
        """
        checked = self.guard.check(self.client, sql, allow_format=True)
        fmt = checked.format or default_format
        if fmt not in HTTP_FORMATS:
            raise QueryRefusedError(
                f"the output format {fmt} is not allowed here; use one of "
                f"{', '.join(sorted(HTTP_FORMATS))}"
            )
        try:
            with clickhouse_errors("running the query"):
                body = self.client.raw_query(checked.text, fmt=fmt)
        except ClickHouseError as exc:
            raise self._explained(exc) from exc
        return bytes(body), fmt

    def close(self) -> None:
        """Close the client (its engine handle)."""
        self.client.close()

    def _explained(self, exc: ClickHouseError) -> ClickHouseError:
        if exc.code == READONLY:
            return ClickHouseError(
                "`queuewatch query` is read-only and ClickHouse refused a statement that "
                "writes or changes settings; the schema changes only through `queuewatch "
                "migrate`",
                exc.code,
                exc.name,
                retryable=False,
            )
        if exc.code == TIMEOUT_EXCEEDED:
            return ClickHouseError(
                f"the query ran longer than {self.limits.max_execution_time_s:g} s and was "
                "stopped; narrow it (a WHERE on time, a LIMIT) or raise "
                "QUEUEWATCH_QUERY_MAX_EXECUTION_TIME_S for the process that runs it",
                exc.code,
                exc.name,
                retryable=False,
            )
        return exc


class QueryService:
    """A fixed pool of guarded readers: what the embedded endpoint runs queries with.

    ``concurrency`` readers, each its own engine handle; a query waits at most ``wait_s`` for
    a free one, then is told to retry. No query ever waits for a sink write, and a sink write
    never waits for a query.
    """

    def __init__(self, url: str, database: str, settings: QuerySettings) -> None:
        self._idle: queue.Queue[GuardedReader] = queue.Queue()
        self._readers: list[GuardedReader] = []
        self._wait_s = settings.query_socket_timeout_s
        limits = limits_from(settings)
        try:
            for _ in range(max(1, settings.query_concurrency)):
                reader = GuardedReader(readonly_client(url, database, limits), database, limits)
                self._readers.append(reader)
                self._idle.put(reader)
        except BaseException:
            self.close()
            raise

    def run(self, sql: str, output: str) -> bytes:
        """Run one guarded query on a free reader; QueryServerError when all stay busy."""
        if output not in CLICKHOUSE_FORMATS:
            raise QueryServerError(f"format must be one of {', '.join(CLICKHOUSE_FORMATS)}")
        try:
            reader = self._idle.get(timeout=self._wait_s)
        except queue.Empty:
            raise QueryServerError(
                f"{len(self._readers)} queries are already running on the embedded ClickHouse "
                f"and none ended within {self._wait_s:g} s; retry later, or raise "
                "QUEUEWATCH_QUERY_CONCURRENCY"
            ) from None
        try:
            return reader.run(sql, output)  # type: ignore[arg-type]  # checked above
        finally:
            self._idle.put(reader)

    def run_http(self, sql: str, default_format: str) -> tuple[bytes, str]:
        """One guarded query of the HTTP interface on a free reader (body, format)."""
        reader = self._take()
        try:
            return reader.run_http(sql, default_format)
        finally:
            self._idle.put(reader)

    def _take(self) -> GuardedReader:
        try:
            return self._idle.get(timeout=self._wait_s)
        except queue.Empty:
            raise QueryServerError(
                f"{len(self._readers)} queries are already running on the embedded ClickHouse "
                f"and none ended within {self._wait_s:g} s; retry later, or raise "
                "QUEUEWATCH_QUERY_CONCURRENCY"
            ) from None

    def close(self) -> None:
        """Close every reader (best effort: the process is stopping)."""
        for reader in self._readers:
            # Closing at shutdown must not mask why the process stops.
            with contextlib.suppress(Exception):
                reader.close()


def query_projections(
    url: str,
    database: str,
    sql: str,
    output: OutputFormat,
    settings: QuerySettings | None = None,
) -> bytes:
    """Run read-only ``sql`` wherever the data is; what `queuewatch query` and `status` use.

    Embedded: sent to the process that owns the folder when one runs, else the folder is
    opened here for this one query (``clickhouse/embedded.py``). Server: a guarded read-only
    session on it.
    """
    settings = settings or QuerySettings()
    limits = limits_from(settings)
    if embedded.is_embedded(url):
        return embedded.query(
            url,
            sql,
            output,
            lambda: _run_once(url, database, sql, output, limits),
            # The owner stops the query by its own limit; this only catches a hung owner.
            answer_timeout_s=limits.max_execution_time_s + ANSWER_MARGIN_S,
        )
    return _run_once(url, database, sql, output, limits)


def _run_once(
    url: str, database: str, sql: str, output: OutputFormat, limits: QueryLimits
) -> bytes:
    reader = GuardedReader(readonly_client(url, database, limits), database, limits)
    try:
        return reader.run(sql, output)
    finally:
        reader.close()
