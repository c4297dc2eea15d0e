"""Which backup a drill restores: the latest, the oldest promised, a random one, or one at a time.

Drilling only the latest backup proves one day of the retention window. The rule is
`[drill] pick` (or `drill run --pick`):

- ``latest``: the newest backup (the default);
- ``oldest``: the oldest backup still inside the promised window (`[drill] retention_days`
  back from now): the far end of what the estate promises to restore;
- ``random`` or ``random:<seed>``: a backup drawn uniformly among the backups inside the
  window, by a seeded generator; the seed is recorded so the same draw can be replayed
  (``--pick random:<seed>``, or ``--seed``);
- ``at:<ISO time>``: the newest backup taken at or before that time (never a newer one).

The window, the rule, the seed and the chosen backup go into drill.json under ``pick``.

Example::

    rule = parse_pick("random")
    picked = pick(backups, rule, retention=timedelta(days=30), now=datetime.now(UTC))
    print(picked.backup.key, picked.seed)
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from drills.config.errors import DrillError
from drills.config.picking import PickRule, parse_pick
from drills.storage.catalog import Backup, latest, latest_at_or_before

__all__ = ["PickRule", "Picked", "parse_pick", "pick"]


@dataclass(frozen=True)
class Picked:
    """The backup a rule chose, and what it was chosen from."""

    backup: Backup
    rule: PickRule
    seed: int | None
    window_start: datetime
    window_end: datetime
    in_window: int
    """How many backups were inside the window."""
    newest: Backup
    """The newest backup of all: what a recovery now would restore, and what RPO measures."""

    @property
    def is_newest(self) -> bool:
        """Whether the chosen backup is the newest one (its age is then the RPO)."""
        return self.backup.key == self.newest.key

    def as_dict(self) -> dict:
        """The pick as drill.json shows it."""
        return {
            "rule": self.rule.rule,
            "asked": str(self.rule),
            # The rule that chooses this backup again (a random draw with its seed).
            "replay": str(PickRule(self.rule.rule, self.seed, self.rule.at)),
            "seed": self.seed,
            "at": self.rule.at.isoformat() if self.rule.at else None,
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "window_days": round((self.window_end - self.window_start) / timedelta(days=1), 3),
            "backups_in_window": self.in_window,
            "key": self.backup.key,
            "taken_at": self.backup.taken_at.isoformat(),
            "newest_key": self.newest.key,
            "newest_taken_at": self.newest.taken_at.isoformat(),
        }


def pick(
    backups: Sequence[Backup], rule: PickRule, *, retention: timedelta, now: datetime
) -> Picked:
    """Choose a backup of `backups` by `rule`, inside the window `retention` back from `now`."""
    if not backups:
        raise DrillError("no backups to choose from")
    start = now - retention
    window = sorted((b for b in backups if start <= b.taken_at <= now), key=_order)
    newest = latest(backups)
    seed = rule.seed
    if rule.rule == "latest":
        chosen = newest
    elif rule.rule == "at":
        assert rule.at is not None
        chosen = latest_at_or_before(backups, rule.at)
    else:
        if not window:
            days = retention / timedelta(days=1)
            raise DrillError(
                f"no backup inside the promised window ({days:g} days, since {_iso(start)}): "
                f"the newest was taken {_iso(newest.taken_at)}"
            )
        if rule.rule == "oldest":
            chosen = window[0]
        else:
            seed = secrets.randbelow(2**31) if seed is None else seed
            chosen = random.Random(seed).choice(window)
    return Picked(chosen, rule, seed, start, now, len(window), newest)


def _order(backup: Backup) -> tuple:
    return (backup.taken_at, backup.key)


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")
