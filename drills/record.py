"""The record of one drill, as it goes into drill.json.

The fields `kind`, `verdict`, `backup`, `phases`, `rto`, `rpo`, `checks`, `error` are stable;
later additions go next to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from drills.config.clock import Stopwatch, Target


@dataclass
class Check:
    """One verification: its name, whether it passed, its evidence in words and, when it is
    about one container, that container's name by role ("api")."""

    name: str
    passed: bool
    detail: str = ""
    container: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        found = {"name": self.name, "passed": self.passed, "detail": self.detail}
        return found | ({"container": self.container} if self.container else {})


@dataclass
class DrillRecord:
    """Everything one drill measured and concluded."""

    kind: str
    watch: Stopwatch = field(default_factory=Stopwatch)
    verdict: str = "fail"  # "pass" | "fail" | "not_run"
    backup: dict[str, Any] | None = None
    rto: Target = field(default_factory=lambda: Target(None, None))
    rpo: Target = field(default_factory=lambda: Target(None, None))
    checks: list[Check] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def check(
        self, name: str, passed: bool, detail: str = "", container: str | None = None
    ) -> Check:
        """Record a check's result and return it."""
        result = Check(name, bool(passed), detail, container)
        self.checks.append(result)
        return result

    @property
    def failed_checks(self) -> list[Check]:
        """The checks that did not pass."""
        return [c for c in self.checks if not c.passed]

    def as_dict(self) -> dict[str, Any]:
        """The drill's entry in drill.json."""
        return {
            "kind": self.kind,
            "verdict": self.verdict,
            "started_at": self.watch.started_at.isoformat(),
            "backup": self.backup,
            "phases": {name: round(s, 3) for name, s in self.watch.phases.items()},
            "rto": self.rto.as_dict(),
            "rpo": self.rpo.as_dict(),
            "checks": [c.as_dict() for c in self.checks],
            "error": self.error,
            "notes": self.notes,
            **self.extra,
        }
