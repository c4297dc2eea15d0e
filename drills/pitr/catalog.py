"""Find what point-in-time recovery needs in a storage: base backups and archived WAL.

Base backups are ``base/<YYYYMMDD_HHMMSS>/`` with the manifest `drill backup base` writes
beside them (``base/<ts>.manifest.json``): it carries the WAL range and the times a recovery
is planned by, so a base backup without one is reported (with how to import it), not
guessed at. WAL is what `drill backup wal` stored (``wal/<name>.gz`` plus a manifest each,
see `drills.backup.wal`), or what an `archive_command` wrote straight into the storage:
plain, ``.gz``, ``.zst``, ``.lz4``, ``.partial``. An object without our manifest is checked
by what it holds (a clean compressed stream, the segment size and page header its name
implies) and by PostgreSQL's own record checksums as it replays.

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

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property

from drills.backup.common import STAMP
from drills.backup.wal import SUFFIX as WAL_SUFFIX
from drills.config.errors import DrillError, IntegrityError
from drills.storage import Storage
from drills.storage.manifest import SUFFIX, FileEntry, Manifest, manifest_key
from drills.storage.walcodec import decompress
from drills.storage.walfile import (
    Switch,
    TimelineStretch,
    archived_name,
    check_segment,
    lsn_segno,
    on_path,
    parse_history,
    parse_lsn,
    parse_segment,
    read_header,
    segment_name,
    timeline_of,
    timeline_path,
)

_BASE_DIR = re.compile(rf"^(?P<name>{STAMP.pattern})/")
IMPORT_HINT = (
    "a pg_basebackup made by other means is imported with `drill backup base --import "
    "<its directory>` (docs/pitr.md)"
)
# Where several objects hold one WAL file, the one read: ours (with a manifest) first.
_PREFERENCE = ("none", "gzip", "zstd", "lz4")


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
    for other in _foreign_dirs(infos, prefix, set(dirs)):
        problems.append(
            f"{prefix}{other}/: a pg_basebackup without our manifest: import it with `drill "
            "backup base --import <its directory>` (docs/pitr.md)"
        )
    for name in dirs:
        key, mkey = f"{prefix}{name}/", f"{prefix}{name}{SUFFIX}"
        if mkey not in sizes:
            problems.append(
                f"{key}: no manifest {mkey}: not made by `drill backup base`, or its upload did "
                f"not finish; {IMPORT_HINT}"
            )
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


def _foreign_dirs(infos: list, prefix: str, ours: set[str]) -> list[str]:
    """Directories under the prefix that hold a base backup's files but no name of ours."""
    marks = ("backup_manifest", "backup_label", "PG_VERSION", "base.tar")
    found = set()
    for info in infos:
        top, sep, rest = info.key[len(prefix) :].partition("/")
        if sep and top not in ours and rest.split("/")[-1].startswith(marks):
            found.add(top)
    return sorted(found)


@dataclass(frozen=True)
class StoredWal:
    """One object holding an archived WAL file."""

    key: str
    compression: str
    manifest: bool
    """Whether `drill backup wal` wrote a manifest beside it."""
    partial: bool = False
    modified: datetime | None = None
    """When the object was stored."""


@dataclass
class WalArchive:
    """The archived WAL in a storage, by the name PostgreSQL gave each file."""

    prefix: str
    files: dict[str, StoredWal] = field(default_factory=dict)
    """By WAL file name; a partial segment's name ends in ``.partial``."""

    @cached_property
    def segments(self) -> set[str]:
        """Names of the whole segments archived."""
        return {n for n in self.files if len(n) == 24}

    @cached_property
    def partials(self) -> set[str]:
        """Names of the segments archived only partially (the end of a timeline)."""
        return {n[:24] for n in self.files if n.endswith(".partial")} - self.segments

    @cached_property
    def histories(self) -> dict[int, str]:
        """Timeline history files by timeline."""
        return {int(n[:8], 16): n for n in self.files if n.endswith(".history")}

    @cached_property
    def unfinished(self) -> list[str]:
        """Files stored without our manifest (an archive_command's, or an unfinished run)."""
        return sorted(n for n, f in self.files.items() if not f.manifest)

    def key(self, name: str) -> str:
        """The storage key of an archived file (a segment archived only partially: the
        partial one)."""
        found = self.files.get(name) or self.files.get(f"{name}.partial")
        return found.key if found else f"{self.prefix}{name}{WAL_SUFFIX}"

    def read(
        self, storage: Storage, name: str, path: list[TimelineStretch] | None = None
    ) -> tuple[bytes, Manifest | None]:
        """A file's contents as PostgreSQL wrote it, checked by its manifest where there is
        one, and a segment by its size and first page (`path`: its timeline path)."""
        found = self.files.get(name) or self.files.get(f"{name}.partial")
        if found is None:
            raise IntegrityError(f"{self.key(name)}: not archived")
        data, manifest = read_archived(storage, found.key, found.compression, found.manifest)
        if len(name) == 24:
            try:
                check_segment(name, read_header(data), len(data), path)
            except ValueError as exc:
                raise IntegrityError(f"{found.key}: {exc}") from None
        return data, manifest


