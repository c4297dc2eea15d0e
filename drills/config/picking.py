"""`[drill] pick`: the rule that chooses which backup a drill restores, as written and parsed.

The choosing itself is `drills.storage.pick`; this is what the configuration checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from drills.config.errors import ConfigError

RULES = ("latest", "oldest", "random", "at")


@dataclass(frozen=True)
class PickRule:
    """A parsed pick rule: its name, and the seed (random) or the time (at) it carries."""

    rule: str = "latest"
    seed: int | None = None
    at: datetime | None = None

    def __str__(self) -> str:
        if self.rule == "random" and self.seed is not None:
            return f"random:{self.seed}"
        if self.rule == "at" and self.at is not None:
            return f"at:{self.at.isoformat()}"
        return self.rule


def pick_problem(text: str) -> str | None:
    """What is wrong with a pick rule as written (the end of a sentence), None if nothing."""
    try:
        parse_pick(text)
    except ConfigError as exc:
        return str(exc)
    return None


def parse_pick(text: str) -> PickRule:
    """`latest`, `oldest`, `random`, `random:<seed>` or `at:<ISO time with offset>`."""
    name, sep, arg = text.strip().partition(":")
    if name in ("latest", "oldest") and not sep:
        return PickRule(name)
    if name == "random":
        if not sep:
            return PickRule("random")
        if arg.strip().isdigit():
            return PickRule("random", seed=int(arg))
        raise ConfigError(f'must be "random:<seed>" with a whole number, got "{text}"')
    if name == "at" and sep:
        try:
            when = datetime.fromisoformat(arg.strip())
        except ValueError:
            when = None
        if when is None or when.tzinfo is None:
            raise ConfigError(
                f'must be "at:<ISO time with offset>" such as at:2025-01-15T02:00:00Z, got "{text}"'
            )
        return PickRule("at", at=when)
    raise ConfigError(
        f'must be "latest", "oldest", "random", "random:<seed>" or "at:<ISO time>", got "{text}"'
    )
