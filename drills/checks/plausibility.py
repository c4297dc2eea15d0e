"""Plausibility: is what was restored believable against what came before it?

A bad migration, a wipe or ransomware leaves production nearly empty or encrypted; the next
backup restores cleanly, and a green drill would let retention delete the last good ones.
So each drill profiles what it restored and compares it with two baselines:

- the last passing drill of the same estate (`<report-dir>/history.jsonl`): like with like,
  restored against restored;
- the backup before it in storage: its manifest (rows per table, objects, the source's size)
  when it has one, else its size (a dump a tenth the size of the one before is suspect), so
  that the first drill on a new machine has a baseline too.

A finding names the thing, before and after, and the baseline (its date and backup). A
deliberate purge is accepted for one run with `drill run --accept-shrink REASON`: the checks
then pass, and the findings and the reason go into the evidence.

>>> baselines = database_baselines(history, "drishti", backup, previous)   # doctest: +SKIP
>>> findings = judge_database(profile, backup, baselines, Thresholds())      # doctest: +SKIP
>>> record_plausibility(record, baselines, findings, accept=None)             # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from drills.record import DrillRecord
from drills.restore import inventory
from drills.storage.catalog import Backup


@dataclass(frozen=True)
class Thresholds:
    """When a change is implausible; each is a drill.toml key of `[database]`."""

    max_shrink: float = 0.5
    """Total rows, or database bytes, may drop by at most this share."""
    max_table_shrink: float = 0.9
    """One table may lose at most this share of its rows..."""
    shrink_min_rows: int = 1000
    """...when it had at least this many (small tables come and go)."""
    min_size_ratio: float = 0.1
    """A backup smaller than this share of the one before it (same format) is suspect."""
    volatile_tables: tuple[str, ...] = ()
    """Tables whose size swings by design (sessions, queues): not judged one by one."""
    allow_vanished: tuple[str, ...] = ()
    """Object kinds that may vanish between backups (e.g. "index"); tables never may."""


@dataclass
class Baseline:
    """What a drill is compared with: an earlier drill, or the backup before this one."""

    source: str
    """In words: "the last passing drill (run ..., backup ... of ...)"."""
    kind: str  # "history" | "previous backup"
    taken_at: datetime | None = None
    rows: dict[str, int] | None = None
    database_bytes: int | None = None
    inventory: inventory.Inventory | None = None
    backup_bytes: int | None = None
    backup_format: str | None = None
    backup_compression: str | None = None
    facts: list[str] = field(default_factory=list)
    """What this baseline could compare: "rows per table", "objects", "size"..."""

    def as_dict(self) -> dict[str, Any]:
        """The baseline as drill.json keeps it (its summary, not its data)."""
        return {
            "source": self.source,
            "kind": self.kind,
            "taken_at": self.taken_at.isoformat() if self.taken_at else None,
            "total_rows": sum(self.rows.values()) if self.rows is not None else None,
            "tables": len(self.rows) if self.rows is not None else None,
            "database_bytes": self.database_bytes,
            "objects": inventory.summary(self.inventory) if self.inventory is not None else None,
            "backup_bytes": self.backup_bytes,
            "compared": self.facts,
        }


@dataclass(frozen=True)
class Finding:
    """One implausible change, in words, against one baseline."""

    baseline: str
    cause: str


def last_passing(history: Iterable[Mapping[str, Any]], estate: str, kind: str) -> dict | None:
    """The newest history entry in which the estate's `kind` drill passed with a profile."""
    found = None
    for entry in history:
        drill = (entry.get("drills") or {}).get(kind) or {}
        passed = entry.get("estate") == estate and drill.get("verdict") == "pass"
        if passed and drill.get("profile"):
            found = {**drill, "run": entry.get("run"), "finished_at": entry.get("finished_at")}
    return found


