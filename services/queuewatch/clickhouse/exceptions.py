"""Errors of the ClickHouse stage, carrying ClickHouse's own code and name.

Errors are sorted by ClickHouse's numeric code, as clickhouse-connect does, into three kinds:

* **retryable** (``RETRYABLE_CODES``, or no answer at all): a server that is restarting, a
  network hiccup, merges that are behind. Retrying the same insert later can succeed.
* **refused rows** (``REFUSED_ROW_CODES``, or a value the driver cannot serialize): the
  insert's *content* is wrong for the table. Retrying the same rows fails the same way, but
  other rows of the batch may be fine, so the sink narrows the batch down to the rows at
  fault instead of giving up on all of them.
* **fatal**: everything else (syntax, unknown table, readonly...). Retrying only hides it.
"""

from __future__ import annotations

from queuewatch.errors import QueuewatchError

#: ClickHouse error codes that describe a transient state: retrying the same statement later
#: can succeed. Everything else (syntax, unknown table, type mismatch, readonly...) is fatal.
RETRYABLE_CODES: frozenset[int] = frozenset(
    {
        3,  # UNEXPECTED_END_OF_FILE: the connection dropped mid-response
        32,  # ATTEMPT_TO_READ_AFTER_EOF
        159,  # TIMEOUT_EXCEEDED
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        203,  # NO_FREE_CONNECTION
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        236,  # ABORTED
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY (a replica lost its keeper session)
        252,  # TOO_MANY_PARTS: merges are behind, back off (but see too_many_partitions)
        285,  # TOO_FEW_LIVE_REPLICAS
        319,  # UNKNOWN_STATUS_OF_INSERT: the insert may or may not have landed; replay it
        394,  # QUERY_WAS_CANCELLED
        425,  # SYSTEM_ERROR
        439,  # CANNOT_SCHEDULE_TASK
        999,  # KEEPER_EXCEPTION
        1000,  # POCO_EXCEPTION (network layer)
    }
)


#: ClickHouse error codes that refuse an insert for what its rows hold: the same rows fail
#: the same way every time, whereas the rest of their batch may be accepted.
REFUSED_ROW_CODES: frozenset[int] = frozenset(
    {
        6,  # CANNOT_PARSE_TEXT
        27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        38,  # CANNOT_PARSE_DATE
        41,  # CANNOT_PARSE_DATETIME
        53,  # TYPE_MISMATCH
        69,  # ARGUMENT_OUT_OF_BOUND
        70,  # CANNOT_CONVERT_TYPE
        72,  # CANNOT_PARSE_NUMBER
        117,  # INCORRECT_DATA
        131,  # TOO_LARGE_STRING_SIZE
        190,  # SIZES_OF_ARRAYS_DONT_MATCH
        321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
        349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    }
)

#: Code 252 means two things. "Too many parts in partition" is merges falling behind and
#: heals with time; "too many partitions for a single INSERT block" is the insert's shape
#: (the server's max_partitions_per_insert_block) and fails the same way on every retry.
TOO_MANY_PARTS = 252
_TOO_MANY_PARTITIONS_TEXT = "too many partitions"


def too_many_partitions(code: int | None, message: str) -> bool:
    """True for the 252 that an insert touching fewer partitions cures, not waiting."""
    return code == TOO_MANY_PARTS and _TOO_MANY_PARTITIONS_TEXT in message.lower()


def is_retryable(code: int, message: str) -> bool:
    """Whether retrying the same statement later can succeed, by ClickHouse's code."""
    return code in RETRYABLE_CODES and not too_many_partitions(code, message)


class ClickHouseError(QueuewatchError):
    """A statement ClickHouse refused or could not run.

    ``code`` and ``name`` are ClickHouse's (e.g. 164 READONLY) when the engine answered, None
    when it could not be reached at all (which is retryable). ``refused_rows`` is True when
    the rows themselves are at fault (never together with ``retryable``).
    """

    def __init__(
        self,
        message: str,
        code: int | None = None,
        name: str | None = None,
        *,
        retryable: bool,
        refused_rows: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.name = name
        self.retryable = retryable
        self.refused_rows = refused_rows and not retryable

    def __str__(self) -> str:
        label = f"ClickHouse {self.code} {self.name}: " if self.code is not None else ""
        return f"{label}{self.args[0]}"


class EngineBusyError(ClickHouseError):
    """The embedded folder is open in another process (chdb allows one process per folder)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class MigrationError(ClickHouseError):
    """A migration file is malformed or was changed after it was applied."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class QueryServerError(QueuewatchError):
    """The process owning the embedded folder did not answer a routed query."""


class QueryRefusedError(ClickHouseError):
    """The query guard refused a query before it reached the engine (``clickhouse/guard.py``).

    The message names the construct, why it is refused and what to do instead.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, None, "QUERY_REFUSED", retryable=False)

    def __str__(self) -> str:
        return f"query refused: {self.args[0]}"
