"""What a `pg_basebackup`'s output says of itself, read without a server.

Plain format (``-Fp``: a data directory) or tar format (``-Ft``: ``base.tar`` and, with the
default ``-X stream``, ``pg_wal.tar``; ``-z`` and ``--compress`` add ``.gz``, ``.zst``,
``.lz4``): `find_source` tells which. The facts a base backup's manifest needs come from the
backup itself, else from the WAL archive:

- WAL range and timelines: ``backup_manifest`` (else the backup history file
  ``<segment>.<offset>.backup`` in the archive directory or the storage);
- times: ``backup_label``'s ``START TIME``; the end, by the server's clock, from the backup
  history file's ``STOP TIME`` rounded up to the next second;
- the segment size: a WAL segment's header, else ``backup_label``'s start position and file
  name, else the archived WAL's manifests;
- the bootstrap superuser the restore logs in as: the role with OID 10 in ``global/1260``
  (``pg_authid``), else "postgres".

    >>> source = find_source("/backups/basebackup-2025-01-15")  # doctest: +SKIP
    >>> source.format, source.manifest
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from drills.backup.base import PG_MANIFEST, wal_range
from drills.config.errors import ConfigError, DrillError, IntegrityError
from drills.storage import Storage
from drills.storage.walcodec import chunks, decompress
from drills.storage.walfile import (
    LONG_HEADER_BYTES,
    MAX_SEGMENT,
    MIN_SEGMENT,
    SEGMENT,
    archived_name,
    parse_lsn,
    read_header,
)

COMPRESSIONS = {".tar": "none", ".tar.gz": "gzip", ".tar.zst": "zstd", ".tar.lz4": "lz4"}
BOOTSTRAP_SUPERUSER_OID = 10
PG_AUTHID = "global/1260"
DEFAULT_SUPERUSER = "postgres"
_LSN = re.compile(
    r"^(?P<key>[A-Z ]+): (?P<lsn>[0-9A-F]+/[0-9A-F]+) \(file (?P<file>[0-9A-F]{24})\)"
)


@dataclass
class Source:
    """A pg_basebackup's output, as found at the path given."""

    path: Path
    format: str
    """'plain' or 'tar'."""
    tar: Path | None = None
    tar_compression: str = "none"
    wal_tar: Path | None = None
    wal_compression: str = "none"
    notes: list[str] = field(default_factory=list)

    @property
    def manifest(self) -> Path | None:
        """PostgreSQL's backup_manifest, when pg_basebackup wrote one."""
        path = self.path / PG_MANIFEST
        return path if path.is_file() else None


def find_source(path: str | os.PathLike[str]) -> Source:
    """What kind of pg_basebackup output `path` holds; ConfigError if none."""
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such directory (the output of pg_basebackup -D)")
    if (root / "PG_VERSION").is_file() and (root / "global" / "pg_control").is_file():
        if (root / "postmaster.pid").exists():
            raise DrillError(
                f"{root}: holds postmaster.pid: a server ran on this directory, so it is no "
                "longer the base backup that was taken"
            )
        return Source(root, "plain")
    tars = {suffix: root / f"base{suffix}" for suffix in COMPRESSIONS}
    found = [(s, p) for s, p in tars.items() if p.is_file()]
    if not found:
        raise ConfigError(
            f"{root}: not the output of pg_basebackup (no PG_VERSION, no base.tar, "
            "base.tar.gz, base.tar.zst or base.tar.lz4)"
        )
    others = sorted(
        p.name for p in root.iterdir() if re.fullmatch(r"\d+\.tar(\.gz|\.zst|\.lz4)?", p.name)
    )
    if others:
        raise DrillError(
            f"{root}: holds tablespaces ({', '.join(others)}): the drill does not restore "
            "tablespaces other than the default ones"
        )
    suffix, tar = found[0]
    source = Source(root, "tar", tar, COMPRESSIONS[suffix])
    for wal_suffix, compression in COMPRESSIONS.items():
        candidate = root / f"pg_wal{wal_suffix}"
        if candidate.is_file():
            source.wal_tar, source.wal_compression = candidate, compression
    return source


def server_major(data: Path) -> str:
    text = read_file(data / "PG_VERSION").decode(errors="replace").strip()
    if not re.fullmatch(r"\d+", text):
        raise IntegrityError(f"{data}/PG_VERSION: {text!r} is not a PostgreSQL major version")
    return text


def wal_files(data: Path) -> list[Path]:
    directory = data / "pg_wal"
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and archived_name(p.name))


def read_label(path: Path) -> dict[str, str]:
    text = read_file(path).decode(errors="replace")
    return fields(text)


def fields(text: str) -> dict[str, str]:
    """'KEY: value' lines of a backup_label or backup history file."""
    found = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            found[key.strip()] = value.strip()
    return found


def backup_history(
    label: dict[str, str], storage: Storage | None, prefix: str, archive_dir: str | None
) -> dict[str, str]:
    """The backup history file of this backup, from the archive directory or the storage."""
    match = _LSN.match(f"START WAL LOCATION: {label.get('START WAL LOCATION', '')}")
    if match is None:
        return {}
    segment = match["file"]
    start = parse_lsn(match["lsn"])
    candidates: list[bytes] = []
    if archive_dir and Path(archive_dir).is_dir():
        for path in sorted(Path(archive_dir).glob(f"{segment}.*.backup*")):
            parsed = archived_name(path.name)
            if parsed and parsed.kind == "backup":
                candidates.append(b"".join(chunks(path, parsed.compression)))
    if storage is not None:
        for info in storage.list(f"{prefix}{segment}."):
            parsed = archived_name(info.key[len(prefix) :])
            if parsed and parsed.kind == "backup":
                data = storage.read_bytes(info.key)
                candidates.append(decompress(data, parsed.compression, info.key))
    for data in candidates:
        found = fields(data.decode(errors="replace"))
        stop = _LSN.match(f"START WAL LOCATION: {found.get('START WAL LOCATION', '')}")
        if stop and parse_lsn(stop["lsn"]) == start:
            return found
    return {}


