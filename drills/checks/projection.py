"""RTO projected to production size: what the drill measured, scaled to the real database.

A drill restores a backup and times every phase. The phases that grow with the data (fetch,
restore, analyze, validate) are scaled by the ratio of the production database's size to the
restored one's; the others (locate, verify, provision) are kept as measured. Linear scaling
is a lower bound for index builds (n log n): `bench/` measures how far off it is.

The production size comes, in order, from `[database] production_bytes`, from the size the
producer recorded in the manifest (`extra.database_bytes`, the source database at dump time),
else there is none and the projection is the measurement itself. Either is compared with the
restored database's own size (`pg_database_size`, measured after the restore).

>>> p = projection({"restore": 10.0, "provision": 1.0}, elapsed_s=12.0, backup_bytes=50,
...                restored_bytes=200, production_bytes=800, target_s=60)
>>> p["ratio"], p["projected_s"], p["met"]
(4.0, 42.0, True)
"""

from __future__ import annotations

from typing import Any

import psycopg

from drills.config.clock import human
from drills.record import DrillRecord
from drills.storage.catalog import Backup

SCALABLE = ("fetch", "restore", "analyze", "validate")
CHECK = "RTO projected to production size"


def projection(
    phases: dict[str, float],
    *,
    elapsed_s: float,
    backup_bytes: int | None,
    restored_bytes: int,
    production_bytes: int | None = None,
    manifest_bytes: int | None = None,
    target_s: float | None = None,
) -> dict[str, Any]:
    """The projection as drill.json shows it: measured, production size, projected, target.

    `production_bytes` is the configured size (None: unset), `manifest_bytes` the source
    database's size recorded by the producer (None: not recorded); `elapsed_s` the drill's
    time so far (what is in no scalable phase counts as fixed).
    """
    scalable = sum(phases.get(name, 0.0) for name in SCALABLE)
    fixed = max(0.0, elapsed_s - scalable)
    restore_s = phases.get("restore", 0.0) + phases.get("fetch", 0.0)
    if production_bytes is not None:
        basis, size = "[database] production_bytes", production_bytes
    elif manifest_bytes is not None:
        basis, size = "manifest: source database size at dump time", manifest_bytes
    else:
        basis = (
            "none: the measurement itself (no [database] production_bytes, no size in the manifest)"
        )
        size = None
    ratio = size / restored_bytes if size is not None and restored_bytes > 0 else 1.0
    projected = fixed + scalable * ratio
    return {
        "basis": basis,
        "measured": {
            "seconds": round(elapsed_s, 3),
            "scalable_s": round(scalable, 3),
            "fixed_s": round(fixed, 3),
            "restore_s": round(restore_s, 3),
            "backup_bytes": backup_bytes,
            "database_bytes": restored_bytes,
            "backup_bytes_per_s": _rate(backup_bytes, restore_s),
            "database_bytes_per_s": _rate(restored_bytes, restore_s),
        },
        "production_bytes": size,
        "ratio": round(ratio, 4),
        "projected_s": round(projected, 3),
        "target_s": target_s,
        "met": None if target_s is None else projected <= target_s,
    }


def project_rto(
    record: DrillRecord,
    backup: Backup,
    restored_bytes: int,
    *,
    production_bytes: int | None,
    target_s: float | None,
    enforce: bool,
) -> dict[str, Any]:
    """Project the drill's RTO to production size into `record` (drill.json `projection`).

    Over the target, `enforce` records a failed check ("projected over target", which fails
    the drill); without it, a note says so.
    """
    manifest = backup.manifest
    recorded = manifest.extra.get("database_bytes") if manifest is not None else None
    backup_bytes = (record.backup or {}).get("bytes") or backup.size
    result = projection(
        dict(record.watch.phases),
        elapsed_s=record.watch.elapsed(),
        backup_bytes=backup_bytes,
        restored_bytes=restored_bytes,
        production_bytes=production_bytes,
        manifest_bytes=int(recorded) if isinstance(recorded, int | float) else None,
        target_s=target_s,
    )
    result["enforced"] = enforce
    record.extra["projection"] = result
    if result["met"] is False:
        detail = (
            f"projected over target: {human(result['projected_s'])} at "
            f"{_size(result['production_bytes'])} (measured {human(result['measured']['seconds'])}"
            f" at {_size(restored_bytes)}), target {human(target_s)}"
        )
        if enforce:
            record.check(CHECK, False, detail)
        else:
            record.notes.append(f"{detail} (not enforced: [targets] enforce_projection)")
    elif result["met"] and enforce:
        record.check(
            CHECK,
            True,
            f"projected {human(result['projected_s'])} at {_size(result['production_bytes'])}, "
            f"target {human(target_s)}",
        )
    return result


def database_bytes(conn: psycopg.Connection) -> int:
    """The size of the connected database on disk (`pg_database_size`)."""
    return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])


def _rate(count: int | None, seconds: float) -> float | None:
    return round(count / seconds, 1) if count and seconds > 0 else None


def _size(count: int | None) -> str:
    if count is None:
        return "the measured size"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"
