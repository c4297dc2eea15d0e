"""`drill backup wal`: ship archived WAL from the archive directory to the storage, exactly once.

PostgreSQL's `archive_command` copies each finished segment into a local directory (see
docs/pitr.md); this producer sends what is there to ``wal/`` in archive order: timeline
history files, then segments by position, each backup history file after its segment. It
reads the files as people archive them: plain, compressed (``.gz``, ``.zst``, ``.lz4``) and
partial (``.partial``, the last segment of a timeline a promoted standby archives).

Stored layout, one pair per archived file:

- ``wal/<name>.gz`` (``wal/<name>.partial.gz`` for a partial segment): the file's contents,
  gzip-compressed (a segment switched early by `archive_timeout` is mostly zeros and shrinks
  from 16 MB to tens of KB);
- ``wal/<name>.gz.manifest.json``: its manifest (`drills.storage.manifest`, kind "wal"),
  written last, so a manifest means the object is complete. `sha256`/`bytes` describe the
  stored object; ``extra.content_sha256``/``content_bytes`` the file as PostgreSQL wrote it.

Exactly once: a name whose manifest is already stored with the same content checksum is
skipped; the same name with a different checksum is an error and is never overwritten (two
clusters archiving into one prefix, or a tampered file), except a partial segment that grew.
Each segment is checked against its name: its size against the segment size its header
states, its first page against its position and timeline (the first segment of a new
timeline against the history file's switch point). Shipping stops at the first file it
cannot ship or read, so the storage never holds a segment without the ones before it from
this run. What it cannot know file by file fails the run after shipping (exit 1):

- a **hole**: a segment shipped whose predecessor is neither in the directory nor stored
  (point-in-time recovery cannot cross it);
- a **stall**: the server archived a file (`pg_stat_archiver`) the directory does not hold,
  or archive_command is failing; when the server cannot be asked, nothing shipped for longer
  than the database RPO.

``--import DIR`` ships an existing archive directory once, with the same checks, and never
removes anything from it.

Example::

    result = ship_wal(open_storage("s3://backups/prod"), "wal/", Path("/var/lib/pg-archive"))
    print(result.summary())
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from drills import __version__
from drills.backup.archiver import ArchiverState, stall_causes
from drills.backup.common import os_error, utcnow
from drills.config.clock import human
from drills.config.errors import ConfigError, DrillError, IntegrityError
from drills.storage import Storage
from drills.storage.manifest import Manifest, manifest_key
from drills.storage.walcodec import chunks, decompress
from drills.storage.walfile import (
    BACKUP,
    LONG_HEADER_BYTES,
    ArchivedName,
    TimelineStretch,
    archived_name,
    check_segment,
    looks_like_wal,
    order_key,
    parse_history,
    parse_segment,
    read_header,
    segment_name,
    timeline_of,
    timeline_path,
)

log = logging.getLogger(__name__)

SUFFIX = ".gz"
CHUNK = 1 << 20
LOCK_NAME = ".drill-backup-wal.lock"
STATE_NAME = ".drill-backup-wal.state"
HEAD_BYTES = 65536


def stored_key(prefix: str, name: str) -> str:
    """The storage key of an archived file: ``<prefix><name>.gz`` (name with ``.partial``
    for a partial segment)."""
    return f"{prefix}{name}{SUFFIX}"


@dataclass
class ShipResult:
    """What one run shipped, skipped (stored already) and ignored (not WAL file names), and
    the problems that fail it although everything readable was shipped."""

    stored_at: str
    shipped: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    removed: int = 0
    bytes_in: int = 0
    bytes_stored: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    imported: bool = False

    def summary(self) -> str:
        """One line for cron's mail."""
        what = "wal import" if self.imported else "wal"
        line = f"{what}: {len(self.shipped)} shipped, {len(self.skipped)} already stored"
        if self.shipped:
            line += f" ({self.shipped[0]} .. {self.shipped[-1]}"
            line += f", {_mb(self.bytes_in)} -> {_mb(self.bytes_stored)} gzip)"
        line += f" -> {self.stored_at}"
        if self.removed:
            line += f"; removed {self.removed} shipped files from the archive directory"
        if self.superseded:
            line += (
                f"; {len(self.superseded)} partial segments not shipped (the whole segment is "
                "archived)"
            )
        if self.ignored:
            shown = ", ".join(self.ignored[:3]) + (" ..." if len(self.ignored) > 3 else "")
            line += f"; ignored {len(self.ignored)} files that are not WAL names: {shown}"
        return "; ".join([line, *self.notes])


