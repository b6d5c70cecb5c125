"""One ClickHouse client for both layouts, and the error wrapping every caller relies on.

``connect(url)`` hands the URL to ``clickhouse_connect.get_client(dsn=...)``, which opens the
embedded chdb engine for ``chdb://PATH`` and an HTTP connection for ``http(s)://``. Errors
leave this module as :class:`ClickHouseError` with ClickHouse's code and name, so the sinks
can tell an outage (retry) from a bug (stop).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from queuewatch.clickhouse.embedded import chdb_folder, is_embedded, refuse_if_open_elsewhere
from queuewatch.clickhouse.exceptions import (
    REFUSED_ROW_CODES,
    ClickHouseError,
    EngineBusyError,
    is_retryable,
)
from queuewatch.errors import ConfigurationError

#: Writes and schema changes on the engine take this lock: the sinks' inserts and the
#: migrations run one at a time. Reads never take it (``clickhouse/query.py``): chdb runs
#: statements of different connection handles at once, so a query does not stop the sinks.
ENGINE_LOCK = threading.RLock()

_CODE_RE = re.compile(r"Code: (\d+)\.")
_NAME_RE = re.compile(r"\(([A-Z][A-Z0-9_]+)\)\s*(?:\(version [^)]*\))?\s*$")


def wrap_error(exc: BaseException, doing: str) -> ClickHouseError:
    """Turn a clickhouse-connect or chdb exception into a ClickHouseError with code and name."""
    from clickhouse_connect.driver.exceptions import OperationalError

    if isinstance(exc, ClickHouseError):
        return exc
    text = str(exc)
    code = getattr(exc, "code", None)
    name = getattr(exc, "name", None)
    if code is None and (match := _CODE_RE.search(text)):
        code = int(match.group(1))
    if name is None and (match := _NAME_RE.search(text)):
        name = match.group(1)
    if "Unable to open the chdb engine" in text or "different path" in text:
        return EngineBusyError(
            f"cannot open the embedded ClickHouse folder while {doing}: it is open in another "
            "process (chdb allows one process per folder); stop that process or send the "
            "query to it with `queuewatch query`"
        )
    message = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if code is None:
        # No answer from ClickHouse at all: connection refused, reset or timed out. Anything
        # else without a code was raised by the driver itself before sending, and for an
        # insert that means a value it cannot serialize into its column.
        retryable = isinstance(exc, (OperationalError, OSError, TimeoutError))
        refused = not retryable and isinstance(exc, _serialize_errors())
        return ClickHouseError(
            f"{doing}: {message}", None, None, retryable=retryable, refused_rows=refused
        )
    code = int(code)
    return ClickHouseError(
        f"{doing}: {message}",
        code,
        name,
        retryable=is_retryable(code, text),
        refused_rows=code in REFUSED_ROW_CODES,
    )


def _serialize_errors() -> tuple[type[BaseException], ...]:
    """What clickhouse-connect raises for a value that does not fit its column."""
    import struct

    from clickhouse_connect.driver.exceptions import DataError, ProgrammingError

    return (DataError, ProgrammingError, TypeError, ValueError, OverflowError, struct.error)


@contextlib.contextmanager
def clickhouse_errors(doing: str) -> Iterator[None]:
    """Re-raise anything ClickHouse or the driver raises as a ClickHouseError."""
    try:
        yield
    except ClickHouseError:
        raise
    except Exception as exc:
        raise wrap_error(exc, doing) from exc


def connect(url: str, database: str | None = None, settings: dict[str, Any] | None = None) -> Any:
    """A clickhouse-connect client for ``url`` (chdb:// embedded or http(s):// server).

    ``database`` becomes the default for unqualified names; leave it None before the
    database exists (migrations qualify every name). ``settings`` are session settings,
    e.g. ``{"readonly": 1}`` for the query path.
    """
    import clickhouse_connect

    if not (is_embedded(url) or url.startswith(("http://", "https://"))):
        raise ConfigurationError(
            f"ClickHouse URL {redact(url)!r} is neither chdb://PATH nor "
            "http(s)://user:pass@host:port; fix QUEUEWATCH_CLICKHOUSE_URL"
        )
    if is_embedded(url):
        folder = chdb_folder(url)
        folder.mkdir(parents=True, exist_ok=True)
        if folder not in _OPENED_HERE:
            refuse_if_open_elsewhere(folder)
        url = f"chdb://{folder}"
    with ENGINE_LOCK, clickhouse_errors(f"connecting to {redact(url)}"):
        client = clickhouse_connect.get_client(dsn=url, database=database, settings=settings)
    if is_embedded(url):
        _OPENED_HERE.add(chdb_folder(url))
    return client


#: Embedded folders this process has opened: its own engine holds their lock, so the busy
#: check would see this very process as "another" one.
_OPENED_HERE: set[Path] = set()


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url
