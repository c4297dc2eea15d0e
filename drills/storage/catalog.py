"""Find backups in a storage: the latest, the latest at or before a time, the oldest kept.

Backups are recognised by the seed runbook's names and prefixes, so backups made by its bash
scripts (no manifests) are drillable as they are:

- database (``database/``): ``<db>_<YYYYMMDD_HHMMSS>`` + ``.sql.gz`` (the seed's), ``.sql``,
  ``.sql.zst``, ``.dump`` (custom format), each optionally ``.gpg``; a directory-format dump
  is a directory holding ``toc.dat`` (``<db>_<TS>.dir/`` or ``<db>_<TS>/``).
- files (``files/``): snapshot directories ``files/<YYYYMMDD_HHMMSS>/``; ``files/current``
  (a symlink locally, a marker object or a synced copy on S3) is the live mirror, not a backup.
  An empty snapshot is a snapshot too, and when it is the newest it is the latest: an empty
  dated directory (``cp -al`` of an uploads directory whose mount had vanished), an S3 folder
  marker, or a manifest whose snapshot holds nothing. Skipping it would drill the one before
  and hide the finding.
  On an object store, objects under ``files/`` in no dated snapshot (not ``current``, not a
  manifest) are the runbook's off-site copy, ``aws s3 sync <dir>/current/ s3://<bucket>/files/
  --delete``: one flat mirror, one backup (key ``files/``, format ``mirror``). A sync that
  changed nothing leaves no trace, so the mirror is at most as old as its newest object
  (LastModified): that is its time, conservatively, unless ``drill backup files --mirror``
  left a sync marker (``files/.drill-mirror.json``) after a later sync.
- config (``config/``): ``config_<YYYYMMDD_HHMMSS>.tar.gz``, optionally ``.gpg``.

When a backup was taken: its manifest's ``started_at`` when it has one (a dump is consistent
as of its start). Without one, a backup cannot have been taken after its bytes were written:
its time is the earlier of the time in its name and the object's modification time (the
file's mtime, S3's LastModified). Names are read as UTC, or in ``[storage] name_timezone``
(the seed's ``date +%Y%m%d_%H%M%S`` writes the server's local time); a name more than a few
minutes after its write time was made by a clock in another zone, and `Backup.time_note`
says so. `Backup.time_source` says which time was taken. Listing reads the manifests
(small JSON sidecars, see `drills.storage.manifest`), never a backup's body.

Example::

    from drills.storage.catalog import latest, list_backups
    from drills.storage import open_storage

    backups = list_backups(open_storage("file:///var/backups"), "database")
    print(latest(backups).key)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from drills.config.errors import ConfigError, DrillError, IntegrityError, StorageError
from drills.storage import LocalStorage, ObjectInfo, Storage
from drills.storage.manifest import SUFFIX, Manifest, manifest_key
from drills.storage.tiers import coldness

DEFAULT_PREFIXES = {"database": "database/", "files": "files/", "config": "config/"}

_TS = r"(?P<ts>\d{8}_\d{6})"
_DB_FILE = re.compile(
    rf"^(?P<db>.+)_{_TS}(?P<ext>\.sql\.gz|\.sql\.zst|\.sql|\.dump)(?P<gpg>\.gpg)?$"
)
_DB_FILE_ANY = re.compile(r"^.+(?P<ext>\.sql\.gz|\.sql\.zst|\.sql|\.dump)(?P<gpg>\.gpg)?$")
_DB_DIR = re.compile(rf"^(?P<db>.+)_{_TS}(?:\.dir)?$")
_SNAPSHOT = re.compile(rf"^{_TS}$")
_CONFIG = re.compile(r"^.+(?P<ext>\.tar\.gz|\.tgz|\.tar\.zst|\.tar)(?P<gpg>\.gpg)?$")
_CONFIG_TS = re.compile(rf"_{_TS}\.")

MIRROR = "mirror"
MIRROR_MARKER = ".drill-mirror.json"
"""The sync marker `drill backup files --mirror` writes under the files prefix."""
HARNESS = ".drill-"
"""How the harness' own objects beside backups are named (locks, the sync marker)."""
_DATED = re.compile(r"^\d{8}_\d{6}(?:$|[._-])")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A name may be a little after the write time (a script stamping after the file is done);
# more means the clock that made the name was not the zone it is read in.
CLOCK_SKEW = timedelta(minutes=5)

