"""What every producer shares: where backups go, timestamp names and atomic local writes.

A backup is written under a temporary ``<name>.partial`` name (mode 600) and renamed to its
final name only after every step that made it succeeded, so a final name always means a
complete backup. Local copies live under ``[backup] local_dir`` laid out like the storage
(``<local_dir>/database/...``), so that the local directory is itself a drillable
``file://`` storage. Times are UTC; names carry ``YYYYMMDD_HHMMSS`` as the seed scripts did.

Example::

    dest = Destination("database/", storage=open_storage(url), local_dir=Path("/var/b"))

`drills.backup.run` wraps each producer's own work (the dump, the archive, the snapshot)
in what keeps it safe: a lock, leftovers cleaned, a unique name, the upload verified,
retention.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from drills.backup.marks import manifest_bytes
from drills.backup.verify import Digests
from drills.config import Config
from drills.config.errors import ConfigError, DrillError
from drills.storage import LocalStorage, Storage, open_storage
from drills.storage.manifest import Manifest

STAMP_FORMAT = "%Y%m%d_%H%M%S"
# A second's stamp, and the unique suffix a name gets when that second's name is taken.
STAMP = re.compile(r"\d{8}_\d{6}(?:_[0-9a-f]{6})?")
PARTIAL = ".partial"


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


def stamp(when: datetime) -> str:
    """The ``YYYYMMDD_HHMMSS`` of an aware time, in UTC."""
    return when.astimezone(UTC).strftime(STAMP_FORMAT)


def parse_stamp(text: str) -> datetime | None:
    """The UTC time of a ``YYYYMMDD_HHMMSS`` stamp, None if it is not one."""
    try:
        return datetime.strptime(text, STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


@dataclass(frozen=True)
class BackupResult:
    """What a producer made: the backup's storage key, its manifest and where it went."""

    kind: str
    key: str
    """Key under the storage root ("database/app_20250115_020000.sql.gz", "files/<ts>/")."""
    manifest: Manifest
    local_path: Path | None
    """The local copy; None when the backup went to storage only."""
    stored_at: str | None
    """The storage URL it was uploaded to (or written in); None with no upload."""
    uploaded: int = 0
    """Objects sent to the storage (backup files and the manifest)."""
    copied: int = 0
    """Objects copied inside the storage instead of uploaded (unchanged snapshot files)."""
    pruned: tuple[str, ...] = ()
    """Backups removed past the retention, as URLs ("s3://b/database/x.sql.gz")."""
    would_prune: tuple[str, ...] = ()
    """What pruning would have removed (--dry-run-prune)."""
    prune_note: str | None = None
    """Why pruning removed nothing although asked to, if it refused."""
    suspect: tuple[str, ...] = ()
    """Why the backup is not plausible; written and stored, but the run failed."""
    cleaned: tuple[str, ...] = ()
    """What unfinished earlier runs left, removed at start."""
    caught_up: tuple[str, ...] = ()
    """Local copies of earlier runs uploaded by this one."""
    problems: tuple[str, ...] = ()
    """Failures after the backup itself was stored (an earlier copy not uploaded)."""

    @property
    def good(self) -> bool:
        """Whether the run fully succeeded."""
        return not (self.suspect or self.problems)


@dataclass(frozen=True)
class Destination:
    """Where one kind of backup goes: a storage prefix, a local directory, what is kept."""

    prefix: str
    """The kind's prefix under the storage root and under `local_dir` ("database/")."""
    storage: Storage | None = None
    """Where backups are uploaded; None: local only."""
    local_dir: Path | None = None
    """Root of the local copies; None: storage only (work in a staging directory)."""
    retention_days: int = 30
    prune: bool = False
    """Remove our backups past `retention_days` (see drills.backup.retention)."""
    keep_min: int = 7
    """Good backups pruning always keeps, whatever their age."""
    dry_run_prune: bool = False
    """List what pruning would remove instead of removing it."""
    estate: str = "estate"
    """The [estate] name written into manifests; pruning touches only this estate's."""
    staging_dir: Path | None = None
    """Where a backup is built when there is no `local_dir`; None: the temp directory."""

    @property
    def kind_dir(self) -> Path | None:
        """The local directory of this kind's backups."""
        return None if self.local_dir is None else self.local_dir / self.prefix

    @property
    def in_place(self) -> bool:
        """Whether the local directory is the storage itself (nothing to upload)."""
        if not isinstance(self.storage, LocalStorage) or self.local_dir is None:
            return False
        return os.path.realpath(self.storage.root) == os.path.realpath(self.local_dir)

    def key(self, name: str) -> str:
        """The storage key of a backup named `name`."""
        return self.prefix + name

    def make_kind_dir(self) -> None:
        """Create the local kind directory (mode 700) if there is a local directory."""
        if self.kind_dir is not None:
            try:
                self.kind_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise os_error(self.kind_dir, exc) from None

    @contextlib.contextmanager
    def workdir(self) -> Iterator[Path]:
        """The local kind directory, or a staging directory removed afterwards."""
        if self.kind_dir is not None:
            self.make_kind_dir()
            yield self.kind_dir
            return
        try:
            work = Path(tempfile.mkdtemp(prefix="drill-backup-", dir=self.staging_dir))
        except OSError as exc:
            raise os_error(self.staging_dir or tempfile.gettempdir(), exc) from None
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def local_copy(self, path: Path) -> Path | None:
        """`path` if it is a kept local copy, None if it lives in a staging directory."""
        return path if self.kind_dir is not None else None


