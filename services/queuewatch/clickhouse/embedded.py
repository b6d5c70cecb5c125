"""The embedded engine's one home: its URL, who owns its folder, and where that owner answers.

chdb opens a folder in **one process only**. Everything that follows from that lives here:

1. **The URL.** ``chdb://PATH`` names a folder (:func:`is_embedded`, :func:`chdb_folder`).
2. **The folder lock.** Every process that opens the folder holds an exclusive ``flock`` on
   ``<folder>/queuewatch-owner.lock`` while it has it open: the owner (``queuewatch sink all``)
   for its whole life, with its pid and query socket written next to it; a short-lived
   ``queuewatch query`` or ``migrate`` only for its one statement. chdb's own lock would refuse
   the second opener with an error after the fact; taking ours first turns that race into a
   wait. A lock, unlike a pid file alone, cannot go stale: the kernel drops it when the
   process dies, even by SIGKILL, so a reader never routes a query to a dead process.
3. **The busy check.** A folder open in a process that is not a queuewatch owner (any other
   chdb program) is seen through the engine's own ``flock`` on ``<folder>/status``
   (:func:`engine_holder`), so callers fail with one line instead of the engine's complaint.
4. **The query endpoint's life.** The owner serves queries on a Unix socket in
   ``QUEUEWATCH_HOME`` (``clickhouse/endpoint.py``) from :meth:`FolderLock.serve` until
   :meth:`FolderLock.release`; :func:`query` sends a query there, or, with no owner, takes the
   folder for that one query.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from queuewatch.clickhouse import endpoint
from queuewatch.clickhouse.exceptions import EngineBusyError, QueryServerError
from queuewatch.errors import ConfigurationError, QueuewatchError

LOCK_NAME = "queuewatch-owner.lock"
NOTE_NAME = "queuewatch-owner.json"
#: How long to wait for a folder held by a process that answers no queries: an owner starting
#: up, or a `queuewatch query` / `migrate` holding it for one statement (well under a second).
OWNER_WAIT_S = 15.0


class ClickHouseFolderInUseError(QueuewatchError):
    """The embedded ClickHouse folder is open in another process (chdb allows one)."""


# ---------------------------------------------------------------- 1. the URL


def is_embedded(url: str) -> bool:
    """True for ``chdb://`` URLs: the engine runs in this process."""
    return url.startswith("chdb:")


def chdb_folder(url: str) -> Path:
    """The folder of an embedded ``chdb://PATH`` URL (absolute, or relative to the cwd)."""
    path = url.removeprefix("chdb://").split("?", 1)[0]
    if not path or path in {"memory", ":memory:"}:
        raise ConfigurationError(
            f"{url} is not an on-disk folder; use chdb:///absolute/path for queuewatch"
        )
    return Path(path).resolve()


# ---------------------------------------------------------------- 2. the folder lock


@dataclass(frozen=True)
class Owner:
    """The running process that owns a folder and where it answers `queuewatch query`."""

    pid: int
    query_socket: str


class FolderLock:
    """The exclusive ownership of one embedded folder, held until :meth:`release`."""

    def __init__(self, folder: Path, handle: IO[str]) -> None:
        self.folder = folder
        self._handle = handle
        self._endpoint: endpoint.QueryEndpoint | None = None

    def serve(
        self,
        socket: Path,
        handler: endpoint.Handler,
        *,
        workers: int,
        request_max_bytes: int,
        timeout_s: float,
    ) -> None:
        """Answer queries on ``socket`` with ``handler`` until :meth:`release`."""
        served = endpoint.QueryEndpoint(
            socket,
            handler,
            workers=workers,
            request_max_bytes=request_max_bytes,
            timeout_s=timeout_s,
        )
        served.start()
        self._endpoint = served

    def stop_serving(self) -> None:
        """Stop answering queries (the socket file goes); the folder stays ours."""
        if self._endpoint is not None:
            self._endpoint.stop()
            self._endpoint = None

    def release(self) -> None:
        """Stop answering queries and give the folder up (also happens when the process exits)."""
        self.stop_serving()
        with contextlib.suppress(OSError):
            (self.folder / NOTE_NAME).unlink()
        with contextlib.suppress(OSError):
            fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()


def acquire(folder: Path, query_socket: str = "", wait_s: float = 0.0) -> FolderLock:
    """Take the folder for this process, or raise EngineBusyError naming the owner.

    ``query_socket`` is where this process will answer queries ("" for a one-statement
    holder). ``wait_s`` lets the long-lived owner wait out a `queuewatch query` or `migrate`
    that holds the folder for a moment, instead of failing while it starts.
    """
    folder.mkdir(parents=True, exist_ok=True)
    handle = (folder / LOCK_NAME).open("a+")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            owner = current_owner(folder)
            # Only a short-lived holder (no query socket) is worth waiting for.
            if time.monotonic() < deadline and (owner is None or not owner.query_socket):
                time.sleep(0.1)
                continue
        handle.close()
        owner = current_owner(folder)
        who = f"process {owner.pid}" if owner else "another process"
        raise EngineBusyError(
            f"the embedded ClickHouse folder {folder} is already open in {who} "
            "(chdb allows one process per folder); stop it first, or use `queuewatch query` "
            "while it runs"
        ) from None
    note = folder / NOTE_NAME
    tmp = note.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "query_socket": query_socket}))
    tmp.replace(note)
    return FolderLock(folder, handle)