_FORMATS = {
    ".sql": ("plain", "none"),
    ".sql.gz": ("plain", "gzip"),
    ".sql.zst": ("plain", "zstd"),
    ".dump": ("custom", "none"),
    ".tar": ("tar", "none"),
    ".tar.gz": ("tar", "gzip"),
    ".tgz": ("tar", "gzip"),
    ".tar.zst": ("tar", "zstd"),
}


@dataclass(frozen=True)
class Backup:
    """One backup in a storage. Directory backups have a key ending in '/'.

    `format`, `compression` and `encrypted` come from the manifest when it has been read,
    else from the name. Reading `manifest` raises the manifest's problem (unparsable,
    vanished, another kind) if it had one: a bad manifest is never silently ignored.
    """

    kind: str
    key: str
    taken_at: datetime
    time_source: str
    size: int
    manifest_key: str | None = None
    format: str = "plain"
    compression: str = "none"
    encrypted: bool = False
    database: str | None = None
    storage_class: str | None = None
    """The S3 storage class of its coldest object (None: a local file)."""
    manifest_problem: str | None = None
    loaded_manifest: Manifest | None = field(default=None, repr=False)
    name_time: datetime | None = None
    """The time its name gives (in `[storage] name_timezone`, else read as UTC)."""
    written_at: datetime | None = None
    """When its bytes were written: the file's mtime, or S3's LastModified (the newest of a
    directory's objects)."""
    time_note: str | None = None
    """Why `taken_at` is not the name's time, when it is not."""
    objects: int = 0
    """How many objects the backup is made of (0: an empty snapshot)."""

    @property
    def manifest(self) -> Manifest | None:
        """The parsed manifest, None if there is none; raises IntegrityError if it is bad."""
        if self.manifest_problem:
            raise IntegrityError(self.manifest_problem)
        return self.loaded_manifest

    @property
    def is_directory(self) -> bool:
        """Whether the backup is a directory (a directory-format dump or a files snapshot)."""
        return self.key.endswith("/")


@dataclass
class _Candidate:
    key: str
    size: int = 0
    modified: datetime = _EPOCH
    name_time: datetime | None = None
    format: str = "plain"
    compression: str = "none"
    encrypted: bool = False
    database: str | None = None
    storage_class: str | None = None
    objects: int = 0
    marker: ObjectInfo | None = None

    def add(self, info: ObjectInfo) -> None:
        self.objects += 1
        self.size += info.size
        self.modified = max(self.modified, info.modified)
        # A backup of many objects is as slow to read as its coldest one.
        if info.storage_class and coldness(info.storage_class) >= coldness(self.storage_class):
            self.storage_class = info.storage_class


def list_backups(
    storage: Storage, kind: str, prefix: str | None = None, *, name_timezone: str | None = None
) -> list[Backup]:
    """All backups of `kind` under `prefix` (default: the seed's), oldest first.

    `name_timezone` (an IANA zone, DST-aware) is the zone the names' times were written in,
    for scripts whose `date +%Y%m%d_%H%M%S` ran on a server not kept in UTC.
    """
    zone = zone_of(name_timezone)
    if kind not in DEFAULT_PREFIXES:
        expected = ", ".join(DEFAULT_PREFIXES)
        raise ConfigError(f"unknown backup kind {kind!r} (expected one of: {expected})")
    prefix = DEFAULT_PREFIXES[kind] if prefix is None else prefix
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    infos = list(storage.list(prefix))
    manifests = {info.key for info in infos if info.key.endswith(SUFFIX)}
    objects = [info for info in infos if not info.key.endswith(SUFFIX)]
    group = {"database": _databases, "files": _snapshots, "config": _configs}[kind]
    candidates = group(objects, prefix, manifests)
    if kind == "files":
        candidates += _empty_snapshots(storage, prefix, candidates, manifests)
        if isinstance(storage, LocalStorage):
            _snapshot_write_times(storage, candidates)
        else:
            candidates += _mirror(objects, prefix, manifests)
    if not candidates:
        raise StorageError(f"no {kind} backups under {storage.url.rstrip('/')}/{prefix}")
    with ThreadPoolExecutor(max_workers=min(8, len(candidates))) as pool:
        backups = list(pool.map(lambda c: _backup(storage, kind, c, manifests, zone), candidates))
    return sorted(backups, key=lambda b: (b.taken_at, b.key))


