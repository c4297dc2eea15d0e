"""Point-in-time recovery: the recoverable window, the target, the base backup, the replay.

The same engine serves a drill and a real recovery. The steps:

1. `survey`: list base backups and archived WAL (names only);
2. `measure_window`: for each base backup, the continuous WAL from its start, and the newest
   commit in it (read with the server major's `pg_waldump` in the recovery container): a
   base backup can be recovered to any time from its end up to, not including, that commit;
3. `choose_target` / `recoverable_at`: the target given, or a random point in the window;
   the latest base backup whose end is at or before it (never a newer one) with WAL
   continuous up to it, else an error naming the first missing segment and the latest
   recoverable time, or the window;
4. `drills.pitr.recovery.Recovery`: stream the base backup into the container's data
   directory (sha256 checked on the way), `pg_verifybackup` it with the WAL it needs, then
   let PostgreSQL replay the fed WAL to ``recovery_target_time`` and promote; each step
   bounded and timed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from drills.config import Config
from drills.config.errors import ConfigError, DrillError
from drills.pitr.catalog import (
    BaseBackup,
    WalArchive,
    WalPlan,
    list_base_backups,
    list_wal,
    plan_for,
)
from drills.pitr.container import (
    SCAN_DIR,
    WAL_DIR,
    RecoveryContainer,
)
from drills.storage import Storage
from drills.storage.manifest import manifest_key
from drills.storage.walfile import (
    format_lsn,
    lsn_segno,
    parse_lsn,
    parse_segment,
    segment_name,
    timeline_of,
)

SCAN_BACK = 8
_COMMIT = re.compile(
    r"lsn: (?P<lsn>[0-9A-F]+/[0-9A-F]+),.*desc: (?:COMMIT|ABORT)(?:_PREPARED)? (?:\d+: )?"
    r"(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC"
)


class RecoveryError(DrillError):
    """The recovery itself failed: the server stopped, or the WAL ran out before the target."""


@dataclass(frozen=True)
class Recoverable:
    """What one base backup can be recovered to: from its end up to, not including, `end`."""

    base: BaseBackup
    plan: WalPlan
    end: datetime | None
    """The newest commit in its continuous WAL; None when there is none after the base."""
    end_segment: str | None = None

    @property
    def start(self) -> datetime:
        """The earliest point: the end of the base backup."""
        return self.base.ended_at

    @property
    def usable(self) -> bool:
        """Whether any point can be recovered to from this base backup."""
        return self.plan.consistent and self.end is not None and self.end > self.start


@dataclass
class Survey:
    """The base backups and archived WAL found in a storage."""

    bases: list[BaseBackup]
    archive: WalArchive
    problems: list[str] = field(default_factory=list)

    @property
    def newest(self) -> BaseBackup:
        """The newest base backup: its major and superuser set up the recovery container."""
        return self.bases[-1]


def survey(storage: Storage, base_prefix: str, wal_prefix: str) -> Survey:
    """List base backups and WAL; bases of another major than the newest are left out."""
    bases, problems = list_base_backups(storage, base_prefix)
    where = storage.url.rstrip("/")
    if not bases:
        why = f" ({'; '.join(problems)})" if problems else ""
        raise DrillError(f"no base backups under {where}/{base_prefix}{why}")
    archive = list_wal(storage, wal_prefix)
    if not archive.segments:
        raise DrillError(f"no archived WAL under {where}/{wal_prefix} (is drill backup wal run?)")
    major = bases[-1].major
    other = [b for b in bases if b.major != major]
    problems += [
        f"{b.key}: PostgreSQL {b.major}, not the newest's {major}: left out" for b in other
    ]
    if archive.unfinished:
        shown = ", ".join(archive.unfinished[:3]) + (" ..." if len(archive.unfinished) > 3 else "")
        problems.append(
            f"{len(archive.unfinished)} WAL files stored without a manifest of drill backup wal "
            f"({shown}): each is checked by its compressed stream, its size and its first page"
        )
    return Survey([b for b in bases if b.major == major], archive, problems)


@dataclass
class Window:
    """Every base backup with the stretch of time it can be recovered to."""

    stretches: list[Recoverable]

    @property
    def usable(self) -> list[Recoverable]:
        """The stretches that hold at least one point."""
        return [r for r in self.stretches if r.usable]

    @property
    def latest(self) -> datetime | None:
        """The newest recoverable point's bound (the newest archived commit)."""
        ends = [r.end for r in self.usable if r.end is not None]
        return max(ends) if ends else None

    def ranges(self) -> list[tuple[datetime, datetime]]:
        """The recoverable time as disjoint [start, end) ranges, oldest first."""
        merged: list[list[datetime]] = []
        for r in sorted(self.usable, key=lambda r: r.start):
            if merged and r.start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], r.end)
            else:
                merged.append([r.start, r.end])
        return [(a, b) for a, b in merged]

    def describe(self) -> str:
        """The window for people: '2025-01-15T02:00:01Z .. 2025-01-15T09:59:58Z'."""
        ranges = self.ranges()
        if not ranges:
            return "empty (" + "; ".join(why_unusable(r) for r in self.stretches) + ")"
        return "; ".join(f"{iso(a)} .. {iso(b)} (exclusive)" for a, b in ranges)


