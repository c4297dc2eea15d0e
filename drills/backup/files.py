"""`drill backup files`: dated, hard-linked snapshots of the uploads directory, synced to storage.

Locally, as the seed runbook did: ``files/<YYYYMMDD_HHMMSS>/`` is a full copy of the uploads
directory in which files unchanged since the previous snapshot are hard links to it (rsync
``--link-dest`` when rsync is installed, else the same in Python, linking only when size, mtime
and sha256 all match), ``files/current`` is a symlink to the newest snapshot, and
``files/<YYYYMMDD_HHMMSS>.manifest.json`` lists every regular file's relative path, size,
mode and sha256 (symlinks and special files are kept in the snapshot but not listed).

In the storage every ``files/<ts>/`` prefix is complete on its own, so a restore needs one
snapshot only. Only files whose checksum changed since the previous snapshot's manifest are
uploaded; unchanged ones are copied inside the storage (S3 CopyObject, no data through this
machine; a hard link in a ``file://`` storage), falling back to an upload when the copy fails.

Example::

    result = backup_files(Destination("files/", storage, Path("/var/b")), "/srv/uploads")
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

from drills import __version__
from drills.backup.common import (
    STAMP,
    BackupResult,
    Destination,
    atomic_path,
    discard,
    os_error,
    utcnow,
)
from drills.backup.plausibility import size_causes
from drills.backup.run import Run
from drills.backup.series import Series
from drills.backup.transfer import copy_object, run_all
from drills.config.errors import ConfigError, DrillError, StorageError
from drills.storage import Storage
from drills.storage.manifest import SUFFIX, FileEntry, Manifest, manifest_key, sha256_file

log = logging.getLogger(__name__)

CURRENT = "current"
CHUNK = 1 << 20
# rsync's "some files vanished before they could be transferred": normal for a live uploads
# directory; the manifest lists what the snapshot holds.
RSYNC_VANISHED = 24
_SNAPSHOT = re.compile(rf"^({STAMP.pattern})$")
_MANIFEST = re.compile(rf"^({STAMP.pattern}){re.escape(SUFFIX)}$")


def backup_files(
    dest: Destination, source_dir: str | os.PathLike[str], *, use_rsync: bool | None = None
) -> BackupResult:
    """Snapshot `source_dir` into ``<local_dir>/files/<ts>/``, then sync it to the storage.

    `use_rsync` None uses rsync when it is installed; False forces the Python copy.
    """
    source = Path(source_dir)
    _check_source(source)
    if dest.kind_dir is None:
        raise ConfigError(
            "files backups need [backup] local_dir (or a file:// storage): the hard-linked "
            "snapshots live there"
        )
    rsync = shutil.which("rsync") if use_rsync is not False else None
    if use_rsync and rsync is None:
        raise ConfigError("rsync: not found on PATH")
    with Run(dest, Series("files", dest.prefix), send=_send) as run, dest.workdir() as work:
        started = utcnow()
        ts = run.name(started, directory=True)
        previous = _previous(work, ts)
        prev_dir = work / previous if previous else None
        previous_entries = _local_manifest(work, previous)
        with atomic_path(work / ts, directory=True) as partial:
            if rsync:
                known = _rsync(rsync, source, partial, prev_dir)
            else:
                known = _copy_tree(source, partial, prev_dir, previous_entries)
            entries = _entries(partial, prev_dir, previous_entries, known)
            if not entries:
                raise _empty(source)
        manifest = Manifest(
            kind="files",
            started_at=started,
            finished_at=utcnow(),
            format="snapshot",
            compression="none",
            bytes=sum(e.size for e in entries),
            producer_version=__version__,
            files=entries,
            extra={
                "source": str(source),
                "linked_to": previous,
                "copier": "rsync" if rsync else "python",
            },
        )
        _point_current(work, ts)
        causes = size_causes(manifest.bytes or 0, run.previous())
        return run.finish(work / ts, run.mark(manifest, causes))


def _check_source(source: Path) -> None:
    if not source.is_dir():
        what = "not a directory" if source.exists() else "no such directory"
        raise DrillError(f"{source}: {what}; nothing backed up")
    try:
        with os.scandir(source) as found:
            empty = next(found, None) is None
    except OSError as exc:
        raise os_error(source, exc) from None
    if empty:
        raise _empty(source)


def _empty(source: Path) -> DrillError:
    # a missing mount looks exactly like this; snapshotting it would hide the problem
    return DrillError(f"{source}: the uploads directory is empty (not mounted?); nothing backed up")


def _stamp_of(name: str) -> str | None:
    match = _SNAPSHOT.match(name)
    return match.group(1) if match else None


def _previous(work: Path, ts: str) -> str | None:
    """The newest snapshot directory older than `ts`."""
    names = [
        name
        for name in os.listdir(work)
        if _SNAPSHOT.match(name)
        and name < ts
        and (work / name).is_dir()
        and not (work / name).is_symlink()
    ]
    return max(names, default=None)


def _local_manifest(work: Path, snapshot: str | None) -> dict[str, FileEntry]:
    """The previous snapshot's manifest entries by path; {} if none or unreadable."""
    if snapshot is None:
        return {}
    path = work / f"{snapshot}{SUFFIX}"
    try:
        manifest = Manifest.from_json(path.read_bytes(), source=str(path))
    except FileNotFoundError:
        return {}
    except (OSError, DrillError) as exc:
        log.warning("%s: not used, files are hashed again: %s", path, exc)
        return {}
    return {entry.path: entry for entry in manifest.files}


