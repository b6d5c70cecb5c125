"""Errors of the ClickHouse stage, carrying ClickHouse's own code and name.

Callers decide retry or stop by ``retryable``: a server that is restarting, a network
hiccup or too many parts heals with time; a syntax error, an unknown table or a readonly
refusal does not, and retrying it would only hide the problem.
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
        252,  # TOO_MANY_PARTS: merges are behind, back off
        285,  # TOO_FEW_LIVE_REPLICAS
        319,  # UNKNOWN_STATUS_OF_INSERT: the insert may or may not have landed; replay it
        394,  # QUERY_WAS_CANCELLED
        425,  # SYSTEM_ERROR
        439,  # CANNOT_SCHEDULE_TASK
        999,  # KEEPER_EXCEPTION
        1000,  # POCO_EXCEPTION (network layer)
    }
)


class ClickHouseError(QueuewatchError):
    """A statement ClickHouse refused or could not run.

    ``code`` and ``name`` are ClickHouse's (e.g. 164 READONLY) when the engine answered, None
    when it could not be reached at all (which is retryable).
    """

    def __init__(
        self, message: str, code: int | None = None, name: str | None = None, *, retryable: bool
    ) -> None:
        super().__init__(message)
        self.code = code
        self.name = name
        self.retryable = retryable

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