def ship_wal(
    storage: Storage,
    prefix: str,
    archive_dir: str | os.PathLike[str],
    *,
    remove: bool = False,
    server: Callable[[], ArchiverState] | None = None,
    stall_after: float | None = None,
    importing: bool = False,
) -> ShipResult:
    """Ship every archived file in `archive_dir` not yet stored.

    `remove` deletes local files once they are safely stored (so the archive directory does
    not fill the disk). `server` asks the server what it archived last (`drills.backup.
    archiver`); when it cannot answer, `stall_after` (seconds, the database RPO) is how long
    a run may ship nothing after the last one that did. `importing` ships an existing archive
    directory once: no stall checks, nothing removed.
    """
    directory = Path(archive_dir)
    if not directory.is_dir():
        what = "archive directory to import" if importing else "archive directory"
        raise ConfigError(f"{directory}: no such {what} ([pitr] archive_dir)")
    storage.check()
    result = ShipResult(stored_at=storage.url, imported=importing)
    # an import writes nothing into the directory: no lock, no state
    with contextlib.nullcontext(None) if importing else _lock(directory) as state:
        listed = time.monotonic()
        files, result.ignored = _archived(directory)
        shipper = _Shipper(storage, prefix, directory, files, result)
        for item in files:
            try:
                shipper.ship(item, remove=remove and not importing)
            except DrillError as exc:
                done = f"; {len(result.shipped)} shipped before it" if result.shipped else ""
                raise type(exc)(f"{exc}{done}") from None
        result.problems += shipper.holes()
        if not importing:
            _check_stall(shipper, state, server, stall_after, time.monotonic() - listed)
    return result


def _archived(directory: Path) -> tuple[list[ArchivedName], list[str]]:
    """WAL files in archive order, and the names that are not WAL. Temporary files of an
    atomic archive_command are neither. A name that looks like WAL but is not one this
    shipper reads is kept, to fail when its turn comes."""
    found, ignored = [], []
    try:
        entries = sorted(os.listdir(directory))
    except OSError as exc:
        raise os_error(directory, exc) from None
    for name in entries:
        if name.startswith(".") or name.endswith(".tmp"):
            continue
        item = archived_name(name)
        if item is None and looks_like_wal(name):
            item = ArchivedName(name, name[:24], "unknown", "none")
        if item is None:
            ignored.append(name)
        elif (directory / name).is_file():
            found.append(item)
    return sorted(found, key=lambda i: (*order_key(i.wal), i.partial, i.name)), ignored


@dataclass
class _Content:
    """A file's contents as PostgreSQL wrote them: checksum, size, its first bytes."""

    sha256: str
    size: int
    head: bytes
    packed_sha256: str = ""
    packed_size: int = 0


