"""Window families and pane arithmetic: pure integer math on UTC milliseconds.

A family ``name:size:step`` (``1h:1h:5m``) defines the windows ``[s, s + size)`` for every
``s`` that is a multiple of ``step`` (aligned to the Unix epoch). A report is stored once per
family, in its *pane* (a slot of ``gcd(size, step)`` ms, which is ``step`` when ``step``
divides ``size``), and a window is the merge of the panes it covers, so a report costs the
same whatever ``size / step`` is.

Lateness: a window takes a report only while ``window_end + grace > watermark`` (the watermark
before that report). Since the watermark never goes down, a window once closed stays closed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from queuewatch.errors import ConfigurationError

_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION_RE = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")


def parse_duration_ms(text: str) -> int:
    """``"5m"`` -> 300000. Units: ms, s, m, h, d."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ConfigurationError(
            f"duration {text!r} is not a whole number followed by a unit (ms, s, m, h, d), "
            "e.g. 5m or 2h"
        )
    return int(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True, slots=True)
class WindowFamily:
    """Windows of one size, sliding by ``step``; reports are kept in panes of ``pane`` ms."""

    name: str
    size: int
    step: int

    @property
    def pane(self) -> int:
        """Pane length: the largest slot that tiles every window of the family exactly."""
        return math.gcd(self.size, self.step)

    def pane_start(self, t: int) -> int:
        """Start of the pane holding event time ``t``."""
        return t - t % self.pane

    def first_window_start(self, t: int) -> int:
        """Start of the earliest window containing ``t`` (smallest aligned s > t - size)."""
        lo = t - self.size + 1
        return lo + (-lo) % self.step

    def last_window_start(self, t: int) -> int:
        """Start of the latest window containing ``t`` (largest aligned s <= t)."""
        return t - t % self.step

    def window_starts(self, t: int) -> range:
        """Starts of every window containing ``t``, oldest first."""
        return range(self.first_window_start(t), self.last_window_start(t) + 1, self.step)

    def panes_of(self, window_start: int) -> range:
        """Pane starts covered by the window starting at ``window_start``."""
        return range(window_start, window_start + self.size, self.pane)

    def pane_horizon(self, pane_start: int) -> int:
        """End of the latest window containing the pane: after ``end + grace`` it is unused."""
        return self.last_window_start(pane_start) + self.size


def parse_families(spec: str) -> tuple[WindowFamily, ...]:
    """Parse ``"1h:1h:5m,3h:3h:15m"`` into families, checking names are unique."""
    families: list[WindowFamily] = []
    for part in spec.split(","):
        if not part.strip():
            continue
        bits = part.strip().split(":")
        if len(bits) != 3 or not bits[0]:
            raise ConfigurationError(f"window family {part!r} is not name:size:step, e.g. 1h:1h:5m")
        name, size, step = bits[0], parse_duration_ms(bits[1]), parse_duration_ms(bits[2])
        if size <= 0 or step <= 0 or step > size:
            raise ConfigurationError(
                f"window family {part!r}: size and step must be positive and step <= size"
            )
        if any(f.name == name for f in families):
            raise ConfigurationError(f"window family name {name!r} is given twice in {spec!r}")
        families.append(WindowFamily(name, size, step))
    if not families:
        raise ConfigurationError("no window family given; set QUEUEWATCH_AGGREGATOR_WINDOWS")
    return tuple(families)


def window_open(window_end: int, grace: int, watermark: int | None) -> bool:
    """The lateness rule: does a window still take reports at this watermark?"""
    return watermark is None or window_end + grace > watermark
