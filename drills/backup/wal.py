"""`drill backup wal`: ship archived WAL from the archive directory to the storage, exactly once.

PostgreSQL's `archive_command` copies each finished segment into a local directory (see
docs/pitr.md); this producer sends what is there to ``wal/`` in archive order: timeline
history files, then segments by position, each backup history file after its segment.

Stored layout, one pair per archived file:

- ``wal/<name>.gz``: the file, gzip-compressed (a segment switched early by `archive_timeout`
  is mostly zeros and shrinks from 16 MB to tens of KB);
- ``wal/<name>.gz.manifest.json``: its manifest (`drills.storage.manifest`, kind "wal"), written
  last, so a manifest means the object is complete. `sha256`/`bytes` describe the stored
  object; ``extra.content_sha256``/``content_bytes`` the file as PostgreSQL wrote it.

Exactly once: a name whose manifest is already stored with the same content checksum is
skipped; the same name with a different checksum is an error and is never overwritten (two
clusters archiving into one prefix, or a tampered file). Shipping stops at the first file it
cannot ship, so the storage never holds a segment without the ones before it from this run.

Example::

    result = ship_wal(open_storage("s3://backups/prod"), "wal/", Path("/var/lib/pg-archive"))
    print(result.summary())
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from drills import __version__
from drills.backup.common import os_error, utcnow
from drills.config.errors import ConfigError, DrillError, IntegrityError
from drills.storage import Storage
from drills.storage.manifest import Manifest, manifest_key, sha256_file
from drills.storage.walfile import (
    BACKUP,
    LONG_HEADER_BYTES,
    check_segment,
    history_tli,
    kind_of,
    order_key,
    parse_history,
    read_header,
)

log = logging.getLogger(__name__)

SUFFIX = ".gz"
CHUNK = 1 << 20
LOCK_NAME = ".drill-backup-wal.lock"


def stored_key(prefix: str, name: str) -> str:
    """The storage key of an archived file: ``<prefix><name>.gz``."""
    return f"{prefix}{name}{SUFFIX}"


@dataclass
class ShipResult:
    """What one run shipped, skipped (stored already) and ignored (not WAL file names)."""

    stored_at: str
    shipped: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    removed: int = 0
    bytes_in: int = 0
    bytes_stored: int = 0

    def summary(self) -> str:
        """One line for cron's mail."""
        line = f"wal: {len(self.shipped)} shipped, {len(self.skipped)} already stored"
        if self.shipped:
            line += f" ({self.shipped[0]} .. {self.shipped[-1]}"
            line += f", {_mb(self.bytes_in)} -> {_mb(self.bytes_stored)} gzip)"
        line += f" -> {self.stored_at}"
        if self.removed:
            line += f"; removed {self.removed} shipped files from the archive directory"
        if self.ignored:
            shown = ", ".join(self.ignored[:3]) + (" ..." if len(self.ignored) > 3 else "")
            line += f"; ignored {len(self.ignored)} files that are not WAL names: {shown}"
        return line


def ship_wal(
    storage: Storage, prefix: str, archive_dir: str | os.PathLike[str], *, remove: bool = False
) -> ShipResult:
    """Ship every archived file in `archive_dir` not yet stored; `remove` deletes local files
    once they are safely stored (so the archive directory does not fill the disk)."""
    directory = Path(archive_dir)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: no such archive directory ([pitr] archive_dir)")
    storage.check()
    result = ShipResult(stored_at=storage.url)
    with _lock(directory):
        names, result.ignored = _archived(directory)
        system: int | None = None
        for name in names:
            path = directory / name
            try:
                shipped, system = _ship_one(storage, prefix, path, system, result)
            except DrillError as exc:
                done = f"; {len(result.shipped)} shipped before it" if result.shipped else ""
                raise type(exc)(f"{exc}{done}") from None
            (result.shipped if shipped else result.skipped).append(name)
            if remove:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                result.removed += 1
    return result


def _archived(directory: Path) -> tuple[list[str], list[str]]:
    """WAL file names in archive order, and the names that are not WAL (temp files are
    neither: an atomic archive_command leaves them only while it copies)."""
    names, ignored = [], []
    try:
        entries = sorted(os.listdir(directory))
    except OSError as exc:
        raise os_error(directory, exc) from None
    for name in entries:
        if name.startswith(".") or name.endswith((".tmp", ".partial")):
            continue
        if kind_of(name) is None:
            ignored.append(name)
        elif (directory / name).is_file():
            names.append(name)
    return sorted(names, key=order_key), ignored


