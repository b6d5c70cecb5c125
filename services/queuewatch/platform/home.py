"""``$QUEUEWATCH_HOME``: the folder of local state, and the lock that gives it one supervisor.

Two ``queuewatch up`` runs on one home would fight over the broker's log folder and the
embedded ClickHouse folder, so the first takes an exclusive ``flock`` on ``up.lock`` for as
long as it runs. The kernel drops the lock when the process ends, however it ends, so a
crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from queuewatch.errors import ConfigurationError, QueuewatchError

LOCK_NAME = "up.lock"


class HomeInUseError(QueuewatchError):
    """Another ``queuewatch up`` already runs on this home."""


def prepare_home(home: Path) -> Path:
    """Create ``home`` if needed and prove it is writable; return it as an absolute path."""
    home = home.expanduser().resolve()
    probe = home / f".write-test-{os.getpid()}"
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigurationError(
            f"cannot write to QUEUEWATCH_HOME={home} ({reason}); set QUEUEWATCH_HOME to a "
            "folder you can write, e.g. QUEUEWATCH_HOME=$HOME/.queuewatch"
        ) from exc
    return home


def lock_holder(home: Path) -> int | None:
    """The pid of the ``up`` that holds this home's lock, or None when nobody holds it."""
    path = home / LOCK_NAME
    if not path.exists():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(path) or -1
    finally:
        os.close(fd)
    return None


class HomeLock:
    """An exclusive, process-wide lock on a home folder (``with HomeLock(home): ...``)."""

    def __init__(self, home: Path) -> None:
        self.path = home / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or fail at once, naming the process that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = _read_pid(self.path)
            who = f"(pid {pid}) " if pid else ""
            raise HomeInUseError(
                f"another `queuewatch up` {who}already runs on QUEUEWATCH_HOME="
                f"{self.path.parent}; stop it (Ctrl-C in its terminal"
                f"{f', or kill {pid}' if pid else ''}) or set QUEUEWATCH_HOME to another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases the flock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> HomeLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or "0") or None
    except (OSError, ValueError):
        return None