def why_unusable(r: Recoverable) -> str:
    """Why a base backup holds no recoverable point, naming the segment that is missing."""
    plan, base = r.plan, r.base
    seg = base.segment_size
    if not plan.consistent:
        start = lsn_segno(base.start_lsn, seg)
        number = parse_segment(plan.last, seg)[1] + 1 if plan.last else start
        missing = plan.key(segment_name(timeline_of(list(plan.path), number, seg), number, seg))
        what = "its first WAL segment" if number == start else "the first missing segment"
        return (
            f"{base.key}: {missing} is missing ({what}), before the backup's end "
            f"{base.manifest.extra.get('end_wal') or format_lsn(base.end_lsn)}"
        )
    if r.end is None or r.end <= r.start:
        last = plan.key(plan.last) if plan.last else "?"
        return (
            f"{base.key}: no transaction committed after it ended ({iso(r.start)}) in its WAL "
            f"up to {last} (nothing written since, or not archived yet: drill heartbeat and "
            "archive_timeout see to it)"
        )
    return f"{base.key}: recoverable"


def measure_window(
    found: Survey, storage: Storage, container: RecoveryContainer, timeout: float = 300
) -> Window:
    """Plan each base backup's WAL and find the newest commit in it (pg_waldump)."""
    container.sh(f"mkdir -p {WAL_DIR} {SCAN_DIR}", timeout=30)
    newest: dict[tuple[str | None, int], tuple[datetime | None, str | None]] = {}
    stretches = []
    for base in found.bases:
        plan = plan_for(base, found.archive, storage)
        key = (plan.last, base.end_lsn)
        if key not in newest:
            newest[key] = _newest_commit(container, storage, found.archive, plan, timeout)
        end, where = newest[key]
        stretches.append(Recoverable(base, plan, end, where))
    return Window(stretches)


def _newest_commit(
    container: RecoveryContainer,
    storage: Storage,
    archive: WalArchive,
    plan: WalPlan,
    timeout: float,
) -> tuple[datetime | None, str | None]:
    """The newest commit (or abort) after the base backup's end in the plan's WAL."""
    if not plan.consistent:
        return None, None
    seg = plan.base.segment_size
    first = lsn_segno(plan.base.end_lsn, seg)
    for name in reversed(plan.segments[-SCAN_BACK:]):
        if parse_segment(name, seg)[1] < first:
            break
        data, _ = archive.read(storage, name, list(plan.path))
        container.put(SCAN_DIR, {name: data})
        result = container.sh(
            f"pg_waldump --rmgr=Transaction --path={SCAN_DIR} {name}; rm -f {SCAN_DIR}/{name}",
            timeout=timeout,
        )
        times = [
            _utc(m["ts"])
            for m in _COMMIT.finditer(result.stdout.decode(errors="replace"))
            if parse_lsn(m["lsn"]) > plan.base.end_lsn
        ]
        if times:
            return max(times), name
        if result.returncode == 127:
            raise DrillError(f"pg_waldump is missing from the image {container.image}")
    return None, None


def choose_target(
    window: Window,
    given: str | None,
    rng: random.Random | None = None,
    since: datetime | None = None,
) -> tuple[datetime, str]:
    """The target time and where it came from ("given" or "random in the window"); a random
    one is drawn over the window from `since` (the promise's start) on."""
    if given:
        when = datetime.fromisoformat(given.replace("Z", "+00:00"))
        if when.tzinfo is None:
            raise ConfigError(f"[pitr] target {given!r} needs a UTC offset (Z or +02:00)")
        return when.astimezone(UTC), "given"
    ranges = [(max(a, since), b) for a, b in window.ranges() if since is None or b > since]
    if not ranges:
        raise DrillError(f"nothing can be recovered: the recoverable window is {window.describe()}")
    rng = rng or random.Random()
    total = sum((b - a).total_seconds() for a, b in ranges)
    point = rng.uniform(0, total)
    for a, b in ranges:
        span = (b - a).total_seconds()
        if point < span:
            break
        point -= span
    # whole microseconds, strictly before the end
    when = a + timedelta(microseconds=int(point * 1e6))
    return min(when, b - timedelta(microseconds=1)), "random in the window"