class _Shipper:
    """One run's shipping: the files seen, timelines known, system identifier, holes."""

    def __init__(
        self,
        storage: Storage,
        prefix: str,
        directory: Path,
        files: list[ArchivedName],
        result: ShipResult,
    ) -> None:
        self.storage, self.prefix, self.directory, self.result = storage, prefix, directory, result
        self.here = {f.wal_name for f in files}
        self.local = {f.wal: f for f in files if f.kind == "history"}
        self.paths: dict[int, list[TimelineStretch]] = {}
        self.system: int | None = None
        self.seg_size: int | None = None
        self._stored: set[str] | None = None
        self._holes: list[tuple[str, str, int, str]] = []

    def ship(self, item: ArchivedName, *, remove: bool) -> None:
        """Ship one file unless stored already (or superseded); remove it once stored."""
        path = self.directory / item.name
        if item.kind == "unknown":
            raise IntegrityError(
                f"{path}: looks like WAL but cannot be read (not plain, .gz, .zst, .lz4 or "
                ".partial): nothing after it was shipped"
            )
        if item.partial and (item.wal in self.here or self._is_stored(item.wal)):
            self.result.superseded.append(item.name)
            return
        key = stored_key(self.prefix, item.wal_name)
        mkey = manifest_key(key)
        stored = self._stored_manifest(mkey)
        if stored is not None:
            content = self._read(path, item, None)
            self._inspect(path, item, content)
            theirs = stored.extra.get("content_sha256")
            if theirs == content.sha256:
                self._done(item, path, shipped=False, remove=remove)
                return
            if not (item.partial and self._grew(key, stored, path, item)):
                raise IntegrityError(
                    f"{path}: {key} is stored already with different contents (sha256 "
                    f"{str(theirs)[:12]}…, this file {content.sha256[:12]}…); not overwriting "
                    "it (another cluster archiving into the same prefix, or a changed file?)"
                )
        with tempfile.TemporaryDirectory(prefix="drill-wal-") as work:
            packed = Path(work) / f"{item.wal_name}{SUFFIX}"
            content = self._read(path, item, packed)
            facts = self._inspect(path, item, content)
            archived_at = datetime.fromtimestamp(_stat(path).st_mtime, UTC)
            manifest = Manifest(
                kind="wal",
                started_at=archived_at,
                finished_at=archived_at,
                format=facts.pop("type"),
                compression="gzip",
                bytes=content.packed_size,
                sha256=content.packed_sha256,
                producer_version=__version__,
                extra={
                    "name": item.wal_name,
                    "content_bytes": content.size,
                    "content_sha256": content.sha256,
                    "shipped_at": utcnow().isoformat().replace("+00:00", "Z"),
                    **({"archived_as": item.name} if item.name != item.wal_name else {}),
                    **facts,
                },
            )
            self.storage.put_file(key, packed)
            self.storage.put_bytes(mkey, manifest.to_json().encode())
        self.result.bytes_in += content.size
        self.result.bytes_stored += content.packed_size
        log.info("shipped %s (%d -> %d bytes)", item.name, content.size, content.packed_size)
        self._done(item, path, shipped=True, remove=remove)

    def _done(self, item: ArchivedName, path: Path, *, shipped: bool, remove: bool) -> None:
        (self.result.shipped if shipped else self.result.skipped).append(item.wal_name)
        if item.kind == "segment" and not item.partial:
            self._look_behind(item.wal)
        if remove:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            self.result.removed += 1

    def _stored_manifest(self, mkey: str) -> Manifest | None:
        if not self.storage.exists(mkey):
            return None
        return Manifest.from_json(self.storage.read_bytes(mkey), source=mkey)

    def _read(self, path: Path, item: ArchivedName, packed: Path | None) -> _Content:
        """Decompress (and, with `packed`, gzip into it) the file; checksums of both sides."""
        raw, out = hashlib.sha256(), hashlib.sha256()
        size = out_size = 0
        head = b""
        # level 1: WAL is mostly page headers and zeros; higher levels cost time for little
        compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
        try:
            with open(packed, "wb") if packed else contextlib.nullcontext() as sink:
                for block in chunks(path, item.compression):
                    raw.update(block)
                    size += len(block)
                    if len(head) < HEAD_BYTES:
                        head += block[: HEAD_BYTES - len(head)]
                    if sink is not None:
                        data = compressor.compress(block)
                        out.update(data)
                        out_size += sink.write(data)
                if sink is not None:
                    data = compressor.flush()
                    out.update(data)
                    out_size += sink.write(data)
        except OSError as exc:
            raise os_error(exc.filename or path, exc) from None
        return _Content(raw.hexdigest(), size, head, out.hexdigest(), out_size)

    def _inspect(self, path: Path, item: ArchivedName, content: _Content) -> dict:
        """Check that the file is what its name says; the facts its manifest records."""
        if item.kind == "history":
            switches = _history(path, content.head)
            return {"type": "history", "timeline": int(item.wal[:8], 16), "switches": len(switches)}
        if item.kind == "backup":
            if b"START WAL LOCATION" not in content.head:
                raise IntegrityError(f"{path}: not a backup history file (no START WAL LOCATION)")
            return {"type": "backup", "segment": BACKUP.match(item.wal)["segment"]}
        try:
            header = read_header(content.head[:LONG_HEADER_BYTES])
            tli = int(item.wal[:8], 16)
            path_of = self._path(tli) if header.timeline not in (tli, 0) else None
            check_segment(item.wal, header, content.size, path_of)
        except ValueError as exc:
            raise IntegrityError(f"{path.parent}/{exc}") from None
        if self.system is not None and header.system_identifier != self.system:
            raise IntegrityError(
                f"{path}: from database system {header.system_identifier}, the segments before "
                f"it from {self.system}: two clusters archive into one directory"
            )
        self.system, self.seg_size = header.system_identifier, header.seg_size
        return {
            "type": "partial" if item.partial else "segment",
            "timeline": int(item.wal[:8], 16),
            "segment_size": header.seg_size,
            "system_identifier": str(header.system_identifier),
            "page_magic": header.magic,
        }

    def _path(self, tli: int) -> list[TimelineStretch] | None:
        """The timeline path of `tli` from its history file, here or in the storage."""
        if tli in self.paths:
            return self.paths[tli]
        name = f"{tli:08X}.history"
        text = None
        if name in self.local:
            item = self.local[name]
            text = b"".join(chunks(self.directory / item.name, item.compression))
        elif self.storage.exists(manifest_key(stored_key(self.prefix, name))):
            key = stored_key(self.prefix, name)
            text = decompress(self.storage.read_bytes(key), "gzip", key)
        if text is None:
            return None
        try:
            switches = parse_history(text.decode(), name)
        except (UnicodeDecodeError, ValueError) as exc:
            raise IntegrityError(f"{name}: not a timeline history file ({exc})") from None
        self.paths[tli] = timeline_path(tli, switches)
        return self.paths[tli]

    def _grew(self, key: str, stored: Manifest, path: Path, item: ArchivedName) -> bool:
        """Whether a partial segment only grew since it was stored (pg_receivewal's does)."""
        old = decompress(self.storage.read_bytes(key), "gzip", key).rstrip(b"\0")
        new = b"".join(chunks(path, item.compression))
        return new.startswith(old) and len(new.rstrip(b"\0")) >= len(old)

    def _is_stored(self, wal: str) -> bool:
        if self.storage.exists(manifest_key(stored_key(self.prefix, wal))):
            return True
        return wal in self._stored_names()  # stored by other means (archive_command to S3)

    def _stored_names(self) -> set[str]:
        """Every WAL file name the storage holds (listed once a run, only when needed)."""
        if self._stored is None:
            self._stored = set()
            for info in self.storage.list(self.prefix):
                name = info.key[len(self.prefix) :]
                parsed = archived_name(name) if "/" not in name else None
                if parsed is not None:
                    self._stored.add(parsed.wal_name)
        return self._stored

    def _look_behind(self, name: str) -> None:
        """Note a hole when the segment before `name` is neither here nor stored, while an
        earlier one on its timeline path is."""
        seg = self.seg_size
        if seg is None:
            return
        tli, segno = parse_segment(name, seg)
        path = self._path(tli) or timeline_path(tli, [])

        def on_path(segno: int) -> str:
            return segment_name(timeline_of(path, segno, seg), segno, seg)

        before = on_path(segno - 1)
        if segno == 0 or before in self.here or self._is_stored(before):
            return
        known = self.here | self._stored_names()
        earlier = [
            number
            for number in {parse_segment(n, seg)[1] for n in known if len(n) == 24}
            if number < segno - 1 and on_path(number) in known
        ]
        if earlier:
            last = max(earlier)
            self._holes.append((on_path(last + 1), before, segno - 1 - last, name))

    def holes(self) -> list[str]:
        """The holes this run shipped across, in words."""
        causes = []
        for first, last, count, after in self._holes:
            missing = first if count == 1 else f"{first} .. {last} ({count} segments)"
            causes.append(
                f"the WAL has a hole: {missing} missing, neither in {self.directory} nor "
                f"stored; {after} and later were shipped, but point-in-time recovery cannot "
                "cross the hole: take a new base backup (drill backup base) to recover past it"
            )
        return causes


