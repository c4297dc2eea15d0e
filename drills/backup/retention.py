"""Retention that cannot lose data: which backups pruning may remove, and removing them.

Pruning is opt-in (``[backup] prune = true``) and runs only after a run's new backup is
stored and verified, in the storage and in the local directory alike, each by its own
listing. In each it:

- considers only backups this producer made for this estate (their manifest says so, see
  `drills.backup.marks`): the user's own dumps, another estate's, a manifest-less upload
  are never touched;
- does nothing while the newest of those is not good (suspect, or its manifest unreadable);
- keeps the `keep_min` newest good backups whatever their age;
- removes the rest that are older than `days`.

Example::

    doomed, why_none = select(list_series(storage, series), "drishti", Retention(True), now)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from drills.backup.series import Stored
from drills.backup.transfer import LAST
from drills.storage import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retention:
    """What pruning keeps: opt-in, past `days`, never the `keep_min` newest good backups."""

    enabled: bool = False
    days: int = 30
    keep_min: int = 7
    dry_run: bool = False
    """List what would be removed instead of removing it (whether or not `enabled`)."""

    @property
    def active(self) -> bool:
        """Whether this run looks at pruning at all."""
        return self.enabled or self.dry_run


def select(
    backups: list[Stored], estate: str, retention: Retention, now: datetime
) -> tuple[list[Stored], str | None]:
    """The backups to remove, and why none when it refuses to prune at all."""
    ours = sorted((b for b in backups if b.ours(estate)), key=lambda b: (b.taken_at, b.key))
    if not ours:
        return [], None
    newest = ours[-1]
    if newest.problem or newest.suspect:
        cause = newest.problem or "; ".join(newest.suspect)
        return [], f"the newest backup {newest.key} is not good ({cause}): nothing pruned"
    good = [b for b in ours if not (b.problem or b.suspect)]
    keep = {b.key for b in good[-retention.keep_min :]}
    horizon = now - timedelta(days=retention.days)
    return [b for b in ours if b.key not in keep and b.taken_at < horizon], None


def remove(storage: Storage, backup: Stored) -> None:
    """Remove a backup's objects (a dump's toc.dat first), its manifest last, so an
    interrupted removal never leaves something that looks like a complete backup."""
    keys = backup.object_keys()
    first = [k for k in keys if k.rsplit("/", 1)[-1] in LAST]
    rest = [k for k in keys if k not in first]
    for group in (first, rest):
        if group:
            storage.delete_all(group)
    if backup.manifest_key:
        storage.delete(backup.manifest_key)
    log.info("pruned %s/%s (taken %s)", storage.url.rstrip("/"), backup.key, backup.taken_at)