def _rsync(rsync: str, source: Path, partial: Path, previous: Path | None) -> dict[str, str]:
    argv = [rsync, "-a"]
    if previous is not None:
        argv.append(f"--link-dest={previous.absolute()}")
    argv += [f"{source}/", f"{partial}/"]
    with tempfile.TemporaryFile() as err:
        code = subprocess.run(argv, stderr=err, stdout=subprocess.DEVNULL, check=False).returncode
        err.seek(0)
        lines = [line.strip() for line in err.read().decode(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    if code == RSYNC_VANISHED:
        log.warning("rsync: some files vanished while copying %s (a live directory)", source)
    elif code != 0:
        cause = lines[0] if lines else "no message"
        raise DrillError(f"{source}: rsync failed (exit {code}): {cause}; nothing backed up")
    return {}


def _copy_tree(
    source: Path, partial: Path, previous: Path | None, previous_entries: dict[str, FileEntry]
) -> dict[str, str]:
    """rsync -a --link-dest in Python; returns the sha256 of every file it copied or linked."""
    known: dict[str, str] = {}
    directories: list[tuple[Path, Path]] = [(source, partial)]
    for dirpath, dirnames, filenames in os.walk(source, onerror=_walk_error):
        here = Path(dirpath)
        rel_dir = here.relative_to(source)
        for name in sorted(dirnames):
            src = here / name
            if src.is_symlink():
                _copy_link(src, partial / rel_dir / name)
                continue
            (partial / rel_dir / name).mkdir()
            directories.append((src, partial / rel_dir / name))
        dirnames[:] = sorted(n for n in dirnames if not (here / n).is_symlink())
        for name in sorted(filenames):
            src, dst = here / name, partial / rel_dir / name
            rel = (rel_dir / name).as_posix()
            st = src.lstat()
            if stat.S_ISLNK(st.st_mode):
                _copy_link(src, dst)
            elif stat.S_ISREG(st.st_mode):
                known[rel] = _link_or_copy(src, dst, st, rel, previous, previous_entries)
    for src, dst in reversed(directories):
        shutil.copystat(src, dst)  # after the files, or their creation would reset mtimes
    return known


def _link_or_copy(
    src: Path,
    dst: Path,
    st: os.stat_result,
    rel: str,
    previous: Path | None,
    previous_entries: dict[str, FileEntry],
) -> str:
    """Hard-link `dst` to the previous snapshot's copy when it is the same file, else copy."""
    old = previous / rel if previous is not None else None
    if old is not None and old.is_file() and not old.is_symlink():
        old_st = old.lstat()
        if (old_st.st_size, old_st.st_mtime_ns) == (st.st_size, st.st_mtime_ns):
            entry = previous_entries.get(rel)
            old_sha = entry.sha256 if entry and entry.size == old_st.st_size else None
            new_sha = sha256_file(src)
            if new_sha == (old_sha or sha256_file(old)):
                os.link(old, dst)
                return new_sha
    digest = hashlib.sha256()
    with open(src, "rb") as reader, open(dst, "xb") as writer:
        while block := reader.read(CHUNK):
            digest.update(block)
            writer.write(block)
    shutil.copystat(src, dst)
    return digest.hexdigest()


def _copy_link(src: Path, dst: Path) -> None:
    os.symlink(os.readlink(src), dst)


def _walk_error(exc: OSError) -> None:
    raise os_error(exc.filename, exc)


def _entries(
    snapshot: Path,
    previous: Path | None,
    previous_entries: dict[str, FileEntry],
    known: dict[str, str],
) -> tuple[FileEntry, ...]:
    """Every regular file of the snapshot; hashes reused for files hard-linked to the
    previous snapshot (the same inode is the same bytes) and for files just copied."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(snapshot):
        dirnames.sort()
        here = Path(dirpath)
        for name in sorted(filenames):
            path = here / name
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode):
                continue
            rel = path.relative_to(snapshot).as_posix()
            digest = known.get(rel) or _linked_sha(st, rel, previous, previous_entries)
            entries.append(
                FileEntry(rel, st.st_size, stat.S_IMODE(st.st_mode), digest or sha256_file(path))
            )
    return tuple(sorted(entries, key=lambda e: e.path))


def _linked_sha(
    st: os.stat_result, rel: str, previous: Path | None, previous_entries: dict[str, FileEntry]
) -> str | None:
    entry = previous_entries.get(rel)
    if previous is None or entry is None or entry.size != st.st_size or st.st_nlink < 2:
        return None
    try:
        old = (previous / rel).lstat()
    except OSError:
        return None
    return entry.sha256 if (old.st_dev, old.st_ino) == (st.st_dev, st.st_ino) else None


def _point_current(work: Path, ts: str) -> None:
    """Point ``files/current`` at the new snapshot, atomically (a symlink swapped by rename)."""
    current = work / CURRENT
    if current.exists() and not current.is_symlink():
        log.warning("%s is a directory (the seed's live copy?); left as it is", current)
        return
    tmp = work / f".{CURRENT}.{os.getpid()}"
    discard(tmp)
    try:
        os.symlink(ts, tmp)
        os.replace(tmp, current)
    except OSError as exc:
        discard(tmp)
        raise os_error(current, exc) from None


def _send(storage: Storage, key: str, snapshot: Path) -> tuple[int, int]:
    """Send a snapshot to ``files/<ts>/`` (its manifest not included): changed files
    uploaded, unchanged ones copied from the previous snapshot in the storage."""
    mpath = snapshot.parent / f"{snapshot.name}{SUFFIX}"
    manifest = Manifest.from_json(mpath.read_bytes(), source=str(mpath))
    ts = snapshot.name
    prefix = key[: -len(ts) - 1]
    prev_ts, prev = _stored_previous(storage, prefix, ts)
    counts = {"uploaded": 0, "copied": 0}
    lock = threading.Lock()

    def count(what: str) -> None:
        with lock:
            counts[what] += 1

    def send(entry: FileEntry) -> None:
        target = f"{key}{entry.path}"
        old = prev.get(entry.path)
        if old is not None and (old.sha256, old.size) == (entry.sha256, entry.size):
            with contextlib.suppress(StorageError):
                copy_object(storage, f"{prefix}{prev_ts}/{entry.path}", target)
                count("copied")
                return
            log.info("%s: copy failed, uploading it instead", target)
        storage.put_file(target, snapshot / entry.path)
        count("uploaded")

    run_all(send, list(manifest.files))
    return counts["uploaded"], counts["copied"]


def _stored_previous(
    storage: Storage, prefix: str, ts: str
) -> tuple[str | None, dict[str, FileEntry]]:
    """The newest snapshot manifest in the storage older than `ts`, by path."""
    stamps = []
    for info in storage.list(prefix):
        match = _MANIFEST.match(info.key[len(prefix) :])
        if match and match.group(1) < ts:
            stamps.append(match.group(1))
    if not stamps:
        return None, {}
    newest = max(stamps)
    key = manifest_key(f"{prefix}{newest}/")
    try:
        manifest = Manifest.from_json(storage.read_bytes(key), source=key)
    except DrillError as exc:
        log.warning("%s: not used, every file is uploaded: %s", key, exc)
        return None, {}
    return newest, {entry.path: entry for entry in manifest.files}