def _check_stall(
    shipper: _Shipper,
    state: dict | None,
    server: Callable[[], ArchiverState] | None,
    stall_after: float | None,
    listed_s_ago: float,
) -> None:
    """Fail a run that ships nothing while the server archives elsewhere or not at all."""
    result = shipper.result
    asked = False
    if server is not None:
        try:
            archiver = server()
            asked = True
        except DrillError as exc:
            result.notes.append(str(exc))
        else:

            def known(name: str) -> bool:
                parsed = archived_name(name)
                wal = parsed.wal_name if parsed else name
                return wal in shipper.here or shipper._is_stored(wal)

            result.problems += stall_causes(
                archiver, known=known, listed_s_ago=listed_s_ago, where=str(shipper.directory)
            )
    if state is None:
        return
    now = utcnow()
    if result.shipped:
        state.update(last_shipped=result.shipped[-1], shipped_at=now.isoformat())
        return
    since = state.get("shipped_at")
    if asked or stall_after is None or not since:
        return
    age = (now - datetime.fromisoformat(since)).total_seconds()
    if age > stall_after:
        result.problems.append(
            f"nothing shipped for {human(age)} (the last: {state.get('last_shipped')}), longer "
            f"than the database RPO of {human(stall_after)}, and the server could not be asked: "
            f"is it still archiving into {shipper.directory}?"
        )


def _history(path: Path, head: bytes) -> list:
    try:
        return parse_history(head.decode(), path.name)
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityError(f"{path}: not a timeline history file ({exc})") from None


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except OSError as exc:
        raise os_error(path, exc) from None


@contextlib.contextmanager
def _lock(directory: Path) -> Iterator[dict | None]:
    """One shipper per archive directory at a time, and the state it keeps there (None
    where it may not write: then no lock is needed either)."""
    try:
        handle = open(directory / LOCK_NAME, "a")  # noqa: SIM115 - held for the block
    except OSError:
        yield None
        return
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DrillError(
                f"{directory}: another `drill backup wal` is shipping from it; try again later"
            ) from None
        state_path = directory / STATE_NAME
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError):
            state = {}
        before = dict(state)
        yield state
        if state != before:
            with contextlib.suppress(OSError):
                temp = state_path.with_suffix(".tmp-state")
                temp.write_text(json.dumps(state) + "\n")
                temp.replace(state_path)
    finally:
        handle.close()


def _mb(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count / 1e3:.1f} KB"
