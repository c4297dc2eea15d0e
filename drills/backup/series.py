"""A series: the backups one producer makes under one prefix, and how to find them in a store.

A database's dumps (``database/<db>_<ts><ext>``), the config archives
(``config/config_<ts><ext>``), the upload snapshots (``files/<ts>/``) and the base backups
(``base/<ts>/``) are each a series. A name is ``<stem><YYYYMMDD_HHMMSS>[_<6 hex>]<ext>``: the
hex suffix appears only when another backup already has the second's name.

Listing a store groups its objects by backup: a file (``<name>``), or a directory
(``<name>/...``), with its manifest (``<name>.manifest.json``) when there is one.

Example::

    series = Series("database", "database/", "drishti_")
    for backup in list_series(storage, series):
        print(backup.key, backup.size, backup.manifest is not None)
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from drills.backup.common import PARTIAL, STAMP, parse_stamp
from drills.backup.marks import is_ours, suspect_causes
from drills.config.errors import DrillError
from drills.storage import ObjectInfo, Storage
from drills.storage.manifest import SUFFIX, Manifest

LOCK_NAME = ".drill-lock-"
_MANIFEST_READERS = 8


@dataclass(frozen=True)
class Series:
    """One producer's backups under `prefix`, named `stem` + stamp (+ extension)."""

    kind: str
    prefix: str
    stem: str = ""

    @property
    def lock_key(self) -> str:
        """The key of the lock object one run of this series holds: ``database/.drill-lock-db``."""
        return f"{self.prefix}{LOCK_NAME}{self.stem.rstrip('_') or self.kind}"

    def stamp_of(self, name: str) -> str | None:
        """The stamp (with its suffix) of one of this series' names, None for other names."""
        if name.endswith(PARTIAL):
            return None
        match = re.fullmatch(rf"{re.escape(self.stem)}({STAMP.pattern})(\.[A-Za-z0-9.]+)?", name)
        return match.group(1) if match else None

    def name_of(self, key: str) -> str | None:
        """The backup name a key under the prefix belongs to, if it is one of this series'."""
        if not key.startswith(self.prefix):
            return None
        name = key[len(self.prefix) :].split("/", 1)[0]
        if name.endswith(SUFFIX):
            name = name[: -len(SUFFIX)]
        return name if self.stamp_of(name) is not None else None


@dataclass(frozen=True)
class Stored:
    """One backup of a series in a store: its objects, and its manifest when it has one."""

    key: str
    """"database/db_20250115_020000.sql.gz", or "database/db_20250115_020000.dir/"."""
    objects: tuple[ObjectInfo, ...] = ()
    manifest_key: str | None = None
    manifest: Manifest | None = None
    problem: str | None = None
    """Why the manifest could not be read, if it could not."""
    stamp: str = ""

    @property
    def is_directory(self) -> bool:
        """Whether the backup is a directory of objects."""
        return self.key.endswith("/")

    @property
    def size(self) -> int:
        """Bytes of its objects (the manifest not counted)."""
        return sum(info.size for info in self.objects)

    @property
    def taken_at(self) -> datetime:
        """The manifest's start, else the stamp in the name."""
        if self.manifest is not None:
            return self.manifest.started_at
        return parse_stamp(self.stamp[:15]) or datetime.min.replace(tzinfo=UTC)

    @property
    def modified(self) -> datetime:
        """When its newest object was written."""
        return max((info.modified for info in self.objects), default=self.taken_at)

    @property
    def suspect(self) -> list[str]:
        """The causes its manifest marks it suspect for ([] when none)."""
        return suspect_causes(self.manifest) if self.manifest is not None else []

    def ours(self, estate: str) -> bool:
        """Whether this producer made it for `estate` (its manifest says so)."""
        return self.manifest is not None and is_ours(self.manifest, estate)

    def object_keys(self) -> list[str]:
        """Its objects' keys, sorted."""
        return sorted(info.key for info in self.objects)


@dataclass
class _Group:
    objects: list[ObjectInfo] = field(default_factory=list)
    directory: bool = False
    manifest: bool = False


def list_series(storage: Storage, series: Series) -> list[Stored]:
    """Every backup of `series` in `storage` (with or without a manifest), oldest first.

    Manifests are read (in a few threads); an unreadable one is kept as `Stored.problem`.
    """
    groups: dict[str, _Group] = {}
    for info in storage.list(series.prefix + series.stem):
        name = series.name_of(info.key)
        if name is None:
            continue
        group = groups.setdefault(name, _Group())
        rest = info.key[len(series.prefix) + len(name) :]
        if rest == SUFFIX:
            group.manifest = True
        elif rest.startswith("/"):
            group.directory = True
            group.objects.append(info)
        elif rest == "":
            group.objects.append(info)
    named = sorted(groups.items())

    def stored(item: tuple[str, _Group]) -> Stored:
        name, group = item
        key = series.prefix + name + ("/" if group.directory else "")
        mkey = series.prefix + name + SUFFIX if group.manifest else None
        manifest, problem = None, None
        if mkey is not None:
            try:
                manifest = Manifest.from_json(storage.read_bytes(mkey), source=mkey)
            except DrillError as exc:
                problem = str(exc)
        stamp = series.stamp_of(name) or ""
        return Stored(key, tuple(group.objects), mkey, manifest, problem, stamp)

    with ThreadPoolExecutor(max_workers=_MANIFEST_READERS) as pool:
        found = list(pool.map(stored, named))
    return sorted(found, key=lambda b: (b.taken_at, b.key))
