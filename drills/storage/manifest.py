"""Backup manifests: a JSON sidecar that says what a backup holds and how to check it.

One rule places a manifest: the backup named ``N`` has its manifest at ``N.manifest.json``,
beside it. For a directory backup (a directory-format dump, a files snapshot) ``N`` is the
directory's key without the trailing slash, e.g. ``files/20250115_020000.manifest.json``, so
the snapshot itself holds only the user's files and a restore copies nothing extra.

Times are aware UTC datetimes, written as ISO 8601 with a ``Z``. Fields a newer producer adds
are kept in `Manifest.extra`, so an older harness can still read its manifests.

A files snapshot's or a config archive's tree (see `drills.storage.snapshot`): `files` (or
`members`) are its regular files, each with its mode and, since the tree is recorded, its
owner, its modification time in nanoseconds and the first path of its inode when it is a hard
link; `links` are its symlinks with their targets, `directories` every directory (the
snapshot's own as "."), and for a config archive `paths` what each configured path was when
it was archived. The new fields are optional and left out when empty: an older harness reads
the same `files` it always did (and keeps the rest in `extra`), a newer one reads an older
manifest as one that does not record the tree.

Example::

    from drills.storage.manifest import HashingReader, Manifest

    manifest = Manifest.from_json(text, source="database/app_20250115_020000.sql.gz.manifest.json")
    reader = HashingReader(stream)
    while reader.read(1 << 20):
        pass
    reader.verify(manifest.sha256, manifest.bytes, "database/app_20250115_020000.sql.gz")
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, BinaryIO

from drills.config.errors import IntegrityError, ManifestError

SUFFIX = ".manifest.json"
KINDS = ("database", "files", "config", "base", "wal")
SCHEMA = 1


def manifest_key(backup_key: str) -> str:
    """The key of a backup's manifest: ``<backup key without trailing '/'>.manifest.json``."""
    return backup_key.rstrip("/") + SUFFIX


@dataclass(frozen=True)
class TableCount:
    """Rows of one table at dump time; `exact` is False for an estimate (pg_class.reltuples)."""

    name: str
    rows: int
    exact: bool = True


@dataclass(frozen=True)
class FileEntry:
    """One regular file of a files snapshot; `hardlink` names the first path (in tree order)
    of the same inode when this is a second name of it."""

    path: str
    size: int
    mode: int
    sha256: str
    mtime_ns: int | None = None
    uid: int | None = None
    gid: int | None = None
    hardlink: str | None = None


@dataclass(frozen=True)
class MemberEntry:
    """One regular file of a config archive."""

    path: str
    size: int
    sha256: str
    mode: int | None = None
    mtime_ns: int | None = None
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True)
class LinkEntry:
    """One symlink of a snapshot or an archive: its target as written, never followed."""

    path: str
    target: str
    mtime_ns: int | None = None
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True)
class DirEntry:
    """One directory of a snapshot or an archive ("." is the snapshot's own)."""

    path: str
    mode: int
    mtime_ns: int | None = None
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True)
class PathEntry:
    """One configured path of a config archive and what it was when archived: "file",
    "link", "dir", or "missing" (an optional path that was not there)."""

    path: str
    kind: str


OPTIONAL_LISTS = ("links", "directories", "paths")
"""Fields left out of the JSON when empty, so manifests without a tree look as before."""


