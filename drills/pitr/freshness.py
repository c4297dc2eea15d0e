"""How fresh point-in-time recovery is, from names alone: for `drill status` and the freshness
drill.

WAL archiving exists for the database RPO, so the newest shipped segment's age is measured
against it: a stalled shipper (or an archive_command that stopped) shows as WAL older than
the RPO, although every base backup is fine. The newest base backup's age is measured against
`[pitr] base_max_age` (a recovery replays all WAL since it), and the window's continuity is
checked as the pitr drill checks it (`drills.pitr.continuity`), without starting anything.

    >>> found = pitr_freshness(storage, "base/", "wal/", accept_before=None)  # doctest: +SKIP
    >>> found.wal_age_s(now), found.continuity.describe()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from drills.config.clock import human
from drills.config.errors import DrillError
from drills.pitr.catalog import BaseBackup, WalArchive, list_base_backups, list_wal
from drills.pitr.continuity import Continuity, continuity
from drills.pitr.plan import iso
from drills.storage import Storage
from drills.storage.manifest import Manifest, manifest_key


@dataclass
class PitrFreshness:
    """The newest base backup and WAL segment, and whether the window between holds."""

    bases: list[BaseBackup]
    archive: WalArchive
    newest_segment: str | None = None
    newest_segment_at: datetime | None = None
    newest_segment_source: str = "manifest"
    continuity: Continuity | None = None
    problems: list[str] = field(default_factory=list)
    base_prefix: str = "base/"

    @property
    def newest_base(self) -> BaseBackup | None:
        """The base backup that ended last."""
        return self.bases[-1] if self.bases else None

    def base_age_s(self, now: datetime) -> float | None:
        """Seconds since the newest base backup ended."""
        base = self.newest_base
        return None if base is None else (now - base.ended_at).total_seconds()

    def wal_age_s(self, now: datetime) -> float | None:
        """Seconds since the newest segment was archived (or, without a manifest, stored)."""
        if self.newest_segment_at is None:
            return None
        return (now - self.newest_segment_at).total_seconds()

    def checks(
        self, now: datetime, rpo_s: float, base_max_age_s: float
    ) -> list[tuple[str, bool, str]]:
        """The freshness drill's checks: (name, passed, evidence) each."""
        found = []
        base = self.newest_base
        if base is None:
            found.append(("base: a base backup exists", False, f"none under {self.base_prefix}"))
        else:
            age = self.base_age_s(now)
            found.append((
                "base: newest base backup within [pitr] base_max_age",
                age <= base_max_age_s,
                f"{base.key} ended {iso(base.ended_at)}, {human(age)} old, target "
                f"{human(base_max_age_s)}",
            ))  # fmt: skip
        prefix = self.archive.prefix
        if self.newest_segment is None:
            found.append(("wal: WAL is archived", False, f"no WAL under {prefix}"))
            return found
        age = self.wal_age_s(now)
        found.append((
            "wal: newest segment within the database RPO",
            age <= rpo_s,
            f"{prefix}{self.newest_segment} {self.newest_segment_source} "
            f"{iso(self.newest_segment_at)}, {human(age)} old, target {human(rpo_s)} (is drill "
            "backup wal shipping?)",
        ))  # fmt: skip
        if self.continuity is not None:
            found.append((
                "wal: continuous from the base backup to the newest segment",
                self.continuity.ok,
                self.continuity.describe(),
            ))  # fmt: skip
        return found


def pitr_freshness(
    storage: Storage, base_prefix: str, wal_prefix: str, accept_before: datetime | None = None
) -> PitrFreshness:
    """List base backups and WAL; the newest of each and the continuity between them."""
    bases, problems = list_base_backups(storage, base_prefix)
    archive = list_wal(storage, wal_prefix)
    found = PitrFreshness(bases, archive, problems=problems, base_prefix=base_prefix)
    names = sorted(archive.segments | archive.partials, key=lambda n: (n[8:], n[:8]))
    if names:
        newest = names[-1]
        stored = archive.files.get(newest) or archive.files[f"{newest}.partial"]
        found.newest_segment = newest
        found.newest_segment_at = stored.modified
        found.newest_segment_source = "stored"
        if stored.manifest:
            try:
                mkey = manifest_key(stored.key)
                manifest = Manifest.from_json(storage.read_bytes(mkey), source=mkey)
                found.newest_segment_at = manifest.started_at
                found.newest_segment_source = "archived"
            except DrillError as exc:
                found.problems.append(str(exc))
    if bases and names:
        try:
            found.continuity = continuity(bases, archive, storage, accept_before)
        except DrillError as exc:
            found.problems.append(str(exc))
    return found


def status_rows(
    found: PitrFreshness, now: datetime, rpo_s: float, base_max_age_s: float
) -> dict[str, dict]:
    """`drill status` rows for base backups and WAL, in the shape of the other kinds' rows."""
    week = 7 * 24 * 3600
    base = found.newest_base
    rows: dict[str, dict] = {}
    if base is None:
        rows["base"] = _missing(base_max_age_s, "; ".join(found.problems) or "no base backups")
    else:
        age = found.base_age_s(now)
        rows["base"] = {
            "count_7d": sum(1 for b in found.bases if (now - b.ended_at).total_seconds() <= week),
            "count": len(found.bases),
            "latest": _latest(base.key, base.ended_at, "manifest", age, base.manifest.bytes),
            "rpo_s": base_max_age_s,
            "target": "[pitr] base_max_age",
            "within_rpo": age <= base_max_age_s,
            "suspect": [],
            "manifests": f"{len(found.bases)}/{len(found.bases)}",
            "error": None,
        }
    if found.newest_segment is None:
        rows["wal"] = _missing(rpo_s, "no archived WAL (is drill backup wal run?)")
        return rows
    archive = found.archive
    segments = archive.segments | archive.partials
    age = found.wal_age_s(now)
    recent = [f for n, f in archive.files.items() if n[:24] in segments and f.modified]
    checked = found.continuity
    rows["wal"] = {
        "count_7d": sum(1 for f in recent if (now - f.modified).total_seconds() <= week),
        "count": len(segments),
        "latest": _latest(
            f"{archive.prefix}{found.newest_segment}",
            found.newest_segment_at,
            found.newest_segment_source,
            age,
            None,
        ),
        "rpo_s": rpo_s,
        "target": "[targets.rpo] database",
        "within_rpo": age is not None and age <= rpo_s,
        "suspect": [],
        "manifests": f"{sum(1 for f in archive.files.values() if f.manifest)}/{len(archive.files)}",
        "continuity": checked.describe() if checked else None,
        "holes": [] if checked is None or checked.ok else [checked.describe()],
        "error": None,
    }
    return rows


def _latest(key: str, when: datetime, source: str, age: float | None, size: int | None) -> dict:
    return {
        "key": key,
        "taken_at": when.isoformat(),
        "time_source": source,
        "age_s": round(age or 0.0, 1),
        "bytes": size,
    }


def _missing(target_s: float, error: str) -> dict:
    return {"count_7d": 0, "latest": None, "within_rpo": False, "rpo_s": target_s, "error": error}