def recoverable_at(window: Window, target: datetime) -> Recoverable:
    """The latest base backup whose end is at or before `target`, with WAL up to it."""
    older = sorted(
        (r for r in window.stretches if r.start <= target), key=lambda r: r.start, reverse=True
    )
    span = f"recoverable window: {window.describe()}"
    if not older:
        oldest = min(window.stretches, key=lambda r: r.start)
        raise DrillError(
            f"target {iso(target)} is before the end of the oldest base backup "
            f"({oldest.base.key} ended {iso(oldest.start)}); {span}"
        )
    for r in older:
        if r.usable and target < r.end:
            return r
    r = older[0]
    latest = f"the latest recoverable time from {r.base.key} is " + (
        f"just before {iso(r.end)}" if r.end else "none"
    )
    if r.plan.first_missing:
        missing = r.plan.key(r.plan.first_missing)
        raise DrillError(
            f"target {iso(target)} cannot be reached from {r.base.key}: {missing} is missing (the "
            f"first missing WAL segment; later ones are archived); {latest}; {span}"
        )
    if not r.plan.consistent:
        raise DrillError(f"target {iso(target)} cannot be reached: {why_unusable(r)}; {span}")
    raise DrillError(
        f"target {iso(target)} is at or after the newest archived commit ({latest}, in "
        f"{r.plan.key(r.end_segment or r.plan.last or '?')}); {span}"
    )


def passed_over(window: Window, target: datetime, chosen: Recoverable) -> list[str]:
    """Notes on newer base backups that ended before the target but cannot reach it."""
    newer = [r for r in window.stretches if chosen.start < r.start <= target]
    return [
        f"{r.base.key} ended before the target but its WAL does not reach it"
        + (f" ({r.plan.key(r.plan.first_missing)} is missing)" if r.plan.first_missing else "")
        + f"; recovered from the older {chosen.base.key}"
        for r in newer
    ]


def database_name(config: Config) -> str:
    """The database the drill checks: [pitr] database, else [database] name."""
    name = (config.pitr.database if config.pitr else None) or (
        config.database.name if config.database else None
    )
    if not name:
        raise ConfigError("[pitr] database is not set (nor [database] name): what to check?")
    return name


def since(text: str | None) -> datetime | None:
    """An ISO-8601 setting with an offset (checked when the configuration loaded) as UTC."""
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def timeline_note(chosen: Recoverable, facts: dict[str, Any]) -> str:
    """Which timeline the recovered point lies on, and the timelines replayed to reach it."""
    plan = chosen.plan
    on = facts.get("target_on_timeline")
    along = ", ".join(str(t) for t in plan.timelines)
    where = f"the target lies on timeline {on}" if on else "the target's timeline is unknown"
    switches = [f"{s.tli} -> at {format_lsn(s.begin)}" for s in plan.path[1:]]
    history = f" (switches: {'; '.join(switches)})" if switches else ""
    return (
        f"{where}; WAL replayed along timeline{'s' if len(plan.path) > 1 else ''} {along}{history},"
        f" recovery_target_timeline = {plan.target_timeline}"
    )


def iso(when: datetime) -> str:
    """UTC ISO 8601 with a Z, to the microsecond."""
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _utc(text: str) -> datetime:
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    return datetime.strptime(text, fmt).replace(tzinfo=UTC)


def describe_base(r: Recoverable) -> dict[str, Any]:
    """The base backup as drill.json shows it (like a database drill's backup)."""
    base = r.base
    return {
        "key": base.key,
        "taken_at": base.started_at.isoformat(),
        "ended_at": base.ended_at.isoformat(),
        "time_source": "manifest",
        "bytes": base.manifest.bytes,
        "sha256": None,
        "manifest": manifest_key(base.key),
        "format": "tar",
        "compression": base.manifest.compression,
        "encrypted": False,
        "server_version": base.manifest.server_version,
        "start_lsn": format_lsn(base.start_lsn),
        "end_lsn": format_lsn(base.end_lsn),
        "timeline": base.timeline,
    }
