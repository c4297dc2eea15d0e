"""How a drill chooses its backup: the pick rule and the promised window, from the configuration.

`Choice.of(config, kind)` resolves `[drill] pick` and `[drill] retention_days` (unset:
`[backup] retention_days`), with `[storage] thaw` and the kind's RTO, once; `choose()`
applies them to a catalog listing and writes the pick into the record (drill.json's
``pick``), with a note when the drilled backup is not the newest (its age is then not the
RPO: the newest backup's is).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from drills.config import Config
from drills.config.picking import PickRule, parse_pick
from drills.record import DrillRecord
from drills.storage.catalog import Backup
from drills.storage.pick import Picked, pick


@dataclass(frozen=True)
class Choice:
    """Which backup a drill restores: the rule and the window it picks in."""

    rule: PickRule = field(default_factory=PickRule)
    retention: timedelta = timedelta(days=30)
    thaw: str | None = None
    """`[storage] thaw`: the retrieval tier of an archived backup's restore request."""
    thaw_timeout: float | None = None
    rto_s: float | None = None
    """The drill's RTO target, which an archive retrieval must fit."""

    @classmethod
    def of(cls, config: Config, kind: str) -> Choice:
        """The choice `config` asks for, for a drill of `kind`."""
        return cls(
            parse_pick(config.drill.pick),
            timedelta(days=config.promised_days()),
            thaw=config.storage.thaw,
            thaw_timeout=config.storage.thaw_timeout,
            rto_s=getattr(config.targets.rto, kind, None),
        )


def choose(backups: Sequence[Backup], record: DrillRecord, choice: Choice) -> Picked:
    """The backup `choice` picks among `backups`, recorded in `record.extra["pick"]`."""
    picked = pick(backups, choice.rule, retention=choice.retention, now=record.watch.started_at)
    record.extra["pick"] = picked.as_dict()
    if picked.rule.rule == "random":
        record.notes.append(
            f"picked at random among {picked.in_window} backups inside the window "
            f"(seed {picked.seed}; replay with --pick random:{picked.seed})"
        )
    if not picked.is_newest:
        record.notes.append(
            f"drilled {picked.backup.key} (pick {picked.rule.rule}), not the newest backup "
            f"{picked.newest.key}: the RPO is measured on the newest one"
        )
    return picked
