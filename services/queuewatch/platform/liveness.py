"""Progress or an honest failure: every processor says whether it moves, and stops when it doesn't.

Why: a stream processor that stops applying its input while its process stays up is the worst
failure a live service can have: nothing restarts it, and lag alone cannot tell "catching up"
from "stuck". So each processor judges itself, and leaves a trace others can judge:

* :class:`ProgressWatch` (pure, an injectable clock) is fed, every few seconds, the
  processor's input position and its lag. Progress is the position moving, or no lag at all.
  Lag with no progress for ``stall_after_s`` is a :class:`Stall`: the processor logs why and
  exits non-zero (:data:`EXIT_STALLED`), so ``queuewatch up`` or Docker restarts it. A sample
  that starts much later than the previous one ended means the process itself was frozen
  (SIGSTOP, a suspended VM): the watch then counts afresh instead of killing a process that
  has only just woken up (a slow sample, say a broker that does not answer, is no excuse).
* :class:`Heartbeat` writes what the watch knows to ``$QUEUEWATCH_HOME/health/<kind>-<pid>.json``
  (atomically, every observation). ``queuewatch status`` reads these files: a processor whose
  group has lag and whose heartbeat says stalled, or has not been rewritten for
  ``stall_after_s`` (frozen, hung), is shown as STALLED. ``queuewatch health KIND`` (the
  compose healthcheck) reads the same file from inside the container.

The processor decides what counts as its position and its lag; this module only keeps time.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

#: Exit status of a processor that stopped making progress (EX_TEMPFAIL: try again).
EXIT_STALLED = 75
#: Folder under QUEUEWATCH_HOME with one heartbeat file per running processor.
HEALTH_DIR = "health"
#: A gap between observations longer than this many intervals means the process was frozen.
_FROZEN_FACTOR = 4.0

State = Literal["ok", "catching_up", "stalled", "starting"]


@dataclass(frozen=True)
class Stall:
    """Why a processor is not making progress, for a log line and an exit."""

    reason: str
    lag: int
    since_progress_s: float


class ProgressWatch:
    """Judges position and lag samples; says when lag has stood still for too long."""

    def __init__(
        self,
        stall_after_s: float,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stall_after_s = stall_after_s
        self.interval_s = interval_s
        self.clock = clock
        self.last_progress_at = clock()
        self.last_observed_at = self.last_progress_at
        self.position: int | None = None
        self.lag: int | None = None

    def since_progress(self) -> float:
        """Seconds since the last progress (or since the watch started)."""
        return self.clock() - self.last_progress_at

    def begin(self) -> None:
        """A sample starts now: if the last one ended long ago, the process was frozen.

        Called before the (possibly slow) work of taking a sample, so a sample that takes
        long because the broker does not answer is not mistaken for a frozen process.
        """
        now = self.clock()
        if now - self.last_observed_at > _FROZEN_FACTOR * max(self.interval_s, 0.1):
            # We were not running: whatever happened meanwhile is not the processor's doing.
            self.last_progress_at = now
        self.last_observed_at = now

    def observe(self, position: int, lag: int, blocked: str | None = None) -> Stall | None:
        """One sample: the summed input position, the lag, and what blocks the work if known.

        ``blocked`` names a step the processor has been inside since before the last sample
        (say, "waiting for the broker to acknowledge a batch"); it becomes the stall's
        reason. Returns a :class:`Stall` when there has been lag and no progress for
        ``stall_after_s``, else None.
        """
        now = self.clock()
        self.last_observed_at = now
        if lag <= 0 or (self.position is not None and position != self.position):
            self.last_progress_at = now
        self.position, self.lag = position, lag
        idle = now - self.last_progress_at
        if lag > 0 and idle >= self.stall_after_s:
            reason = blocked or "input is waiting but none of it was applied"
            return Stall(reason, lag, idle)
        return None

    def state(self) -> State:
        """What the last sample said, in one word."""
        if self.lag is None:
            return "starting"
        if self.lag <= 0:
            return "ok"
        if self.since_progress() >= self.stall_after_s:
            return "stalled"
        return "catching_up"


def watch_interval(stall_after_s: float) -> float:
    """How often to sample progress: a few samples per stall period, at most every 5 s."""
    return max(0.2, min(5.0, stall_after_s / 6))


class Steps:
    """The steps a processor is inside right now (an await that may hang), with their start.

    A step that outlives a stall period is the best reason a stall can give: "waiting for the
    broker to acknowledge the batch's writes" tells an operator where to look.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._open: dict[str, float] = {}
        self.last_done_at = clock()

    @contextmanager
    def doing(self, what: str) -> Iterator[None]:
        """Mark ``what`` as in progress for the duration of the block."""
        self._open[what] = self.clock()
        try:
            yield
        finally:
            self._open.pop(what, None)
            self.last_done_at = self.clock()

    def busy(self) -> bool:
        """True while any step is in progress."""
        return bool(self._open)

    def blocked(self, longer_than_s: float) -> str | None:
        """The oldest step in progress for more than ``longer_than_s``, worded for a log."""
        if not self._open:
            return None
        what, since = min(self._open.items(), key=lambda item: item[1])
        age = self.clock() - since
        return f"{what} (for {age:.0f} s)" if age > longer_than_s else None