def list_wal(storage: Storage, prefix: str) -> WalArchive:
    """Every archived WAL file, ours and others' (an object of ours missing its manifest
    counts: the object itself is whole, stores write it atomically)."""
    archive = WalArchive(prefix)
    infos = {info.key: info for info in storage.list(prefix)}
    candidates: dict[str, list[StoredWal]] = {}
    for key in sorted(infos):
        name = key[len(prefix) :]
        parsed = archived_name(name) if "/" not in name else None
        if parsed is None:
            continue
        stored = StoredWal(
            key, parsed.compression, manifest_key(key) in infos, parsed.partial, infos[key].modified
        )
        candidates.setdefault(parsed.wal_name, []).append(stored)
    for name, options in candidates.items():
        options.sort(key=lambda s: (not s.manifest, _PREFERENCE.index(s.compression)))
        archive.files[name] = options[0]
    return archive


def read_archived(
    storage: Storage, key: str, compression: str = "gzip", with_manifest: bool = True
) -> tuple[bytes, Manifest | None]:
    """An archived file's original bytes, checked against its manifest (both sides)."""
    manifest = None
    stored = storage.read_bytes(key)
    if with_manifest:
        mkey = manifest_key(key)
        manifest = Manifest.from_json(storage.read_bytes(mkey), source=mkey)
        if manifest.bytes is not None and len(stored) != manifest.bytes:
            raise IntegrityError(
                f"{key}: {len(stored)} bytes stored, its manifest says {manifest.bytes} "
                "(truncated?)"
            )
        if manifest.sha256 and hashlib.sha256(stored).hexdigest() != manifest.sha256:
            raise IntegrityError(f"{key}: sha256 mismatch with its manifest (damaged in storage?)")
    data = decompress(stored, compression, key)
    expected = manifest.extra.get("content_sha256") if manifest else None
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
    partial: str | None = None
    """The last segment when only its partial copy is archived (the end of a timeline)."""

    def key(self, name: str) -> str:
        """The storage key of one of the plan's files."""
        suffix = ".partial" if name == self.partial else ""
        return f"{self.wal_prefix}{name}{suffix}{WAL_SUFFIX}"

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

    @property
    def timelines(self) -> list[int]:
        """The timelines the plan replays, oldest first."""
        return [stretch.tli for stretch in self.path]

    def names(self) -> list[str]:
        """What the restore is fed, in order: history files, then the segments."""
        return [*self.histories, *self.segments]


def plan_for(base: BaseBackup, archive: WalArchive, storage: Storage) -> WalPlan:
    """The continuous WAL from `base`'s start along the newest timeline that descends from it."""
    seg = base.segment_size
    target, path = timeline_for(base, archive, storage)
    tlis = {stretch.tli for stretch in path}
    segno = lsn_segno(base.start_lsn, seg)
    segments: list[str] = []
    while True:
        name = segment_name(timeline_of(path, segno, seg), segno, seg)
        if name not in archive.segments:
            break
        segments.append(name)
        segno += 1
    later = any(
        number > segno and tli == timeline_of(path, number, seg)
        for tli, number in (parse_segment(n, seg) for n in archive.segments)
    )
    partial = None
    if not later and name in archive.partials:
        segments.append(name)  # the archive ends in it: replay what it holds
        partial = name
    histories = tuple(archive.histories[t] for t in sorted(tlis) if t in archive.histories)
    missing = name if later else None
    return WalPlan(
        base, target, tuple(path), histories, tuple(segments), missing, archive.prefix, partial
    )


def timeline_for(
    base: BaseBackup, archive: WalArchive, storage: Storage
) -> tuple[int, list[TimelineStretch]]:
    """The newest timeline whose history contains the end of `base`, and its path."""
    for tli in sorted((t for t in archive.histories if t > base.timeline), reverse=True):
        path = timeline_path(tli, history(storage, archive, tli))
        if on_path(path, base.end_timeline, base.end_lsn):
            return tli, path
    return base.end_timeline, timeline_path(
        base.end_timeline, history(storage, archive, base.end_timeline)
    )


def history(storage: Storage, archive: WalArchive, tli: int) -> list[Switch]:
    """The switches of timeline `tli`'s history file; none when it has none (timeline 1)."""
    name = archive.histories.get(tli)
    if name is None:
        return []  # as PostgreSQL does: a timeline without history starts at the beginning
    data, _ = archive.read(storage, name)
    try:
        return parse_history(data.decode(), name)
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityError(f"{archive.key(name)}: {exc}") from None
