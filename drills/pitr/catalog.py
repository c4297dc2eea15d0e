"""Find what point-in-time recovery needs in a storage: base backups and archived WAL.

Base backups are ``base/<YYYYMMDD_HHMMSS>/`` with the manifest `drill backup base` writes
beside them (``base/<ts>.manifest.json``): it carries the WAL range and the times a recovery
is planned by, so a base backup without one is reported, not guessed at. WAL is what
`drill backup wal` stored (``wal/<name>.gz`` plus a manifest each, see `drills.backup.wal`);
an object without its manifest is an unfinished upload and counts as missing.

A `WalPlan` is the chain of segments one base backup needs: from the segment its backup
starts in, along the timeline path to the newest timeline that descends from it (as
PostgreSQL's ``recovery_target_timeline = 'latest'`` does), as far as the segments are
continuous. Listing reads names only; a segment's bytes and manifest are read when fetched.

Example::

    bases, problems = list_base_backups(storage, "base/")
    archive = list_wal(storage, "wal/")
    plan = plan_for(bases[-1], archive, storage)
    print(plan.segments[-1], plan.first_missing)
"""

from __future__ import annotations

import gzip
import hashlib
import re
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

from drills.backup.common import STAMP
from drills.backup.wal import SUFFIX as WAL_SUFFIX
from drills.config.errors import DrillError, IntegrityError
from drills.storage import Storage
from drills.storage.manifest import SUFFIX, FileEntry, Manifest, manifest_key
from drills.storage.walfile import (
    HISTORY,
    SEGMENT,
    Switch,
    TimelineStretch,
    history_tli,
    lsn_segno,
    on_path,
    parse_history,
    parse_lsn,
    parse_segment,
    segment_name,
    timeline_of,
    timeline_path,
)

_BASE_DIR = re.compile(rf"^(?P<name>{STAMP.pattern})/")


@dataclass(frozen=True)
class BaseBackup:
    """One base backup and the facts its manifest states."""

    key: str
    manifest: Manifest

    def _extra(self, name: str) -> object:
        value = self.manifest.extra.get(name)
        if value is None:
            raise IntegrityError(f"{manifest_key(self.key)}: no {name!r} (not a base manifest?)")
        return value

    @property
    def started_at(self) -> datetime:
        """When the backup began."""
        return self.manifest.started_at

    @property
    def ended_at(self) -> datetime:
        """When it ended, by the server's clock (that of commit times) when the manifest has
        it: the earliest time it can be recovered to."""
        text = self.manifest.extra.get("server_ended_at")
        if isinstance(text, str):
            try:
                return datetime.fromisoformat(text).astimezone(UTC)
            except ValueError:
                pass
        return self.manifest.finished_at

    @property
    def start_lsn(self) -> int:
        """Where its WAL begins."""
        return parse_lsn(str(self._extra("start_lsn")))

    @property
    def end_lsn(self) -> int:
        """Where its WAL must at least reach for a consistent database."""
        return parse_lsn(str(self._extra("end_lsn")))

    @property
    def timeline(self) -> int:
        """The timeline it was taken on."""
        return int(self._extra("timeline"))

    @property
    def end_timeline(self) -> int:
        """The timeline at its end (a standby may have followed a promotion meanwhile)."""
        return int(self.manifest.extra.get("end_timeline") or self.timeline)

    @property
    def segment_size(self) -> int:
        """The cluster's WAL segment size in bytes."""
        return int(self._extra("segment_size"))

    @property
    def system_identifier(self) -> str:
        """The cluster's identifier, to match WAL against."""
        return str(self._extra("system_identifier"))

    @property
    def superuser(self) -> str:
        """The cluster's bootstrap superuser, whom the restore logs in as."""
        return str(self.manifest.extra.get("superuser") or "postgres")

    @property
    def major(self) -> int:
        """The server's major version."""
        version = self.manifest.server_version or ""
        match = re.match(r"(\d+)", version)
        if match is None:
            raise IntegrityError(f"{manifest_key(self.key)}: no server version")
        return int(match.group(1))

    @property
    def files(self) -> tuple[FileEntry, ...]:
        """The files of the backup with their sizes and checksums."""
        return self.manifest.files


def list_base_backups(storage: Storage, prefix: str) -> tuple[list[BaseBackup], list[str]]:
    """Base backups with a usable manifest, oldest end first; and the problems of the rest."""
    infos = list(storage.list(prefix))
    sizes = {info.key: info.size for info in infos}
    dirs = sorted({m["name"] for i in infos if (m := _BASE_DIR.match(i.key[len(prefix) :]))})
    found, problems = [], []
    for name in dirs:
        key, mkey = f"{prefix}{name}/", f"{prefix}{name}{SUFFIX}"
        if mkey not in sizes:
            problems.append(f"{key}: no manifest {mkey} (its upload did not finish?)")
            continue
        try:
            manifest = Manifest.from_json(storage.read_bytes(mkey), source=mkey)
        except DrillError as exc:
            problems.append(str(exc))
            continue
        if manifest.kind != "base":
            problems.append(f"{mkey}: manifest says kind {manifest.kind!r}, not a base backup")
            continue
        missing = [f.path for f in manifest.files if sizes.get(key + f.path) != f.size]
        if missing or not manifest.files:
            problems.append(
                f"{key}: files missing or of the wrong size: {', '.join(missing) or 'all'}"
            )
            continue
        found.append(BaseBackup(key, manifest))
    return sorted(found, key=lambda b: (b.ended_at, b.key)), problems


