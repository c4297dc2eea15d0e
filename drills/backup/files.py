"""`drill backup files`: dated, hard-linked snapshots of the uploads directory, synced to storage.

Locally, as the seed runbook did: ``files/<YYYYMMDD_HHMMSS>/`` is a full copy of the uploads
directory in which files unchanged since the previous snapshot are hard links to it (rsync
``-aH --link-dest`` when rsync is installed, else the same in Python, linking only when size,
mtime and sha256 all match), ``files/current`` is a symlink to the newest snapshot, and
``files/<YYYYMMDD_HHMMSS>.manifest.json`` records the snapshot as `drills.storage.snapshot`
defines it: every regular file (path, size, sha256, mode, owner, modification time in
nanoseconds, hard links inside the snapshot), every symlink with its target (copied as a link,
never followed), every directory, empty ones included. Fifos, sockets and devices are left
out, with a warning.

In the storage every ``files/<ts>/`` prefix holds the snapshot's regular files and is complete
on its own (links and directories live in the manifest: an object store has neither), so a
restore needs one snapshot only. Only files whose checksum changed since the previous
snapshot's manifest are uploaded; unchanged ones are copied inside the storage (S3 CopyObject,
no data through this machine; a hard link in a ``file://`` storage), falling back to an upload
when the copy fails.

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
from dataclasses import replace
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
from drills.storage.manifest import (
    SUFFIX,
    DirEntry,
    FileEntry,
    LinkEntry,
    Manifest,
    manifest_key,
    sha256_file,
)
from drills.storage.snapshot import (
    DIR,
    FILE,
    LINK,
    ROOT,
    Entry,
    Snapshot,
    manifest_fields,
    read_tree,
)

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
            files, links, directories = _recorded(
                source, partial, prev_dir, previous_entries, known
            )
            if not files:
                raise _empty(source)
        manifest = Manifest(
            kind="files",
            started_at=started,
            finished_at=utcnow(),
            format="snapshot",
            compression="none",
            bytes=sum(e.size for e in files),
            producer_version=__version__,
            files=files,
            links=links,
            directories=directories,
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
    """The newest snapshot directory taken before `ts`: by its second, then, for names of
    the same second (a unique suffix is random, so its order says nothing), by when the
    directory was made."""
    second = ts[:15]
    found = []
    for name in os.listdir(work):
        path = work / name
        if not _SNAPSHOT.match(name) or name == ts or name[:15] > second:
            continue
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            found.append((name[:15], st.st_ctime_ns, name))
    return max(found)[2] if found else None


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
    # -H: a file with two names keeps one inode. --modify-window=-1: times compared to the
    # nanosecond; by default rsync compares whole seconds, so a file rewritten (same size) in
    # the second of the previous snapshot was linked to its old copy, and a directory's time
    # was left as the copy made it.
    argv = [rsync, "-aH", "--modify-window=-1"]
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
    """rsync -aH --link-dest in Python; returns the sha256 of every file it copied or linked."""
    tree = read_tree(source)
    owners = os.geteuid() == 0
    known: dict[str, str] = {}
    for entry in tree.ordered():
        src, dst = source / entry.path, partial / entry.path
        try:
            if entry.kind == DIR:
                if entry.path != ROOT:
                    dst.mkdir()
            elif entry.kind == LINK:
                os.symlink(entry.target or "", dst)
                _set_stat(dst, entry, owners)
            elif entry.hardlink is not None:
                os.link(partial / entry.hardlink, dst)
                known[entry.path] = known[entry.hardlink]
            else:
                known[entry.path] = _link_or_copy(src, dst, entry, previous, previous_entries)
                _set_stat(dst, entry, owners)
        except OSError as exc:
            raise os_error(exc.filename or src, exc) from None
    for entry in reversed(tree.ordered()):
        if entry.kind == DIR:  # after their contents, or creating those would reset mtimes
            _set_stat(partial / entry.path, entry, owners)
    return known


def _set_stat(path: Path, entry: Entry, owners: bool) -> None:
    """Give a copy the entry's owner (when we may), mode and times, never through a link."""
    if owners:
        os.chown(path, entry.uid or 0, entry.gid or 0, follow_symlinks=False)
    if entry.kind != LINK:
        os.chmod(path, entry.mode or 0)
    ns = entry.mtime_ns or 0
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def _link_or_copy(
    src: Path,
    dst: Path,
    entry: Entry,
    previous: Path | None,
    previous_entries: dict[str, FileEntry],
) -> str:
    """Hard-link `dst` to the previous snapshot's copy when it is the same file, else copy."""
    old = previous / entry.path if previous is not None else None
    if old is not None and old.is_file() and not old.is_symlink():
        old_st = old.lstat()
        if (old_st.st_size, old_st.st_mtime_ns) == (entry.size, entry.mtime_ns) and (
            stat.S_IMODE(old_st.st_mode),
            old_st.st_uid,
            old_st.st_gid,
        ) == (entry.mode, entry.uid, entry.gid):
            prior = previous_entries.get(entry.path)
            old_sha = prior.sha256 if prior and prior.size == old_st.st_size else None
            new_sha = sha256_file(src)
            if new_sha == (old_sha or sha256_file(old)):
                os.link(old, dst)
                return new_sha
    digest = hashlib.sha256()
    with open(src, "rb") as reader, open(dst, "xb") as writer:
        while block := reader.read(CHUNK):
            digest.update(block)
            writer.write(block)
    return digest.hexdigest()


def _recorded(
    source: Path,
    snapshot: Path,
    previous: Path | None,
    previous_entries: dict[str, FileEntry],
    known: dict[str, str],
) -> tuple[tuple[FileEntry, ...], tuple[LinkEntry, ...], tuple[DirEntry, ...]]:
    """The manifest's record of the snapshot: every entry with its facts, hashes reused for
    files hard-linked to the previous snapshot (the same inode is the same bytes) and for
    files just copied. A copy made without root's rights cannot keep owners: then they are
    the source's."""
    tree = read_tree(snapshot)
    if tree.special:
        log.warning("%s: fifos, sockets and devices are not backed up: %s", source, tree.special)
    for path in tree.special:
        with contextlib.suppress(OSError):
            (snapshot / path).unlink()
    if os.geteuid() != 0:
        tree = _owners_of(read_tree(source), tree)
    digests = {}
    for entry in tree.ordered():
        if entry.kind != FILE or entry.hardlink is not None:
            continue
        digests[entry.path] = (
            known.get(entry.path)
            or _linked_sha(snapshot / entry.path, entry.path, previous, previous_entries)
            or sha256_file(snapshot / entry.path)
        )
    return manifest_fields(tree, digests)


def _owners_of(source: Snapshot, tree: Snapshot) -> Snapshot:
    """`tree` with the owners `source` has for the same entries."""
    for path, entry in tree.entries.items():
        there = source.entries.get(path)
        if there is not None and there.kind == entry.kind:
            tree.entries[path] = replace(entry, uid=there.uid, gid=there.gid)
    return tree


def _linked_sha(
    path: Path, rel: str, previous: Path | None, previous_entries: dict[str, FileEntry]
) -> str | None:
    entry = previous_entries.get(rel)
    st = path.lstat()
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