def wal_range_of(source: Source, label: dict[str, str], history: dict[str, str]) -> dict[str, int]:
    if source.manifest is not None:
        return wal_range(source.manifest)
    start = _LSN.match(f"START WAL LOCATION: {label.get('START WAL LOCATION', '')}")
    stop = _LSN.match(f"STOP WAL LOCATION: {history.get('STOP WAL LOCATION', '')}")
    if start is None or stop is None:
        raise DrillError(
            f"{source.path}: no backup_manifest, and no backup history file archived for it: "
            "where its WAL ends cannot be told (ship the archive first with drill backup wal)"
        )
    timeline = int(label.get("START TIMELINE", "1"))
    return {
        "start": parse_lsn(start["lsn"]),
        "end": parse_lsn(stop["lsn"]),
        "timeline": timeline,
        "end_timeline": int(history.get("STOP TIMELINE", timeline)),
    }


def segment_size(data: Path, label: dict[str, str], storage: Storage | None, prefix: str) -> int:
    """The cluster's WAL segment size: a segment's header, the label, the archive."""
    for path in wal_files(data):
        if SEGMENT.match(path.name):
            with open(path, "rb") as stream:
                return read_header(stream.read(LONG_HEADER_BYTES)).seg_size
    match = _LSN.match(f"START WAL LOCATION: {label.get('START WAL LOCATION', '')}")
    if match:
        lsn, name = parse_lsn(match["lsn"]), match["file"]
        sizes = [
            size
            for size in (1 << n for n in range(20, 31))
            if MIN_SEGMENT <= size <= MAX_SEGMENT
            and lsn >> 32 == int(name[8:16], 16)
            and (lsn & 0xFFFFFFFF) // size == int(name[16:], 16)
        ]
        if len(sizes) == 1:
            return sizes[0]
        if storage is not None:
            with contextlib.suppress(DrillError, ValueError, KeyError, TypeError):
                stated = storage.read_bytes(f"{prefix}{name}.gz.manifest.json")
                size = int(json.loads(stated)["extra"]["segment_size"])
                if size in sizes:
                    return size
    raise DrillError(
        f"{data}: cannot tell the WAL segment size (no WAL in the backup, and its start "
        "position fits more than one): ship the archive first with drill backup wal"
    )


def superuser_of(data: Path, given: str | None) -> tuple[str, str]:
    if given:
        return given, "--superuser"
    with contextlib.suppress(OSError):
        name = bootstrap_superuser((data / PG_AUTHID).read_bytes())
        if name:
            return name, "pg_authid"
    return DEFAULT_SUPERUSER, "assumed (not found in pg_authid; --superuser sets it)"


def bootstrap_superuser(pg_authid: bytes, block_size: int = 8192) -> str | None:
    """The name of role OID 10 in pg_authid's heap file: its live tuple (no xmax).

    PostgreSQL 12 and later store ``oid`` then ``rolname`` (a 64-byte name) first in each
    tuple; a page is a 24-byte header, then 4-byte line pointers.
    """
    found = None
    for start in range(0, len(pg_authid) - block_size + 1, block_size):
        page = pg_authid[start : start + block_size]
        lower = struct.unpack_from("<H", page, 12)[0]
        for offset in range(24, min(lower, block_size), 4):
            item = struct.unpack_from("<I", page, offset)[0]
            off, flags, length = item & 0x7FFF, (item >> 15) & 3, item >> 17
            if flags != 1 or off + length > block_size or length < 24 + 4 + 64:
                continue
            xmax = struct.unpack_from("<I", page, off + 4)[0]
            infomask = struct.unpack_from("<H", page, off + 20)[0]
            hoff = page[off + 22]
            live = xmax == 0 or infomask & 0x0800  # HEAP_XMAX_INVALID
            oid = struct.unpack_from("<I", page, off + hoff)[0]
            if live and oid == BOOTSTRAP_SUPERUSER_OID:
                raw = page[off + hoff + 4 : off + hoff + 4 + 64]
                found = raw.split(b"\0", 1)[0].decode(errors="replace") or None
    return found


def label_time(text: str | None) -> datetime | None:
    """A backup_label time ('2025-01-15 02:00:01 UTC', or with a numeric zone) as UTC."""
    if not text:
        return None
    text = re.sub(r" (UTC|GMT)$", " +00:00", text.strip())
    text = re.sub(r" ([+-]\d\d)$", r" \1:00", text)
    try:
        when = datetime.fromisoformat(text.replace(" +", "+").replace(" -", "-"))
    except ValueError:
        return None
    return when.astimezone(UTC) if when.tzinfo else None


def newest_mtime(path: Path) -> datetime:
    newest = max((p.stat().st_mtime for p in path.rglob("*") if p.is_file()), default=0.0)
    return datetime.fromtimestamp(newest, UTC)


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise IntegrityError(
            f"{path}: cannot be read ({exc.strerror}): not a base backup?"
        ) from None