@dataclass
class WalArchive:
    """The archived WAL in a storage: names of complete uploads, by kind."""

    prefix: str
    segments: set[str] = field(default_factory=set)
    histories: dict[int, str] = field(default_factory=dict)
    unfinished: list[str] = field(default_factory=list)

    def key(self, name: str) -> str:
        """The storage key of an archived file."""
        return f"{self.prefix}{name}{WAL_SUFFIX}"


def list_wal(storage: Storage, prefix: str) -> WalArchive:
    """Every archived WAL file whose upload finished (its manifest is stored)."""
    archive = WalArchive(prefix)
    keys = {info.key for info in storage.list(prefix)}
    for key in sorted(keys):
        name = key[len(prefix) :]
        if not name.endswith(WAL_SUFFIX) or "/" in name:
            continue
        name = name[: -len(WAL_SUFFIX)]
        if manifest_key(key) not in keys:
            archive.unfinished.append(name)
        elif SEGMENT.match(name):
            archive.segments.add(name)
        elif HISTORY.match(name):
            archive.histories[history_tli(name)] = name
    return archive


def read_archived(storage: Storage, key: str) -> tuple[bytes, Manifest]:
    """An archived file's original bytes, checked against its manifest (both sides)."""
    mkey = manifest_key(key)
    manifest = Manifest.from_json(storage.read_bytes(mkey), source=mkey)
    stored = storage.read_bytes(key)
    if manifest.bytes is not None and len(stored) != manifest.bytes:
        raise IntegrityError(
            f"{key}: {len(stored)} bytes stored, its manifest says {manifest.bytes} (truncated?)"
        )
    if manifest.sha256 and hashlib.sha256(stored).hexdigest() != manifest.sha256:
        raise IntegrityError(f"{key}: sha256 mismatch with its manifest (damaged in storage?)")
    try:
        data = gzip.decompress(stored)
    except (OSError, EOFError, zlib.error) as exc:
        raise IntegrityError(f"{key}: gzip stream is corrupt ({exc})") from None
    expected = manifest.extra.get("content_sha256")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise IntegrityError(f"{key}: contents differ from what was archived (sha256)")
    return data, manifest


@dataclass(frozen=True)
class WalPlan:
    """The WAL one base backup needs, as far as the archive holds it without a gap."""

    base: BaseBackup
    target_timeline: int
    path: tuple[TimelineStretch, ...]
    histories: tuple[str, ...]
    segments: tuple[str, ...]
    """Continuous segments from the base backup's start segment, in replay order."""
    first_missing: str | None
    """The first segment missing before later ones (a gap); None when the archive just ends."""
    wal_prefix: str = "wal/"

    def key(self, name: str) -> str:
        """The storage key of one of the plan's files."""
        return f"{self.wal_prefix}{name}{WAL_SUFFIX}"

    @property
    def consistent(self) -> bool:
        """Whether the segments reach the base backup's end (a usable database)."""
        if not self.segments:
            return False
        return self.end_segment is not None

    @property
    def end_segment(self) -> str | None:
        """The segment holding the base backup's end, None if the plan does not reach it."""
        seg = self.base.segment_size
        end = lsn_segno(self.base.end_lsn, seg)
        return next((s for s in self.segments if parse_segment(s, seg)[1] >= end), None)

    @property
    def last(self) -> str | None:
        """The last continuous segment."""
        return self.segments[-1] if self.segments else None

    def names(self) -> list[str]:
        """What the restore is fed, in order: history files, then the segments."""
        return [*self.histories, *self.segments]


def plan_for(base: BaseBackup, archive: WalArchive, storage: Storage) -> WalPlan:
    """The continuous WAL from `base`'s start along the newest timeline that descends from it."""
    seg = base.segment_size
    target, path = _timeline(base, archive, storage)
    tlis = {stretch.tli for stretch in path}
    segno = lsn_segno(base.start_lsn, seg)
    segments = []
    while True:
        name = segment_name(timeline_of(list(path), segno, seg), segno, seg)
        if name not in archive.segments:
            break
        segments.append(name)
        segno += 1
    later = any(
        parse_segment(n, seg)[1] > segno and parse_segment(n, seg)[0] in tlis
        for n in archive.segments
    )
    histories = tuple(archive.histories[t] for t in sorted(tlis) if t in archive.histories)
    missing = name if later else None
    return WalPlan(base, target, tuple(path), histories, tuple(segments), missing, archive.prefix)


def _timeline(
    base: BaseBackup, archive: WalArchive, storage: Storage
) -> tuple[int, list[TimelineStretch]]:
    """The newest timeline whose history contains the end of `base`, and its path."""
    for tli in sorted((t for t in archive.histories if t > base.timeline), reverse=True):
        path = timeline_path(tli, _history(storage, archive, tli))
        if on_path(path, base.end_timeline, base.end_lsn):
            return tli, path
    return base.end_timeline, timeline_path(
        base.end_timeline, _history(storage, archive, base.end_timeline)
    )


def _history(storage: Storage, archive: WalArchive, tli: int) -> list[Switch]:
    name = archive.histories.get(tli)
    if name is None:
        return []  # as PostgreSQL does: a timeline without history starts at the beginning
    data, _ = read_archived(storage, archive.key(name))
    try:
        return parse_history(data.decode(), name)
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityError(f"{archive.key(name)}: {exc}") from None
