"""What every producer shares: timestamp names, atomic writes, uploads and retention pruning.

A backup is written under a temporary ``<name>.partial`` name (mode 600) and renamed to its
final name only after every step that made it succeeded, so a final name always means a
complete backup. Local copies live under ``[backup] local_dir`` laid out like the storage
(``<local_dir>/database/...``), so that the local directory is itself a drillable
``file://`` storage. Times are UTC; names carry ``YYYYMMDD_HHMMSS`` as the seed scripts did.

Example::

    dest = Destination("database/", storage=open_storage(url), local_dir=Path("/var/b"))
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from drills.config import Config
from drills.errors import ConfigError, DrillError, StorageError
from drills.manifest import SUFFIX, Manifest, manifest_key
from drills.storage import LocalStorage, Storage, open_storage

log = logging.getLogger(__name__)

STAMP_FORMAT = "%Y%m%d_%H%M%S"
STAMP = re.compile(r"\d{8}_\d{6}")
PARTIAL = ".partial"
UPLOAD_THREADS = 8
LEFTOVER_AGE = timedelta(days=1)


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
    """Local backups removed because they were past the retention."""


@dataclass(frozen=True)
class Destination:
    """Where one kind of backup goes: a storage prefix, a local directory, a retention."""

    prefix: str
    """The kind's prefix under the storage root and under `local_dir` ("database/")."""
    storage: Storage | None = None
    """Where backups are uploaded; None: local only."""
    local_dir: Path | None = None
    """Root of the local copies; None: storage only (work in a temporary directory)."""
    retention_days: int = 30

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

    def taken(self, name: str) -> bool:
        """Whether a backup of that name (or its partial) exists already."""
        if self.kind_dir is not None:
            path = self.kind_dir / name
            return any(os.path.lexists(p) for p in (path, f"{path}{PARTIAL}", f"{path}{SUFFIX}"))
        try:
            return self.storage is not None and self.storage.exists(manifest_key(self.key(name)))
        except StorageError:
            return False  # the upload will say what is wrong with the storage

    @contextlib.contextmanager
    def workdir(self) -> Iterator[Path]:
        """The local kind directory (created 700), or a temporary one removed afterwards."""
        if self.kind_dir is not None:
            try:
                self.kind_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise os_error(self.kind_dir, exc) from None
            yield self.kind_dir
            return
        work = Path(tempfile.mkdtemp(prefix="drill-backup-"))
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def local_copy(self, path: Path) -> Path | None:
        """`path` if it is a kept local copy, None if it lives in a temporary directory."""
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
    return Destination(prefix, storage, local_dir, config.backup.retention_days)


def choose_time(taken: Callable[[str], bool]) -> datetime:
    """Now, or the next second when a backup with now's stamp exists already."""
    for _ in range(3):
        now = utcnow()
        if not taken(stamp(now)):
            return now
        time.sleep(1.02 - now.microsecond / 1e6)
    raise DrillError(f"a backup stamped {stamp(now)} exists already; not overwriting it")