def current_owner(folder: Path) -> Owner | None:
    """The live owner of ``folder``, or None when no process holds its lock."""
    lock_path = folder / LOCK_NAME
    if not lock_path.exists():
        return None
    with lock_path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: someone owns it
        else:
            fcntl.flock(handle, fcntl.LOCK_UN)
            return None
    try:
        data = json.loads((folder / NOTE_NAME).read_text())
        return Owner(int(data["pid"]), str(data.get("query_socket", "")))
    except (OSError, ValueError, KeyError):
        # The lock is held but the note is not written yet (the owner is starting up).
        return Owner(0, "")


# ---------------------------------------------------------------- 3. the busy check


def engine_holder(folder: Path) -> int | None:
    """The pid of the process that has the engine open on ``folder``, or None when free.

    The embedded engine (like clickhouse-server) holds an exclusive ``flock`` on the folder's
    ``status`` file while it has the folder open, and writes its pid into that file; -1 when
    the file names no pid.
    """
    status = folder / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return None  # never opened: free
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            match = re.search(r"PID:\s*(\d+)", status.read_text(errors="replace"))
        except OSError:
            match = None
        return int(match.group(1)) if match else -1
    finally:
        os.close(fd)
    return None


def refuse_if_open_elsewhere(folder: Path) -> None:
    """Fail with one clear line when another process has the engine open on ``folder``.

    Called before this process opens the engine, so it only ever sees other processes.
    """
    if engine_holder(folder) is not None:
        raise EngineBusyError(
            f"the embedded ClickHouse folder {folder} is open in another process "
            "(chdb allows one process per folder) that does not answer `queuewatch "
            "query`; stop that process and retry"
        )


def check_free(url: str) -> None:
    """Fail when the embedded folder of ``url`` is open in any other process (`up`'s check)."""
    if not is_embedded(url):
        return
    folder = chdb_folder(url)
    # A queuewatch owner holds its ownership lock (even before the engine opens the folder);
    # any other program using chdb holds the engine's own lock.
    owner = current_owner(folder)
    pid = (owner.pid or -1) if owner is not None else engine_holder(folder)
    if pid is None:
        return
    who = f"process {pid}" if pid > 0 else "another process"
    raise ClickHouseFolderInUseError(
        f"the embedded ClickHouse folder {folder} is open in {who} (chdb allows one process "
        "per folder); stop that process, or set QUEUEWATCH_CLICKHOUSE_URL to another "
        "chdb:// folder or to a ClickHouse server"
    )


# ---------------------------------------------------------------- 4. the query endpoint


def query(
    url: str,
    sql: str,
    output: str,
    run_here: Callable[[], bytes],
    answer_timeout_s: float = endpoint.ANSWER_TIMEOUT_S,
) -> bytes:
    """Send ``sql`` to the owner of the folder, or take the folder and call ``run_here``.

    A holder without a query socket is an owner starting up or another short query: wait for
    it, up to :data:`OWNER_WAIT_S`. ``answer_timeout_s`` bounds the wait for the owner's answer.
    """
    folder = chdb_folder(url)
    if not folder.is_dir():
        raise ConfigurationError(
            f"no embedded ClickHouse at {folder}; run `queuewatch migrate` or "
            "`queuewatch up` first, or set QUEUEWATCH_CLICKHOUSE_URL"
        )
    deadline = time.monotonic() + OWNER_WAIT_S
    while True:
        owner = current_owner(folder)
        if owner is not None and owner.query_socket:
            return endpoint.ask(Path(owner.query_socket), sql, output, answer_timeout_s)
        if owner is None:
            try:
                lock = acquire(folder)
            except EngineBusyError:
                pass  # taken between the look and the grab: look again
            else:
                try:
                    return run_here()
                finally:
                    lock.release()
        if time.monotonic() >= deadline:
            holder = owner.pid if owner else "another process"
            raise QueryServerError(
                f"the embedded ClickHouse folder is open in process {holder}, "
                "which does not answer queries (it may be starting or migrating); "
                "retry in a moment"
            )
        time.sleep(0.1)


def wait_answering(folder: Path, timeout_s: float, keep_going: Callable[[], bool]) -> bool:
    """True once the owner of ``folder`` answers on its socket; False after ``timeout_s``.

    ``keep_going`` is called between looks (a supervisor polls its children there) and stops
    the wait when it returns False.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and keep_going():
        owner = current_owner(folder)
        if owner is not None and owner.query_socket:
            with contextlib.suppress(QueuewatchError):
                endpoint.ask(Path(owner.query_socket), "SELECT 1", "jsonl", timeout_s=5.0)
                return True
        time.sleep(0.3)
    return False
