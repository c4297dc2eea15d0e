"""The recovered point, measured from the data: the newest `drill heartbeat` row restored.

A backup file's time (its name, its manifest, its mtime) says when the backup was *meant* to
be taken; the newest heartbeat row in the restored database says what production moment
the data actually holds. A database drill records both, measures the RPO from the data when
it can, and flags them when they disagree by more than one heartbeat interval (a dump of a
stale replica, a clock or time-zone mistake, a heartbeat that stopped). The point-in-time
drill checks the boundary at its target with the same rows.

    >>> point = measure_recovery_point(conn, record, backup.taken_at)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from drills.backup.heartbeat import TABLE
from drills.config.clock import human
from drills.record import DrillRecord

# A beat's row time is taken just before its commit, and beats run on a grid whose ticks
# may be late by the insert's own latency: the allowance on "within one interval".
SLACK_S = 1.0


@dataclass(frozen=True)
class Heartbeat:
    """One heartbeat row."""

    run_id: str
    seq: int
    beat_at: datetime
    interval_s: float


def newest_heartbeat(conn: psycopg.Connection, before: datetime | None = None) -> Heartbeat | None:
    """The newest heartbeat (at or before `before`); None without the table or rows."""
    with conn.transaction():
        if conn.execute("SELECT to_regclass(%s)", (TABLE,)).fetchone()[0] is None:
            return None
        row = conn.execute(
            f"SELECT run_id::text, seq, beat_at, interval_s FROM {TABLE}"
            " WHERE %s::timestamptz IS NULL OR beat_at <= %s"
            " ORDER BY beat_at DESC, seq DESC LIMIT 1",
            (before, before),
        ).fetchone()
    if row is None:
        return None
    return Heartbeat(row[0], int(row[1]), row[2].astimezone(UTC), float(row[3]))


def measure_recovery_point(
    conn: psycopg.Connection, record: DrillRecord, file_time: datetime | None
) -> datetime | None:
    """Record the data's time beside the file's; return the point to measure the RPO from
    (the data's time when the database has heartbeats, else the file's)."""
    beat = newest_heartbeat(conn)
    info: dict = {"file_time": _iso(file_time), "data_time": None, "source": "file"}
    record.extra["recovered_point"] = info
    if beat is None:
        record.notes.append(
            f"no {TABLE} rows in the restored database: the recovery point is the backup's "
            "file time (run `drill heartbeat` to measure it from the data)"
        )
        return file_time
    info.update(data_time=_iso(beat.beat_at), interval_s=beat.interval_s, source="heartbeat")
    if file_time is not None:
        gap = (file_time - beat.beat_at).total_seconds()
        info["file_minus_data_s"] = round(gap, 3)
        info["disagree"] = abs(gap) > beat.interval_s + SLACK_S
        if info["disagree"]:
            newer = "newer" if gap > 0 else "older"
            record.notes.append(
                f"recovery point: the backup's file time {_iso(file_time)} is {human(abs(gap))} "
                f"{newer} than its data ({TABLE} newest row {_iso(beat.beat_at)}), more than one "
                f"heartbeat interval ({human(beat.interval_s)}); the RPO is measured from the data"
            )
    return beat.beat_at


def check_heartbeat_boundary(
    conn: psycopg.Connection,
    record: DrillRecord,
    target: datetime,
    next_commit: datetime | None = None,
) -> Heartbeat | None:
    """Check the restored heartbeats against the recovery target, recording each result:
    none after the target, the newest within one interval of it, none missing before it.

    `next_commit` is the first commit after the target that recovery stopped before (from
    PostgreSQL's log): when production committed nothing for more than an interval after
    the newest heartbeat (a failover, the heartbeat stopped), no beat was missed."""
    beat = newest_heartbeat(conn)
    if beat is None:
        record.notes.append(
            f"no {TABLE} rows restored: the boundary at the target is checked by PostgreSQL's "
            "own stop record only (run `drill heartbeat` to check it from the data)"
        )
        return None
    with conn.transaction():
        after, newest_after = conn.execute(
            f"SELECT count(*), max(beat_at) FROM {TABLE} WHERE beat_at > %s", (target,)
        ).fetchone()
        low, high, distinct = conn.execute(
            f"SELECT min(seq), max(seq), count(DISTINCT seq) FROM {TABLE} WHERE run_id = %s",
            (beat.run_id,),
        ).fetchone()
    record.check(
        "no heartbeat after the target",
        after == 0,
        f"{after} rows after {_iso(target)}"
        + (f", the newest at {_iso(newest_after)}" if after else ""),
    )
    behind = (target - beat.beat_at).total_seconds()
    bound = beat.interval_s + SLACK_S
    quiet = next_commit is not None and (next_commit - beat.beat_at).total_seconds() > bound
    detail = (
        f"newest at {_iso(beat.beat_at)}, {behind:.3f} s before the target "
        f"(interval {beat.interval_s:g} s)"
    )
    if behind > bound and quiet:
        detail += (
            f"; production committed nothing from then until {_iso(next_commit)}, the first "
            "commit after the target: a pause of the heartbeat there (a failover?), no beat lost"
        )
    record.check(
        "newest heartbeat within one interval of the target",
        behind >= 0 and (behind <= bound or quiet),
        detail,
    )
    missing = (high - low + 1) - distinct
    record.check(
        "every heartbeat before the target present",
        missing == 0,
        f"run {beat.run_id[:8]}: beats {low}..{high}, "
        + (f"{missing} missing" if missing else "none missing"),
    )
    record.extra.setdefault("recovered_point", {}).update(
        data_time=_iso(beat.beat_at), source="heartbeat", interval_s=beat.interval_s
    )
    return beat


def _iso(when: datetime | None) -> str | None:
    if when is None:
        return None
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