def latest(backups: Sequence[Backup]) -> Backup:
    """The most recent backup."""
    if not backups:
        raise DrillError("no backups to choose from")
    return max(backups, key=lambda b: (b.taken_at, b.key))


def latest_at_or_before(backups: Sequence[Backup], when: datetime) -> Backup:
    """The most recent backup taken at or before `when`; never a newer one."""
    _aware(when)
    older = [b for b in backups if b.taken_at <= when]
    if not older:
        first = min((b.taken_at for b in backups), default=None)
        oldest = f"; the oldest was taken {_iso(first)}" if first else ""
        raise DrillError(f"no backup taken at or before {_iso(when)}{oldest}")
    return latest(older)


def oldest_in_retention(backups: Sequence[Backup], retention: timedelta, now: datetime) -> Backup:
    """The oldest backup taken within `retention` of `now` (the far end of what is kept)."""
    _aware(now)
    horizon = now - retention
    kept = [b for b in backups if horizon <= b.taken_at <= now]
    if not kept:
        raise DrillError(f"no backup taken between {_iso(horizon)} and {_iso(now)}")
    return min(kept, key=lambda b: (b.taken_at, b.key))


def _databases(objects: list[ObjectInfo], prefix: str, manifests: set[str]) -> list[_Candidate]:
    dirs = {info.key[: -len("toc.dat")] for info in objects if _base(info.key) == "toc.dat"}
    found: dict[str, _Candidate] = {}
    for info in objects:
        home = next((d for d in dirs if info.key.startswith(d)), None)
        if home is not None:
            if home not in found:
                found[home] = _dir_dump(home)
            found[home].add(info)
            continue
        name = _base(info.key)
        match = _DB_FILE.match(name) or _DB_FILE_ANY.match(name)
        if match is None:
            continue
        fmt, compression = _FORMATS[match["ext"]]
        groups = match.groupdict()
        candidate = _Candidate(
            info.key,
            name_time=_name_time(groups.get("ts")),
            format=fmt,
            compression=compression,
            encrypted=bool(match["gpg"]),
            database=groups.get("db"),
        )
        candidate.add(info)
        found[info.key] = candidate
    return list(found.values())


def _dir_dump(key: str) -> _Candidate:
    match = _DB_DIR.match(_base(key.rstrip("/")))
    return _Candidate(
        key,
        name_time=_name_time(match["ts"]) if match else None,
        format="directory",
        database=match["db"] if match else None,
    )


def _snapshots(objects: list[ObjectInfo], prefix: str, manifests: set[str]) -> list[_Candidate]:
    found: dict[str, _Candidate] = {}
    for info in objects:
        top, sep, _ = info.key[len(prefix) :].partition("/")
        if not sep or top == "current":
            continue
        key = f"{prefix}{top}/"
        match = _SNAPSHOT.match(top)
        if match is None and manifest_key(key) not in manifests:
            continue  # not a dated snapshot and not described by a manifest
        if key not in found:
            found[key] = _Candidate(
                key, name_time=_name_time(match["ts"] if match else None), format="snapshot"
            )
        found[key].add(info)
    return list(found.values())


