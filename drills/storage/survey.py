"""What a storage holds, kind by kind, as `drill init` describes it: which prefixes hold which
kinds of backups, the newest of each, and whether they came with manifests.

Nothing new is parsed here: every backup is found by `drills.storage.catalog.list_backups`,
under the prefixes the original runbook and the producers use (``database/``, the runbook's
gpg copies under ``encrypted/``, ``files/``, ``config/``), so what `drill init` reports is
what a drill will find.

Example::

    from drills.storage import open_storage
    from drills.storage.survey import survey

    found = survey(open_storage("file:///var/backups"))
    for kind, seen in found.kinds.items():
        print(kind, seen.prefix, seen.newest.key)
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, field

from drills.config.errors import StorageError
from drills.storage import Storage
from drills.storage.catalog import Backup, latest, list_backups

# Where each kind is looked for, in order of preference: a plain dump under database/ needs
# no passphrase, so it is drilled before the runbook's gpg copy under encrypted/.
PREFIXES = {
    "database": ("database/", "encrypted/"),
    "files": ("files/",),
    "config": ("config/",),
}
PITR_PREFIXES = ("base/", "wal/")


@dataclass(frozen=True)
class Seen:
    """The backups of one kind under one prefix, oldest first."""

    kind: str
    prefix: str
    backups: tuple[Backup, ...]

    @property
    def newest(self) -> Backup:
        """The backup a drill of this prefix restores."""
        return latest(self.backups)

    @property
    def with_manifest(self) -> int:
        """How many of the backups have a manifest (the producers write one; the runbook
        did not)."""
        return sum(1 for b in self.backups if b.manifest_key)

    @property
    def interval(self) -> float | None:
        """The median time between two backups, in seconds (None with fewer than two)."""
        times = sorted(b.taken_at for b in self.backups)
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        return statistics.median(gaps) if gaps else None

    @property
    def databases(self) -> tuple[str, ...]:
        """The database names the dumps carry (from their manifests, else their names)."""
        return tuple(sorted({b.database for b in self.backups if b.database}))


@dataclass(frozen=True)
class Survey:
    """What a storage holds: the prefix chosen for each kind found, the other prefixes that
    hold the same kind (the runbook's encrypted copies), and the point-in-time prefixes that
    hold anything."""

    url: str
    kinds: dict[str, Seen] = field(default_factory=dict)
    others: tuple[Seen, ...] = ()
    pitr: tuple[str, ...] = ()

    @property
    def layout(self) -> str:
        """ "producer" when any backup has a manifest, else "runbook"."""
        return "producer" if any(s.with_manifest for s in self.kinds.values()) else "runbook"


def survey(storage: Storage, *, name_timezone: str | None = None) -> Survey:
    """Look at every prefix of `PREFIXES` (and the point-in-time ones) of `storage`.

    Raises StorageError when the storage does not answer; a prefix holding no backup of its
    kind is simply not found.
    """
    storage.check()
    kinds: dict[str, Seen] = {}
    others: list[Seen] = []
    for kind, prefixes in PREFIXES.items():
        for prefix in prefixes:
            try:
                backups = list_backups(storage, kind, prefix, name_timezone=name_timezone)
            except StorageError as exc:
                if str(exc).startswith(f"no {kind} backups under"):
                    continue
                raise
            seen = Seen(kind, prefix, tuple(backups))
            if kind in kinds:
                others.append(seen)
            else:
                kinds[kind] = seen
    pitr = tuple(p for p in PITR_PREFIXES if next(iter(storage.list(p)), None) is not None)
    return Survey(storage.url, kinds, tuple(others), pitr)