def _ship_one(
    storage: Storage, prefix: str, path: Path, system: int | None, result: ShipResult
) -> tuple[bool, int | None]:
    """Ship one file unless stored already; return (shipped, the cluster's system id)."""
    name = path.name
    facts, system = _inspect(path, system)
    key = stored_key(prefix, name)
    mkey = manifest_key(key)
    if storage.exists(mkey):
        content_sha = _sha256(path)
        stored = Manifest.from_json(storage.read_bytes(mkey), source=mkey)
        theirs = stored.extra.get("content_sha256")
        if theirs == content_sha:
            return False, system
        raise IntegrityError(
            f"{path}: {key} is stored already with different contents (sha256 "
            f"{str(theirs)[:12]}…, this file {content_sha[:12]}…); not overwriting it "
            "(another cluster archiving into the same prefix, or a changed file?)"
        )
    with tempfile.TemporaryDirectory(prefix="drill-wal-") as work:
        packed = Path(work) / f"{name}{SUFFIX}"
        content_sha, content_bytes, stored_sha, stored_bytes = _pack(path, packed)
        archived_at = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        manifest = Manifest(
            kind="wal",
            started_at=archived_at,
            finished_at=archived_at,
            format=facts["type"],
            compression="gzip",
            bytes=stored_bytes,
            sha256=stored_sha,
            producer_version=__version__,
            extra={
                "name": name,
                "content_bytes": content_bytes,
                "content_sha256": content_sha,
                "shipped_at": utcnow().isoformat().replace("+00:00", "Z"),
                **{k: v for k, v in facts.items() if k != "type"},
            },
        )
        storage.put_file(key, packed)
        storage.put_bytes(mkey, manifest.to_json().encode())
    result.bytes_in += content_bytes
    result.bytes_stored += stored_bytes
    log.info("shipped %s (%d -> %d bytes)", name, content_bytes, stored_bytes)
    return True, system


def _inspect(path: Path, system: int | None) -> tuple[dict, int | None]:
    """Check that the file is what its name says; the facts its manifest records."""
    name = path.name
    kind = kind_of(name)
    try:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            head = stream.read(LONG_HEADER_BYTES if kind == "segment" else 65536)
    except OSError as exc:
        raise os_error(path, exc) from None
    if kind == "history":
        try:
            switches = parse_history(head.decode(), name)
        except (UnicodeDecodeError, ValueError) as exc:
            raise IntegrityError(f"{path}: not a timeline history file ({exc})") from None
        tli = history_tli(name)
        return {"type": "history", "timeline": tli, "switches": len(switches)}, system
    if kind == "backup":
        if b"START WAL LOCATION" not in head:
            raise IntegrityError(f"{path}: not a backup history file (no START WAL LOCATION)")
        return {"type": "backup", "segment": BACKUP.match(name)["segment"]}, system
    try:
        header = read_header(head)
        check_segment(name, header, size)
    except ValueError as exc:
        raise IntegrityError(f"{path.parent}/{exc}") from None
    if system is not None and header.system_identifier != system:
        raise IntegrityError(
            f"{path}: from database system {header.system_identifier}, the segments before it "
            f"from {system}: two clusters archive into one directory"
        )
    facts = {
        "type": "segment",
        "timeline": int(name[:8], 16),
        "segment_size": header.seg_size,
        "system_identifier": str(header.system_identifier),
        "page_magic": header.magic,
    }
    return facts, header.system_identifier


def _sha256(path: Path) -> str:
    try:
        return sha256_file(path)
    except OSError as exc:
        raise os_error(exc.filename or path, exc) from None


def _pack(source: Path, target: Path) -> tuple[str, int, str, int]:
    """gzip `source` into `target`; sha256 and size of both sides."""
    raw, packed = hashlib.sha256(), hashlib.sha256()
    raw_bytes = packed_bytes = 0
    # level 1: WAL is mostly page headers and zeros; higher levels cost time for little
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    try:
        with open(source, "rb") as inp, open(target, "wb") as out:
            while block := inp.read(CHUNK):
                raw.update(block)
                raw_bytes += len(block)
                data = compressor.compress(block)
                packed.update(data)
                packed_bytes += out.write(data)
            data = compressor.flush()
            packed.update(data)
            packed_bytes += out.write(data)
    except OSError as exc:
        raise os_error(exc.filename or source, exc) from None
    return raw.hexdigest(), raw_bytes, packed.hexdigest(), packed_bytes


@contextlib.contextmanager
def _lock(directory: Path) -> Iterator[None]:
    """One shipper per archive directory at a time; none needed where we may not write."""
    try:
        handle = open(directory / LOCK_NAME, "a")  # noqa: SIM115 - held for the block
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DrillError(
                f"{directory}: another `drill backup wal` is shipping from it; try again later"
            ) from None
        yield
    finally:
        handle.close()


def _mb(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count / 1e3:.1f} KB"