def _empty_snapshots(
    storage: Storage, prefix: str, found: list[_Candidate], manifests: set[str]
) -> list[_Candidate]:
    """Snapshots that hold no object: empty dated folders, and manifests of snapshots whose
    folder holds nothing."""
    known = {c.key for c in found}
    keys = set(storage.folders(prefix))
    keys |= {m[: -len(SUFFIX)] + "/" for m in manifests if "/" not in m[len(prefix) : -len(SUFFIX)]}
    empty = []
    for key in sorted(keys - known):
        top = key[len(prefix) : -1]
        match = _SNAPSHOT.match(top)
        if top == "current" or (match is None and manifest_key(key) not in manifests):
            continue
        empty.append(
            _Candidate(key, name_time=_name_time(match["ts"] if match else None), format="snapshot")
        )
    return empty


def in_mirror(rel: str, prefix: str, manifests: set[str]) -> bool:
    """Whether the object `rel` (relative to the files prefix) belongs to the flat mirror
    rather than to a dated snapshot (a unique suffix after its stamp too), ``current``, a
    manifest, or the harness' own objects (a producer's lock, the sync marker)."""
    top, sep, _ = rel.partition("/")
    if top.startswith(HARNESS) or rel == "current" or rel.endswith(SUFFIX):
        return False  # the producers' lock, the sync marker, a manifest
    if not sep:
        return True
    dated = _DATED.match(top) is not None or manifest_key(f"{prefix}{top}/") in manifests
    return not (dated or top == "current")


def mirror_objects(storage: Storage, prefix: str) -> list[ObjectInfo]:
    """The objects of the flat mirror under the files `prefix` (see `in_mirror`)."""
    infos = list(storage.list(prefix))
    manifests = {info.key for info in infos if info.key.endswith(SUFFIX)}
    return [i for i in infos if in_mirror(i.key[len(prefix) :], prefix, manifests)]


def _mirror(objects: list[ObjectInfo], prefix: str, manifests: set[str]) -> list[_Candidate]:
    mirror = _Candidate(prefix, format=MIRROR)
    for info in objects:
        if in_mirror(info.key[len(prefix) :], prefix, manifests):
            mirror.add(info)
    mirror.marker = next((i for i in objects if i.key == prefix + MIRROR_MARKER), None)
    return [mirror] if mirror.objects else []


def _mirror_time(storage: Storage, c: _Candidate) -> tuple[datetime, str, str]:
    """(taken_at, source, note) of a mirror: its newest object's LastModified, or its sync
    marker's time when that is later (the marker is written only after a sync finished)."""
    newest = c.modified
    synced = None
    problem = ""
    if c.marker is not None:
        try:
            document = json.loads(storage.read_bytes(c.marker.key))
            synced = datetime.fromisoformat(document["synced_at"]).astimezone(UTC)
        except (DrillError, ValueError, KeyError, TypeError) as exc:
            problem = f"; its sync marker {c.marker.key} is unreadable ({exc}), so it was not used"
    if synced is not None and synced > newest:
        return (
            synced,
            "sync marker",
            (
                f"a mirror (aws s3 sync): synced at {_iso(synced)} by its sync marker "
                f"{c.marker.key if c.marker else ''}; its newest object is from {_iso(newest)}"
            ),
        )
    return (
        newest,
        "newest LastModified",
        (
            f"a mirror (aws s3 sync) with no dated snapshots: its time is its newest object's "
            f"({_iso(newest)}), so it is at most that old (a sync that changed nothing leaves no "
            f"trace): RPO and freshness are measured conservatively{problem}"
        ),
    )


def _snapshot_write_times(storage: LocalStorage, candidates: list[_Candidate]) -> None:
    """A local snapshot was written when its directory was made (its ctime): its files keep
    the uploads' own times (rsync -a, cp -al), which say nothing of when it was taken."""
    for c in candidates:
        try:
            made = os.lstat(storage.root.joinpath(*c.key.rstrip("/").split("/"))).st_ctime
        except OSError:
            c.modified = _EPOCH  # only its manifest is left
            continue
        c.modified = datetime.fromtimestamp(made, UTC)