def destination(
    config: Config,
    kind: str,
    *,
    upload: bool = True,
    storage: Storage | None = None,
) -> Destination:
    """The destination of `kind` backups as the configuration says.

    With no local directory and a ``file://`` storage, backups are written in the storage
    directly. `storage` replaces the configured one (e.g. with explicit credentials).
    """
    prefix = getattr(config.storage.prefixes, kind)
    local_dir = Path(config.backup.local_dir) if config.backup.local_dir else None
    if local_dir is not None and not local_dir.is_absolute():
        local_dir = local_dir.absolute()
    if upload and storage is None:
        if config.storage.url is None:
            raise ConfigError("[storage] url is not set: nowhere to upload the backup")
        storage = open_storage(
            config.storage.url,
            config.storage.endpoint_url,
            config.storage.region,
            sse=config.storage.sse,
        )
    if not upload:
        storage = None
        if local_dir is None:
            raise ConfigError("no upload and no [backup] local_dir: nowhere to keep the backup")
    if local_dir is None and isinstance(storage, LocalStorage):
        local_dir = storage.root
    settings = config.backup
    staging = Path(settings.staging_dir).absolute() if settings.staging_dir else None
    return Destination(
        prefix,
        storage,
        local_dir,
        retention_days=settings.retention_days,
        prune=settings.prune,
        keep_min=settings.keep_min,
        estate=config.estate.name,
        staging_dir=staging,
    )


class HashingWriter:
    """Wraps a binary file; hashes (sha256, S3 ETag) and counts the bytes written through it."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.digests = Digests()

    @property
    def sha256(self) -> str:
        """The hex digest of the bytes written so far."""
        return self.digests.sha256

    @property
    def bytes(self) -> int:
        """How many bytes were written."""
        return self.digests.bytes

    def write(self, data: bytes) -> int:
        """Write, hash and count `data`."""
        self._out.write(data)
        self.digests.update(data)
        return len(data)

    def flush(self) -> None:
        """Flush the wrapped file."""
        self._out.flush()


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[BinaryIO]:
    """A new file (mode 600) written as ``<final>.partial``, renamed to `final` on success.

    On any failure the partial file is removed and nothing appears under `final`.
    """
    partial = Path(f"{final}{PARTIAL}")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise os_error(partial, exc) from None
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        commit(partial, final)
    except OSError as exc:
        discard(partial)
        raise _removed(os_error(partial, exc)) from None
    except BaseException:
        discard(partial)
        raise


@contextlib.contextmanager
def atomic_path(final: Path, directory: bool = False) -> Iterator[Path]:
    """A new empty ``<final>.partial`` file (600) or directory (700) for a tool to fill.

    Renamed to `final` when the block succeeds; removed on any failure.
    """
    partial = Path(f"{final}{PARTIAL}")
    try:
        if directory:
            partial.mkdir(mode=0o700)
        else:
            os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise os_error(partial, exc) from None
    try:
        yield partial
        commit(partial, final)
    except OSError as exc:
        discard(partial)
        raise _removed(os_error(partial, exc)) from None
    except BaseException:
        discard(partial)
        raise


def _removed(error: DrillError) -> DrillError:
    return DrillError(f"{error}; the partial backup was removed, earlier backups are untouched")


def commit(partial: Path, final: Path) -> None:
    """Rename a finished partial to its final name; never replace an existing backup."""
    if os.path.lexists(final):
        raise DrillError(f"{final}: exists already; the new backup was not put in its place")
    os.rename(partial, final)
    fsync_dir(final.parent)


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Write a manifest beside its backup, atomically, mode 600."""
    with atomic_file(path) as out:
        out.write(manifest_bytes(manifest))


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (best effort where directories cannot be synced)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def discard(path: Path) -> None:
    """Remove a file or a directory tree; what is not there is not an error."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def os_error(path: str | os.PathLike[str], exc: OSError) -> DrillError:
    """A one-line DrillError naming `path` and the cause of an OSError."""
    causes = {
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EROFS: "read-only file system",
        errno.ENOENT: "no such file or directory",
    }
    cause = causes.get(exc.errno or 0) or exc.strerror or str(exc)
    return DrillError(f"{path}: {cause}")


def human_size(count: int) -> str:
    """A byte count for people: "389 B", "12.4 MB"."""
    if count < 1024:
        return f"{count} B"
    size = float(count)
    for unit in ("KB", "MB", "GB", "TB"):
        size /= 1024
        if size < 1024 or unit == "TB":
            break
    return f"{size:.1f} {unit}"