class LoopGuard:
    """A thread that ends the process when its event loop stops beating.

    The progress watch runs on the processor's own loop (an asyncio timer, a poll loop): if
    that loop hangs in a call that never returns, the watch never runs. This thread only
    checks that :meth:`beat` was called within ``stall_after_s``; a frozen process (every
    thread stopped) is told apart by the thread's own ticks being late, as in
    :class:`ProgressWatch`.
    """

    def __init__(
        self,
        name: str,
        stall_after_s: float,
        on_stall: Callable[[str], None],
        tick_s: float = 1.0,
    ) -> None:
        self.name = name
        self.stall_after_s = stall_after_s
        self.on_stall = on_stall
        self.tick_s = tick_s
        self._last_beat = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{name}-loop-guard", daemon=True)

    @property
    def started(self) -> bool:
        """True once :meth:`start` was called."""
        return self._thread.ident is not None

    def start(self) -> None:
        """Start watching (call once the loop runs; later calls do nothing)."""
        if not self.started:
            self._last_beat = time.monotonic()
            self._thread.start()

    def beat(self) -> None:
        """The loop is alive."""
        self._last_beat = time.monotonic()

    def stop(self) -> None:
        """Stop watching (a clean shutdown may take longer than a beat)."""
        self._stop.set()

    def _run(self) -> None:
        last_tick = time.monotonic()
        while not self._stop.wait(self.tick_s):
            now = time.monotonic()
            if now - last_tick > _FROZEN_FACTOR * self.tick_s:
                self._last_beat = now  # the whole process was frozen, not just the loop
            last_tick = now
            silent = now - self._last_beat
            if silent >= self.stall_after_s:
                self.on_stall(f"the {self.name} loop has not run for {silent:.0f} s")
                return


@dataclass
class HeartbeatRecord:
    """What one heartbeat file holds (times are Unix seconds)."""

    kind: str
    group: str
    pid: int
    started_at: float
    updated_at: float
    last_progress_at: float
    lag: int | None
    state: str
    reason: str | None = None
    details: dict[str, Any] | None = None

    def age_s(self, now: float | None = None) -> float:
        """Seconds since the file was last written."""
        return (time.time() if now is None else now) - self.updated_at

    def since_progress_s(self, now: float | None = None) -> float:
        """Seconds since the processor last made progress."""
        return (time.time() if now is None else now) - self.last_progress_at


class Heartbeat:
    """The heartbeat file of one processor: rewritten on every observation, removed on exit."""

    def __init__(self, home: Path, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self.pid = os.getpid()
        self.started_at = time.time()
        folder = Path(home).expanduser() / HEALTH_DIR
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{kind}-{self.pid}.json"

    def write(
        self,
        watch: ProgressWatch,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Write what ``watch`` knows now; never raises (a full disk must not stop the work)."""
        now = time.time()
        record = HeartbeatRecord(
            kind=self.kind,
            group=self.group,
            pid=self.pid,
            started_at=self.started_at,
            updated_at=now,
            last_progress_at=now - watch.since_progress(),
            lag=watch.lag,
            state=watch.state(),
            reason=reason,
            details=details,
        )
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(asdict(record)))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("heartbeat %s not written: %s", self.path, exc)

    def remove(self) -> None:
        """At a clean exit: nothing to judge any more."""
        self.path.unlink(missing_ok=True)


def read_heartbeats(home: Path, pid_alive: Callable[[int], bool]) -> list[HeartbeatRecord]:
    """Heartbeats of the processors running on this home; files of dead processes are removed."""
    folder = Path(home).expanduser() / HEALTH_DIR
    out: list[HeartbeatRecord] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = HeartbeatRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue  # being replaced right now, or not ours
        if not pid_alive(record.pid):
            path.unlink(missing_ok=True)
            continue
        out.append(record)
    return out


def judge(record: HeartbeatRecord, stall_after_s: float, now: float | None = None) -> str | None:
    """Why this processor counts as STALLED, or None.

    A heartbeat not rewritten for ``stall_after_s`` means the process runs no code at all (it
    is stopped or its loop hangs); one that says ``stalled`` is a processor about to exit.
    The caller checks the group's lag first: a quiet processor with nothing to do is fine.
    """
    now = time.time() if now is None else now
    if record.age_s(now) >= stall_after_s:
        return (
            f"{record.kind} (pid {record.pid}) has not reported for {record.age_s(now):.0f} s "
            f"(last progress {record.since_progress_s(now):.0f} s ago): the process is frozen "
            "or its loop hangs; it is restarted if it was started by `queuewatch up`, else "
            "restart it"
        )
    if record.state == "stalled":
        return (
            f"{record.kind} (pid {record.pid}) made no progress for "
            f"{record.since_progress_s(now):.0f} s with lag {record.lag}: "
            f"{record.reason or 'no reason given'}"
        )
    return None


def exit_stalled(kind: str, reason: str) -> None:
    """Log why and end the process now with :data:`EXIT_STALLED`.

    ``os._exit``, not an exception: the processor is stuck, so a graceful stop may hang the same
    way. Nothing is lost: every processor resumes from what it made durable.
    """
    log.critical(
        "%s stalled: %s; exiting (status %d) so that `queuewatch up` or Docker restarts it",
        kind,
        reason,
        EXIT_STALLED,
    )
    logging.shutdown()
    os._exit(EXIT_STALLED)
