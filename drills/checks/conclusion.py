"""The steps a scenario is told in: locate a backup, describe it, conclude the verdict.

Scenarios read like the runbook they prove; the mechanics of each step live here and in the
modules it calls.
"""

from __future__ import annotations

from datetime import UTC, datetime

from drills.checks.archive import judge_archive, thaw_backup
from drills.checks.choice import Choice, choose
from drills.config.clock import Target, human
from drills.config.errors import DrillError, StorageError
from drills.record import DrillRecord
from drills.storage import Storage, catalog
from drills.storage.catalog import Backup


class DrillFailed(DrillError):
    """The drill ran to its end and some check or target failed; the message lists why.

    `first_cause` is the first of them, and `container` the container it is about, if any.
    """

    first_cause: str = ""


def locate(
    storage: Storage,
    kind: str,
    record: DrillRecord,
    prefix: str | None = None,
    *,
    zone: str | None = None,
) -> Backup:
    """Find the latest backup of a kind and describe it in the record."""
    return locate_with_previous(storage, kind, record, prefix, zone=zone)[0]


def locate_with_previous(
    storage: Storage,
    kind: str,
    record: DrillRecord,
    prefix: str | None = None,
    *,
    zone: str | None = None,
    choice: Choice | None = None,
) -> tuple[Backup, Backup | None]:
    """The backup of a kind `choice` picks (the latest without one), described in the
    record, and the one before it, the plausibility checks' baseline in storage (None when
    it is the only one). `zone` is `[storage] name_timezone`, the zone of the times in
    backup names."""
    with record.watch.phase("locate"):
        backups = catalog.list_backups(storage, kind, prefix, name_timezone=zone)
        if choice is None:
            backup = catalog.latest(backups)
        else:
            picked = choose(backups, record, choice)
            backup = picked.backup
            judge_archive(storage, backups, picked, record, choice)
    earlier = [b for b in backups if (b.taken_at, b.key) < (backup.taken_at, backup.key)]
    previous = catalog.latest(earlier) if earlier else None
    record.backup = describe(backup)
    if backup.time_note:
        record.notes.append(f"{backup.key}: {backup.time_note}")
    if backup.manifest_key is None:
        cannot = _MIRROR if backup.format == catalog.MIRROR else _WITHOUT_MANIFEST.get(kind, "")
        record.notes.append(f"{backup.key} has no manifest: {cannot}")
    if choice is not None:
        thaw_backup(storage, backup, record, choice)
    return backup, previous


_WITHOUT_MANIFEST = {
    "database": "integrity rests on the compressor's own check and the restore itself; row "
    "counts and checksums cannot be compared",
    "files": "integrity rests on the files as they are stored; checksums cannot be compared "
    "with what was backed up",
    "config": "integrity rests on the compressor's own check (and gpg's, when encrypted); "
    "member checksums cannot be compared with what was archived",
}
"""What a drill without a manifest cannot prove, per kind."""
_MIRROR = (
    "integrity rests on each object's ETag (the MD5 the store took at upload; a multipart one "
    "where its part size can be inferred) and size; a mirror keeps no modes, owners, times, "
    "links or empty directories"
)


def locate_optional(
    storage: Storage,
    kind: str,
    record: DrillRecord,
    prefix: str,
    *,
    required: bool,
    key: str,
    zone: str | None = None,
) -> Backup | None:
    """The latest backup of a kind a drill uses beside its main one (described in the record
    under `key`, e.g. "uploads_backup"); None, with a note, when there is none and it is not
    `required`. `zone` as for `locate_with_previous`."""
    with record.watch.phase("locate"):
        try:
            backup = catalog.latest(catalog.list_backups(storage, kind, prefix, name_timezone=zone))
        except StorageError:
            if required:
                raise
            record.notes.append(f"no {kind} backup under {prefix}: the drill goes on without one")
            return None
    record.extra[key] = describe(backup)
    return backup


def describe(backup: Backup) -> dict:
    """The backup as drill.json shows it."""
    manifest = backup.manifest
    return {
        "key": backup.key,
        "taken_at": backup.taken_at.isoformat(),
        "time_source": backup.time_source,
        "name_time": backup.name_time.isoformat() if backup.name_time else None,
        "written_at": backup.written_at.isoformat() if backup.written_at else None,
        "bytes": manifest.bytes if manifest and manifest.bytes is not None else backup.size,
        "sha256": manifest.sha256 if manifest else None,
        "manifest": backup.manifest_key,
        "format": backup.format,
        "compression": backup.compression,
        "encrypted": backup.encrypted,
        "storage_class": backup.storage_class,
    }


def conclude(
    record: DrillRecord,
    rto_target_s: float | None,
    rpo_target_s: float | None,
    taken_at: datetime | None,
) -> None:
    """Measure RTO and RPO, then fail with every cause if a check or a target failed.

    When the drill restored an older backup than the newest (`[drill] pick`), the RPO is the
    newest backup's age: the data a recovery now would lose, not the picked backup's age."""
    measured_rto = record.watch.finish()
    record.rto = Target(rto_target_s, measured_rto)
    picked = record.extra.get("pick") or {}
    if taken_at is not None and picked.get("newest_key") not in (None, picked.get("key")):
        taken_at = datetime.fromisoformat(picked["newest_taken_at"])
    if taken_at is not None:
        age = (record.watch.started_at - taken_at.astimezone(UTC)).total_seconds()
        record.rpo = Target(rpo_target_s, max(age, 0.0))
    causes = [f"check failed: {c.name}: {c.detail}" for c in record.failed_checks]
    if record.rto.met is False:
        causes.append(
            f"RTO over target: measured {human(measured_rto)}, target {human(rto_target_s)}"
        )
    if record.rpo.met is False:
        causes.append(
            f"RPO over target: the backup is {human(record.rpo.measured_s)} old at drill start, "
            f"target {human(rpo_target_s)} (stale backup)"
        )
    if causes:
        first = record.failed_checks[0] if record.failed_checks else None
        failed = DrillFailed("; ".join(causes), container=first.container if first else None)
        failed.first_cause = causes[0]
        raise failed