def _when(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def history_baseline(entry: Mapping[str, Any] | None, backup: Backup) -> Baseline | None:
    """The last passing drill as a baseline; None when there is none or it drilled another
    backup newer than this one (comparisons only run forward in time). The same key drilled
    before is this backup as it was: a mirror synced in place, whose time goes back when a
    sync only deleted (no newer object), is still compared with what it held then."""
    if entry is None:
        return None
    drilled = entry.get("backup") or {}
    taken = _when(drilled.get("taken_at"))
    if taken is not None and taken > backup.taken_at and drilled.get("key") != backup.key:
        return None
    profile = entry["profile"]
    when = f" of {taken:%Y-%m-%d %H:%M}Z" if taken else ""
    baseline = Baseline(
        source=f"the last passing drill (run {entry.get('run')}, backup "
        f"{drilled.get('key', '?')}{when})",
        kind="history",
        taken_at=taken,
    )
    if isinstance(profile.get("rows"), dict):
        baseline.rows = {str(k): int(v) for k, v in profile["rows"].items()}
        baseline.facts.append("rows per table")
    if profile.get("database_bytes"):
        baseline.database_bytes = int(profile["database_bytes"])
        baseline.facts.append("restored bytes")
    if profile.get("inventory"):
        baseline.inventory = inventory.from_json(profile["inventory"])
        baseline.facts.append("objects")
    return baseline


def previous_baseline(previous: Backup | None) -> Baseline | None:
    """The backup before this one in storage: its manifest's facts, else its size."""
    if previous is None:
        return None
    manifest = None
    try:
        manifest = previous.manifest
    except Exception:  # a bad manifest is that backup's finding, not this drill's baseline
        manifest = None
    baseline = Baseline(
        source=f"the backup before it ({previous.key}, taken {previous.taken_at:%Y-%m-%d %H:%M}Z)",
        kind="previous backup",
        taken_at=previous.taken_at,
        backup_bytes=(manifest.bytes if manifest and manifest.bytes else previous.size) or None,
        backup_format=previous.format,
        backup_compression=previous.compression,
    )
    if baseline.backup_bytes:
        baseline.facts.append("backup size")
    if manifest is not None:
        if manifest.tables:
            baseline.rows = {t.name: t.rows for t in manifest.tables}
            baseline.facts.append("rows per table")
        if manifest.extra.get("database_bytes"):
            baseline.database_bytes = int(manifest.extra["database_bytes"])
            baseline.facts.append("source bytes")
        if manifest.extra.get("inventory"):
            baseline.inventory = inventory.from_json(manifest.extra["inventory"])
            baseline.facts.append("objects")
    return baseline


def database_baselines(
    history: Iterable[Mapping[str, Any]], estate: str, backup: Backup, previous: Backup | None
) -> list[Baseline]:
    """The database drill's baselines, the last passing drill first."""
    found = [
        history_baseline(last_passing(history, estate, "database"), backup),
        previous_baseline(previous),
    ]
    return [b for b in found if b is not None and b.facts]


def judge_database(
    profile: Any, backup: Backup, baselines: list[Baseline], limits: Thresholds
) -> list[Finding]:
    """Every implausible change of `profile` (a `drills.checks.DatabaseProfile`) against each
    baseline."""
    findings: list[Finding] = []
    manifest = backup.manifest
    for base in baselines:
        causes: list[str] = []
        if base.inventory is not None:
            causes += _vanished(base.inventory, profile.inventory, limits)
        if base.rows is not None:
            causes += _rows(base.rows, profile.rows, limits)
        if base.database_bytes:
            # Like with like: restored bytes against restored, the source's against the source's.
            now = profile.database_bytes if base.kind == "history" else None
            if base.kind == "previous backup" and manifest is not None:
                now = manifest.extra.get("database_bytes")
            if now is not None and _shrunk(base.database_bytes, int(now), limits.max_shrink):
                causes.append(
                    f"the database's size dropped from {_size(base.database_bytes)} to "
                    f"{_size(int(now))} (more than {limits.max_shrink:.0%})"
                )
        if base.backup_bytes and base.backup_format == backup.format:
            now = manifest.bytes if manifest and manifest.bytes else backup.size
            same = base.backup_compression == backup.compression
            if same and now < base.backup_bytes * limits.min_size_ratio:
                causes.append(
                    f"the backup is {_size(now)}, under {limits.min_size_ratio:.0%} of the "
                    f"{_size(base.backup_bytes)} of the one before it (a wrong or wiped "
                    "database, or a dump that stopped early?)"
                )
        findings += [Finding(base.source, cause) for cause in causes]
    return findings


def _vanished(before: inventory.Inventory, after: inventory.Inventory, limits: Thresholds):
    gone = [
        (kind, name)
        for kind, name in inventory.missing(before, after)
        if kind == "table" or kind not in limits.allow_vanished
    ]
    if not gone:
        return []
    return [f"objects vanished: {inventory.describe(gone)}"]


def _rows(before: dict[str, int], after: dict[str, int], limits: Thresholds) -> list[str]:
    causes = []
    total_before, total_after = sum(before.values()), sum(after.values())
    if total_before >= limits.shrink_min_rows and _shrunk(
        total_before, total_after, limits.max_shrink
    ):
        causes.append(
            f"total rows dropped from {total_before:,} to {total_after:,} "
            f"(more than {limits.max_shrink:.0%})"
        )
    lost = []
    for name, rows in sorted(before.items()):
        if name in limits.volatile_tables or rows < limits.shrink_min_rows or name not in after:
            continue  # a table gone entirely is the inventory's finding
        if _shrunk(rows, after[name], limits.max_table_shrink):
            lost.append(f"{name} {rows:,} -> {after[name]:,}")
    if lost:
        causes.append(
            f"tables lost more than {limits.max_table_shrink:.0%} of their rows: "
            + "; ".join(lost[:10])
            + (f" and {len(lost) - 10} more" if len(lost) > 10 else "")
        )
    return causes


def _shrunk(before: int, after: int, share: float) -> bool:
    return before > 0 and after < before * (1 - share)


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def record_plausibility(
    record: DrillRecord,
    baselines: list[Baseline],
    findings: list[Finding],
    accept: str | None,
    *,
    what: str = "what was restored",
) -> None:
    """Record one check per baseline (or a note when there is none), and the evidence."""
    record.extra["plausibility"] = {
        "baselines": [b.as_dict() for b in baselines],
        "findings": [{"baseline": f.baseline, "cause": f.cause} for f in findings],
        "accepted": accept if findings and accept else None,
    }
    if not baselines:
        record.notes.append(
            f"plausibility not reached: no earlier passing drill of this estate and no earlier "
            f"backup to compare {what} with"
        )
        return
    for base in baselines:
        mine = [f.cause for f in findings if f.baseline == base.source]
        name = "plausible against " + (
            "the last passing drill" if base.kind == "history" else "the backup before it"
        )
        if not mine:
            record.check(
                name,
                True,
                f"compared with {base.source}: {', '.join(base.facts)}; no implausible change",
            )
        elif accept:
            record.check(
                name,
                True,
                f"accepted (--accept-shrink: {accept}): "
                + "; ".join(mine)
                + f" (against {base.source})",
            )
        else:
            record.check(
                name,
                False,
                "; ".join(mine)
                + f" (against {base.source}; if deliberate, rerun with --accept-shrink REASON)",
            )


def check_not_suspect(record: DrillRecord, manifest: Any) -> None:
    """A backup its producer marked suspect (no tables, no rows, a tenth of the size of the
    one before) fails, with the producer's words."""
    if manifest is None:
        return
    causes = manifest.extra.get("suspect") or []
    if isinstance(causes, str):
        causes = [causes]
    record.check(
        "the producer did not mark the backup suspect",
        not causes,
        "marked suspect by its producer: " + "; ".join(map(str, causes))
        if causes
        else "not marked suspect",
    )