@dataclass(frozen=True)
class Manifest:
    """What a backup holds: kind, format, sizes, checksum, times, versions and contents."""

    kind: str
    started_at: datetime
    finished_at: datetime
    format: str = "plain"
    compression: str = "none"
    bytes: int | None = None
    sha256: str | None = None
    producer_version: str | None = None
    database: str | None = None
    server_version: str | None = None
    pg_dump_version: str | None = None
    tables: tuple[TableCount, ...] = ()
    files: tuple[FileEntry, ...] = ()
    members: tuple[MemberEntry, ...] = ()
    links: tuple[LinkEntry, ...] = ()
    directories: tuple[DirEntry, ...] = ()
    paths: tuple[PathEntry, ...] = ()
    encrypted: bool = False
    extra: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def records_tree(self) -> bool:
        """Whether the manifest records the whole tree (links, directories, owners, times):
        the snapshot's own directory is always listed when it does."""
        return bool(self.directories)

    def to_json(self) -> str:
        """The manifest as indented JSON (times in UTC with a trailing Z)."""
        data: dict[str, Any] = {"schema": SCHEMA}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in OPTIONAL_LISTS and not value:
                continue
            if isinstance(value, datetime):
                value = _iso(value)
            elif isinstance(value, tuple):
                value = [_item(item) for item in value]
            data[f.name] = value
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "manifest") -> Manifest:
        """Parse a manifest; raise ManifestError naming `source` and the cause."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{source}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ManifestError(f"{source}: expected a JSON object, got {_kind(data)}")
        return _Parser(source, data).manifest()


class _Parser:
    """Checks each field's type; one instance per manifest, so errors can name the source."""

    def __init__(self, source: str, data: dict[str, Any]) -> None:
        self.source = source
        self.data = data

    def manifest(self) -> Manifest:
        d = self.data
        for name in ("kind", "started_at", "finished_at"):
            if name not in d:
                raise ManifestError(f"{self.source}: missing field {name!r}")
        kind = self.text("kind", d["kind"])
        if kind not in KINDS:
            raise ManifestError(f"{self.source}: unknown kind {kind!r} (expected one of {KINDS})")
        started = self.time("started_at", d["started_at"])
        finished = self.time("finished_at", d["finished_at"])
        if finished < started:
            raise ManifestError(f"{self.source}: finished_at is before started_at")
        sha = self.opt(self.text, "sha256", d.get("sha256"))
        if sha is not None and not _is_sha256(sha):
            raise ManifestError(f"{self.source}: field 'sha256' is not a sha256 hex digest")
        size = self.opt(self.count, "bytes", d.get("bytes"))
        extra = d.get("extra", {})
        if not isinstance(extra, dict):
            raise ManifestError(f"{self.source}: field 'extra' must be an object")
        known = {f.name for f in fields(Manifest)} | {"schema"}
        extra = {**extra, **{k: v for k, v in d.items() if k not in known}}
        return Manifest(
            kind=kind,
            started_at=started,
            finished_at=finished,
            format=self.text("format", d.get("format", "plain")),
            compression=self.text("compression", d.get("compression", "none")),
            bytes=size,
            sha256=sha,
            producer_version=self.opt(self.text, "producer_version", d.get("producer_version")),
            database=self.opt(self.text, "database", d.get("database")),
            server_version=self.opt(self.text, "server_version", d.get("server_version")),
            pg_dump_version=self.opt(self.text, "pg_dump_version", d.get("pg_dump_version")),
            tables=self.entries("tables", TableCount),
            files=self.entries("files", FileEntry),
            members=self.entries("members", MemberEntry),
            links=self.entries("links", LinkEntry),
            directories=self.entries("directories", DirEntry),
            paths=self.entries("paths", PathEntry),
            encrypted=self.flag("encrypted", d.get("encrypted", False)),
            extra=extra,
        )

    def entries(self, name: str, cls: type[Any]) -> tuple[Any, ...]:
        raw = self.data.get(name, [])
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise ManifestError(f"{self.source}: field {name!r} must be a list, got {_kind(raw)}")
        checks = {"str": self.text, "int": self.count, "bool": self.flag}
        out = []
        for i, item in enumerate(raw):
            where = f"{name}[{i}]"
            if not isinstance(item, dict):
                raise ManifestError(f"{self.source}: {where} must be an object")
            values = {}
            for f in fields(cls):
                if f.name not in item:
                    if f.default is not MISSING:
                        continue
                    raise ManifestError(f"{self.source}: {where} has no {f.name!r}")
                kind, optional = str(f.type).removesuffix(" | None"), str(f.type).endswith("None")
                value = item[f.name]
                if value is None and optional:
                    continue
                check = self.integer if f.name == "mtime_ns" else checks[kind]  # before 1970 too
                values[f.name] = check(f"{where}.{f.name}", value)
            out.append(cls(**values))
        return tuple(out)

    def text(self, name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.wrong(name, "a string", value)
        return value

    def count(self, name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.wrong(name, "a non-negative integer", value)
        return value

    def integer(self, name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.wrong(name, "an integer", value)
        return value

    def flag(self, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.wrong(name, "true or false", value)
        return value

    def time(self, name: str, value: Any) -> datetime:
        text = self.text(name, value)
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise ManifestError(
                f"{self.source}: field {name!r} is not an ISO 8601 time: {text!r}"
            ) from None
        if when.tzinfo is None:
            raise ManifestError(f"{self.source}: field {name!r} has no time zone: {text!r}")
        return when.astimezone(UTC)

    def opt(self, check: Any, name: str, value: Any) -> Any:
        return None if value is None else check(name, value)

    def wrong(self, name: str, expected: str, value: Any) -> ManifestError:
        return ManifestError(
            f"{self.source}: field {name!r} must be {expected}, got {_kind(value)} {value!r:.60}"
        )


class HashingReader(io.RawIOBase):
    """Wraps a binary stream; computes sha256 and counts bytes as they are read through it.

    Verifies a backup while it streams into a restore, with no temporary copy.
    """

    def __init__(self, stream: BinaryIO) -> None:
        super().__init__()
        self._stream = stream
        self._hash = hashlib.sha256()
        self.bytes_read = 0

    @property
    def sha256(self) -> str:
        """The hex digest of the bytes read so far."""
        return self._hash.hexdigest()

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        data = self._stream.read() if size is None or size < 0 else self._stream.read(size)
        self._hash.update(data)
        self.bytes_read += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            super().close()

    def verify(self, sha256: str | None, size: int | None, name: str) -> None:
        """Raise IntegrityError naming `name` if what was read differs from the expectation."""
        if size is not None and self.bytes_read != size:
            hint = " (truncated?)" if self.bytes_read < size else ""
            raise IntegrityError(
                f"{name}: size mismatch: manifest says {size} bytes, read {self.bytes_read}{hint}"
            )
        if sha256 is not None and self.sha256 != sha256.lower():
            raise IntegrityError(
                f"{name}: sha256 mismatch: manifest says {sha256[:16]}…, read {self.sha256[:16]}…"
            )


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _item(item: Any) -> dict[str, Any]:
    """An entry as JSON: its optional facts left out when unknown."""
    return {
        f.name: getattr(item, f.name)
        for f in fields(item)
        if getattr(item, f.name) is not None or f.default is MISSING
    }


def _iso(when: datetime) -> str:
    if when.tzinfo is None:
        raise ValueError(f"naive datetime {when!r} in a manifest; times must be aware")
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text.lower())


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
