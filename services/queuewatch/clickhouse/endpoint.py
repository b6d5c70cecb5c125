"""The embedded owner's query endpoint: a Unix socket that only its own user can open.

chdb opens a folder in one process only, so while ``queuewatch sink all`` owns the folder every
other process sends its queries here. It used to be HTTP on a loopback port, which any local
user and any web page (a cross-site POST, DNS rebinding) could reach. Now:

- a Unix socket file in ``QUEUEWATCH_HOME``, mode 0600, in a folder no other user may write
  (so nobody can swap the socket); the kernel refuses other users before a byte is read;
- the peer's uid (``SO_PEERCRED``) must be ours too, should the file's mode ever be changed;
- JSON only, at most ``QUEUEWATCH_QUERY_REQUEST_MAX_BYTES``, read within
  ``QUEUEWATCH_QUERY_SOCKET_TIMEOUT_S``;
- a fixed number of worker threads (``QUEUEWATCH_QUERY_CONCURRENCY``); a connection that
  finds them all busy and the short queue full is answered "busy, retry" at once.

The endpoint knows nothing of SQL: it hands ``(sql, format)`` to a handler (the owner's
:class:`~queuewatch.clickhouse.query.QueryService`, which guards every query), so another
transport (issue 14's read-only HTTP interface) can sit on the same handler.

Protocol: the client sends one JSON object ``{"sql": "...", "format": "table|jsonl|csv"}`` and
closes its sending side. The answer is one JSON line, ``{"ok": true, "bytes": N}`` followed by
N bytes of the rendered result, or ``{"ok": false, "code", "name", "message"}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import stat
import struct
import threading
from collections.abc import Callable
from pathlib import Path

from queuewatch.clickhouse.exceptions import ClickHouseError, QueryRefusedError, QueryServerError
from queuewatch.errors import ConfigurationError, QueuewatchError

log = logging.getLogger(__name__)

SOCKET_NAME = "query.sock"
FORMATS = ("table", "jsonl", "csv")
#: AF_UNIX paths hold 108 bytes with the terminating NUL.
MAX_SOCKET_PATH = 107
#: A client waits this long for an answer at most; the owner stops a query by its own
#: QUEUEWATCH_QUERY_MAX_EXECUTION_TIME_S well before, so this only catches a hung owner.
ANSWER_TIMEOUT_S = 600.0
#: Connections that may wait for a worker beyond those being served: enough to absorb a burst
#: of `status` calls, small enough that a flood is refused instead of queued.
BACKLOG_PER_WORKER = 2

Handler = Callable[[str, str], bytes]


def socket_path(home: Path) -> Path:
    """Where the owner of an embedded folder listens: ``$QUEUEWATCH_HOME/query.sock``."""
    return home.expanduser().resolve() / SOCKET_NAME


def check_socket_folder(folder: Path) -> None:
    """Fail unless only this user may create or replace files in ``folder``.

    A socket's mode protects the socket; the folder's mode protects its name. In a folder
    others may write, another user could remove our socket and listen in its place.
    """
    info = folder.stat()
    if info.st_uid != os.getuid():
        raise ConfigurationError(
            f"{folder} (QUEUEWATCH_HOME, where the query socket lives) belongs to uid "
            f"{info.st_uid}, not to you (uid {os.getuid()}); use a home folder of your own"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigurationError(
            f"{folder} (QUEUEWATCH_HOME, where the query socket lives) is writable by other "
            f"users (mode {stat.S_IMODE(info.st_mode):o}), who could replace the socket; "
            f"run `chmod go-w {folder}`"
        )


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def parse_request(data: bytes, max_bytes: int) -> tuple[str, str]:
    """``(sql, format)`` of a request body, or ValueError saying what is wrong with it."""
    if len(data) > max_bytes:
        raise ValueError(
            f"the request is over {max_bytes} bytes (QUEUEWATCH_QUERY_REQUEST_MAX_BYTES)"
        )
    try:
        payload = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ValueError('the request is not JSON; send {"sql": "...", "format": "..."}') from None
    if not isinstance(payload, dict) or not isinstance(payload.get("sql"), str):
        raise ValueError('the request must be a JSON object with a string "sql"')
    output = payload.get("format", "table")
    if output not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    return payload["sql"], str(output)


class QueryEndpoint:
    """Serves ``handler`` on a Unix socket with a fixed pool of worker threads."""

    def __init__(
        self,
        path: Path,
        handler: Handler,
        *,
        workers: int,
        request_max_bytes: int,
        timeout_s: float,
    ) -> None:
        self.path = path
        self._handler = handler
        self._request_max_bytes = request_max_bytes
        self._timeout_s = timeout_s
        self._pending: queue.Queue[socket.socket | None] = queue.Queue(
            maxsize=max(1, workers) * BACKLOG_PER_WORKER
        )
        self._listener = self._listen(path)
        self._threads = [
            threading.Thread(target=self._work, name=f"query-worker-{n}", daemon=True)
            for n in range(max(1, workers))
        ]
        self._threads.append(
            threading.Thread(target=self._accept, name="query-accept", daemon=True)
        )
        self._stopping = threading.Event()

    @staticmethod
    def _listen(path: Path) -> socket.socket:
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise ConfigurationError(
                f"the query socket path {path} is longer than {MAX_SOCKET_PATH} bytes, the "
                "limit of Unix sockets; set QUEUEWATCH_HOME to a shorter folder"
            )
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        check_socket_folder(path.parent)
        if path.exists() or path.is_symlink():
            if _answers(path):
                raise ConfigurationError(
                    f"another process already answers queries on {path}; stop it, or give "
                    "this one another QUEUEWATCH_HOME"
                )
            path.unlink()  # left by an owner that was killed: nobody listens on it
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the file is born 0600: no window where others may connect
        try:
            listener.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        listener.listen(16)
        return listener

    def start(self) -> None:
        """Accept and serve in background threads."""
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop accepting, let the workers finish their request, remove the socket file."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for _ in self._threads:
            with contextlib.suppress(queue.Full):
                self._pending.put_nowait(None)
        for thread in self._threads:
            thread.join(timeout=self._timeout_s + 1)
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed: stopping
            conn.settimeout(self._timeout_s)
            try:
                self._pending.put_nowait(conn)
            except queue.Full:
                self._answer_error(conn, None, "BUSY", "the query endpoint is busy; retry")
                conn.close()

    def _work(self) -> None:
        while True:
            conn = self._pending.get()
            if conn is None:
                return
            try:
                self._serve(conn)
            except OSError as exc:
                log.debug("query endpoint: client went away: %s", exc)
            except Exception:  # a worker must survive any one request
                log.exception("query endpoint: a request failed unexpectedly")
            finally:
                conn.close()

    def _serve(self, conn: socket.socket) -> None:
        if peer_uid(conn) != os.getuid():
            self._answer_error(conn, None, "FORBIDDEN", "only the owner's user may query")
            return
        try:
            sql, output = parse_request(self._read(conn), self._request_max_bytes)
        except ValueError as exc:
            self._answer_error(conn, None, "BAD_REQUEST", f"bad request: {exc}")
            return
        except TimeoutError:
            self._answer_error(conn, None, "TIMEOUT", "the request did not arrive in time")
            return
        try:
            body = self._handler(sql, output)
        except ClickHouseError as exc:
            self._answer_error(conn, exc.code, exc.name, str(exc.args[0]))
            return
        except QueuewatchError as exc:
            self._answer_error(conn, None, "ERROR", str(exc))
            return
        conn.sendall(json.dumps({"ok": True, "bytes": len(body)}).encode() + b"\n" + body)

    def _read(self, conn: socket.socket) -> bytes:
        """The request, up to one byte past the cap (so an oversized one is told so)."""
        chunks: list[bytes] = []
        size = 0
        while size <= self._request_max_bytes:
            chunk = conn.recv(min(65536, self._request_max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    @staticmethod
    def _answer_error(
        conn: socket.socket, code: int | None, name: str | None, message: str
    ) -> None:
        line = json.dumps({"ok": False, "code": code, "name": name, "message": message})
        with contextlib.suppress(OSError):
            conn.sendall(line.encode() + b"\n")


def _answers(path: Path) -> bool:
    """True when a process accepts connections on the socket file ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def ask(path: Path, sql: str, output: str, timeout_s: float = ANSWER_TIMEOUT_S) -> bytes:
    """Send one query to the owner listening on ``path``; raise its error as ClickHouseError."""
    try:
        info = path.stat()
    except OSError as exc:
        raise QueryServerError(
            f"the process owning the embedded ClickHouse folder does not listen on {path} "
            f"({exc.strerror}); check that `queuewatch sink all` is healthy, or stop it and retry"
        ) from exc
    if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.getuid():
        raise QueryServerError(
            f"{path} is not a query socket of yours (owner uid {info.st_uid}); refusing to "
            "send it a query; stop whatever made it and remove the file"
        )
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout_s)
    try:
        conn.connect(str(path))
        conn.sendall(json.dumps({"sql": sql, "format": output}).encode())
        conn.shutdown(socket.SHUT_WR)
        reader = conn.makefile("rb")
        header = json.loads(reader.readline() or b"{}")
        if header.get("ok"):
            body = reader.read(int(header["bytes"]))
            return bytes(body)
    except (OSError, ValueError) as exc:
        raise QueryServerError(
            f"the process owning the embedded ClickHouse folder did not answer on {path} "
            f"({exc}); check that `queuewatch sink all` is healthy, or stop it and retry"
        ) from exc
    finally:
        conn.close()
    if header.get("name") == "BUSY":
        raise QueryServerError(str(header.get("message")))
    if header.get("name") == "QUERY_REFUSED":
        raise QueryRefusedError(str(header.get("message")))
    raise ClickHouseError(
        str(header.get("message", "the query endpoint gave no answer")),
        header.get("code"),
        header.get("name"),
        retryable=False,
    )