def _configs(objects: list[ObjectInfo], prefix: str, manifests: set[str]) -> list[_Candidate]:
    found = []
    for info in objects:
        name = _base(info.key)
        match = _CONFIG.match(name)
        if match is None:
            continue
        fmt, compression = _FORMATS[match["ext"]]
        stamp = _CONFIG_TS.search(name)
        candidate = _Candidate(
            info.key,
            name_time=_name_time(stamp["ts"] if stamp else None),
            format=fmt,
            compression=compression,
            encrypted=bool(match["gpg"]),
        )
        candidate.add(info)
        found.append(candidate)
    return found


def _backup(
    storage: Storage, kind: str, c: _Candidate, manifests: set[str], zone: tzinfo
) -> Backup:
    mkey = manifest_key(c.key)
    manifest, problem = None, None
    if mkey in manifests:
        try:
            manifest = Manifest.from_json(storage.read_bytes(mkey), source=mkey)
        except DrillError as exc:
            problem = str(exc)
        if manifest is not None and manifest.kind != kind:
            problem = f"{mkey}: manifest says kind {manifest.kind!r}, the backup is a {kind} backup"
            manifest = None
    name_time = None
    if c.name_time is not None:
        # The name's digits are a wall-clock time in `zone`; the earlier of a repeated hour.
        name_time = c.name_time.replace(tzinfo=zone, fold=0).astimezone(UTC)
    written = c.modified if c.modified > _EPOCH else None
    note = None
    if manifest is not None:
        taken_at, source = manifest.started_at, "manifest"
        fmt, compression, encrypted = manifest.format, manifest.compression, manifest.encrypted
    elif c.format == MIRROR:
        taken_at, source, note = _mirror_time(storage, c)
        fmt, compression, encrypted = c.format, c.compression, c.encrypted
    else:
        taken_at, source, note = _time_without_manifest(name_time, written, zone)
        fmt, compression, encrypted = c.format, c.compression, c.encrypted
    return Backup(
        kind=kind,
        key=c.key,
        taken_at=taken_at,
        time_source=source,
        size=c.size,
        manifest_key=mkey if mkey in manifests else None,
        format=fmt,
        compression=compression,
        encrypted=encrypted,
        database=(manifest.database if manifest else None) or c.database,
        storage_class=c.storage_class,
        manifest_problem=problem,
        loaded_manifest=manifest,
        name_time=name_time,
        written_at=written,
        time_note=note,
        objects=c.objects,
    )


def _time_without_manifest(
    name_time: datetime | None, written: datetime | None, zone: tzinfo
) -> tuple[datetime, str, str | None]:
    """(taken_at, source, note): a backup cannot have been taken after its bytes were
    written, so the earlier of the name's time and the write time."""
    if name_time is None:
        return written or _EPOCH, "mtime", None
    if written is None or name_time <= written:
        return name_time, "name", None
    ahead = name_time - written
    if ahead <= CLOCK_SKEW:
        return written, "mtime", None
    hours = ahead.total_seconds() / 3600
    zone_name = "UTC" if zone is UTC else str(zone)
    note = (
        f"the time in its name ({_iso(name_time)}, read as {zone_name}) is {hours:.1f} h after "
        f"its bytes were written ({_iso(written)}): named by a clock that is not {zone_name}? "
        "Its time is taken as the write time; set [storage] name_timezone to the zone the "
        "names are written in"
    )
    return written, "mtime", note


def zone_of(name: str | None) -> tzinfo:
    """The zone of `[storage] name_timezone` (UTC when unset); a bad name is a config error."""
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"[storage] name_timezone: {name!r} is not an IANA time zone (e.g. Europe/Berlin)"
        ) from None


def _name_time(stamp: str | None) -> datetime | None:
    if not stamp:
        return None
    try:
        return datetime.strptime(stamp, "%Y%m%d_%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None  # digits that are not a date: fall back to the manifest or mtime


def _base(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def _aware(when: datetime) -> None:
    if when.tzinfo is None:
        raise ConfigError(f"{when.isoformat()}: a time without a time zone is ambiguous")


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")