class HashingWriter:
    """Wraps a binary file; hashes and counts the bytes as they are written through it."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self.bytes = 0

    @property
    def sha256(self) -> str:
        """The hex digest of the bytes written so far."""
        return self._hash.hexdigest()

    def write(self, data: bytes) -> int:
        """Write, hash and count `data`."""
        self._out.write(data)
        self._hash.update(data)
        self.bytes += len(data)
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
        out.write(manifest.to_json().encode())


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


def upload(dest: Destination, key: str, local: Path, manifest: Manifest) -> tuple[int, str | None]:
    """Send a backup (a file, or a directory's files) then its manifest to the storage.

    The manifest goes last, so a manifest in the storage means the backup is complete.
    Returns (objects uploaded, storage URL), (0, URL) when written in place, (0, None) when
    there is no storage.
    """
    if dest.storage is None:
        return 0, None
    if dest.in_place:
        return 0, dest.storage.url
    try:
        dest.storage.check()  # an unmounted backup disk or a missing bucket, said once
        if local.is_dir():
            count = upload_tree(dest.storage, key, local, last=("toc.dat",))
        else:
            dest.storage.put_file(key, local)
            count = 1
        dest.storage.put_bytes(manifest_key(key), manifest.to_json().encode())
    except DrillError as exc:
        kept = dest.local_copy(local)
        raise StorageError(f"{exc}; local copy kept at {kept}" if kept else str(exc)) from None
    return count + 1, dest.storage.url


def upload_tree(storage: Storage, key: str, root: Path, last: tuple[str, ...] = ()) -> int:
    """Upload every regular file under `root` to `key` + relative path; `last` names go last.

    A directory-format dump is recognised by its ``toc.dat``: sending it last means an
    interrupted upload does not look like a dump.
    """
    paths = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    first = [p for p in paths if p.name not in last]
    final = [p for p in paths if p.name in last]
    prefix = key.rstrip("/") + "/"
    for group in (first, final):
        run_all(lambda p: storage.put_file(prefix + p.relative_to(root).as_posix(), p), group)
    return len(paths)


def copy_object(storage: Storage, source: str, key: str) -> None:
    """Copy an object to `key` inside the storage, its bytes never passing through here.

    S3: CopyObject (multipart copy above 5 GB), with the storage's server-side encryption.
    A local directory: a hard link (backups are never modified in place). Raises
    StorageError when the copy fails, e.g. the source expired.
    """
    if isinstance(storage, LocalStorage):
        src, dst = storage.root / source, storage.root / key
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link")
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, tmp)
            os.replace(tmp, dst)
        except OSError as exc:
            discard(tmp)
            raise StorageError(
                f"{storage.url}/{key}: copy of {source} failed: {exc.strerror}"
            ) from None
        return
    from drills.storage_s3 import S3Storage

    if not isinstance(storage, S3Storage):
        with storage.open(source) as stream:
            storage.put_bytes(key, stream.read())
        return
    import botocore.exceptions

    extra = {"ServerSideEncryption": storage.sse} if storage.sse else {}
    try:
        storage.client.copy(
            {"Bucket": storage.bucket, "Key": storage.prefix + source},
            storage.bucket,
            storage.prefix + key,
            ExtraArgs=extra,
        )
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise StorageError(f"{storage.url}/{key}: copy of {source} failed: {exc}") from None


def run_all(work: Callable[[Path], object], items: list) -> None:
    """Run `work` on every item with a few threads (uploads wait on the network)."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=min(UPLOAD_THREADS, len(items))) as pool:
        for _ in pool.map(work, items):
            pass


def _drop_leftover(
    directory: Path, name: str, stamp_of: Callable[[str], str | None], now: datetime
) -> None:
    """Remove a partial backup a killed run left more than a day ago (a live run's is newer)."""
    when = parse_stamp(stamp_of(name[: -len(PARTIAL)]) or "")
    if when is not None and when < now - LEFTOVER_AGE:
        discard(directory / name)
        log.warning("removed %s, left over by a run that did not finish", directory / name)


def prune(
    directory: Path,
    stamp_of: Callable[[str], str | None],
    retention_days: int,
    now: datetime,
) -> tuple[str, ...]:
    """Remove backups in `directory` older than the retention, and their manifests.

    `stamp_of(name)` gives the ``YYYYMMDD_HHMMSS`` of a backup's entry name, None for
    anything else (left alone). The newest backup is never removed, whatever its age, and
    nothing inside the retention window is. Partial backups left by killed runs more than a
    day ago are removed too. Returns the names of the backups removed.
    """
    entries = []
    for name in os.listdir(directory):
        if name.endswith(PARTIAL):
            _drop_leftover(directory, name, stamp_of, now)
            continue
        when = parse_stamp(stamp_of(name) or "")
        if when is not None and not (directory / name).is_symlink():
            entries.append((when, name))
    if len(entries) < 2:
        return ()
    newest = max(entries)
    horizon = now - timedelta(days=retention_days)
    removed = []
    for when, name in sorted(entries):
        if (when, name) == newest or when >= horizon:
            continue
        discard(directory / name)
        discard(directory / f"{name}{SUFFIX}")
        log.info("pruned %s (taken %s, past %d days)", directory / name, when, retention_days)
        removed.append(name)
    return tuple(removed)
