"""The drill stopwatch: phases, bounds and the RTO/RPO verdicts.

>>> watch = Stopwatch()
>>> with watch.phase("locate"):
...     pass
>>> sorted(watch.phases)
['locate']
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from drills.config.errors import DrillError

PHASES = ("locate", "fetch", "verify", "provision", "restore", "validate", "app")


class StepTimeout(DrillError):
    """A step of a drill ran past its bound; the message names the step and the bound."""


@dataclass
class Stopwatch:
    """Wall-clock start of a drill plus the seconds spent in each named phase."""

    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    _t0: float = field(default_factory=time.monotonic)
    phases: dict[str, float] = field(default_factory=dict)
    finished_s: float | None = None
    current: tuple[str, float] | None = None
    """The phase running now and its monotonic start (the progress display reads it)."""

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase; repeated phases add up."""
        start = time.monotonic()
        outer, self.current = self.current, (name, start)
        try:
            yield
        finally:
            self.current = outer
            self.phases[name] = self.phases.get(name, 0.0) + time.monotonic() - start

    def elapsed(self) -> float:
        """Seconds since the drill started."""
        return time.monotonic() - self._t0

    def finish(self) -> float:
        """Mark the moment the drill's last check passed; return the measured RTO."""
        self.finished_s = self.elapsed()
        return self.finished_s


@dataclass(frozen=True)
class Target:
    """A target and what was measured against it, in seconds."""

    target_s: float | None
    measured_s: float | None

    @property
    def met(self) -> bool | None:
        """True/False when both are known; None when not measured or no target."""
        if self.target_s is None or self.measured_s is None:
            return None
        return self.measured_s <= self.target_s

    def as_dict(self) -> dict[str, float | None]:
        """The JSON form used in drill.json."""
        return {
            "target_s": self.target_s,
            "measured_s": None if self.measured_s is None else round(self.measured_s, 3),
        }


def human(seconds: float | None) -> str:
    """'1h 02m', '4m 05s', '12.3 s' for people."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"
