"""Who owns an embedded ClickHouse folder: a lock file and a note of where it answers queries.

chdb opens a folder in one process only. Every process that opens the folder holds an exclusive
``flock`` on ``<folder>/queuewatch-owner.lock`` while it has it open: the owner
(``queuewatch sink all``) for its whole life, with its pid and query address written next to
it; a short-lived ``queuewatch query`` or ``migrate`` only for its one statement. chdb's own
lock would refuse the second opener with an error after the fact; taking ours first turns that
race into a wait. A lock, unlike a pid file alone, cannot go stale:
the kernel drops it when the process dies, even by SIGKILL, so a reader never routes a query
to a dead process or waits on one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from queuewatch.clickhouse.exceptions import EngineBusyError

LOCK_NAME = "queuewatch-owner.lock"
NOTE_NAME = "queuewatch-owner.json"
#: How long to wait for a folder held by a process that answers no queries: an owner starting
#: up, or a `queuewatch query` / `migrate` holding it for one statement (well under a second).
OWNER_WAIT_S = 15.0


@dataclass(frozen=True)
class Owner:
    """The running process that owns a folder and where it answers `queuewatch query`."""

    pid: int
    query_address: str


class FolderLock:
    """The exclusive ownership of one embedded folder, held until :meth:`release`."""

    def __init__(self, folder: Path, handle: IO[str]) -> None:
        self.folder = folder
        self._handle = handle

    def release(self) -> None:
        """Give the folder up (also happens when the process exits)."""
        with contextlib.suppress(OSError):
            (self.folder / NOTE_NAME).unlink()
        with contextlib.suppress(OSError):
            fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()


def acquire(folder: Path, query_address: str, wait_s: float = 0.0) -> FolderLock:
    """Take the folder for this process, or raise EngineBusyError naming the owner.

    ``wait_s`` lets the long-lived owner wait out a `queuewatch query` or `migrate` that holds
    the folder for a moment, instead of failing while it starts.
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
            # Only a short-lived holder (no query address) is worth waiting for.
            if time.monotonic() < deadline and (owner is None or not owner.query_address):
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
    tmp.write_text(json.dumps({"pid": os.getpid(), "query_address": query_address}))
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
        return Owner(int(data["pid"]), str(data["query_address"]))
    except (OSError, ValueError, KeyError):
        # The lock is held but the note is not written yet (the owner is starting up).
        return Owner(0, "")
