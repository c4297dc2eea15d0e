"""Where a damaged upload can still be found: the snapshots that share it, the newest that
holds it intact.

Dated snapshots hard-link the files that did not change (rsync ``--link-dest``, ``cp -al``):
one inode is every snapshot's copy, so a file truncated or overwritten in place is damaged in
all of them at once. When a restore finds a file whose bytes disagree with its manifest, this
module names every other snapshot whose copy is that same inode (a local storage: the same
device and inode), and the newest snapshot whose own copy still equals its own manifest's
sha256: the one to take that file from. A snapshot without a manifest has nothing to prove its
copy good, so it is never called intact.

Example::

    traces = trace(storage, backup, ["avatars/a.png"])
    traces["avatars/a.png"].words()
    # 'the same inode is in files/20250114_020000/ (damaged there too); intact in
    #  files/20250110_020000/'
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

from drills.config.errors import DrillError
from drills.storage import LocalStorage, Storage, catalog
from drills.storage.catalog import Backup
from drills.storage.snapshot import FILE, Entry, open_file

TRACED = 10
"""Damaged files traced at most (each may read one copy per snapshot)."""
CHUNK = 1 << 20


@dataclass(frozen=True)
class Trace:
    """One damaged file: the other snapshots sharing its inode, and where it is intact."""

    path: str
    shared: tuple[str, ...] = ()
    intact: str | None = None

    def words(self) -> str:
        """The trace for people."""
        parts = []
        if self.shared:
            parts.append(
                f"the same inode is in {', '.join(self.shared)} (hard links: damaged there too)"
            )
        parts.append(
            f"intact in {self.intact}" if self.intact else "intact in no snapshot with a manifest"
        )
        return "; ".join(parts)


def trace(storage: Storage, backup: Backup, damaged: Sequence[str]) -> dict[str, Trace]:
    """A trace of each of the first `TRACED` damaged files of the snapshot `backup`."""
    if not damaged:
        return {}
    key = backup.key
    prefix = key[: key.rstrip("/").rfind("/") + 1]
    try:
        others = [b for b in catalog.list_backups(storage, "files", prefix) if b.key != key]
    except DrillError:
        return {}
    others.sort(key=lambda b: (b.taken_at, b.key), reverse=True)
    local = storage if isinstance(storage, LocalStorage) else None
    traces = {}
    for path in damaged[:TRACED]:
        mine = _inode(local, key, path)
        shared = tuple(
            b.key for b in others if mine is not None and _inode(local, b.key, path) == mine
        )
        intact = next(
            (b.key for b in others if b.key not in shared and _intact(storage, b, path)), None
        )
        traces[path] = Trace(path, shared, intact)
    return traces


def _inode(local: LocalStorage | None, key: str, path: str) -> tuple[int, int] | None:
    if local is None:
        return None
    try:
        st = os.lstat(local.root.joinpath(*f"{key}{path}".split("/")))
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _intact(storage: Storage, backup: Backup, path: str) -> bool:
    """Whether the snapshot's own copy of `path` equals its own manifest's sha256."""
    try:
        manifest = backup.manifest
    except DrillError:
        return False
    entry = next((f for f in manifest.files if f.path == path), None) if manifest else None
    if entry is None:
        return False
    key = f"{backup.key}{path}"
    stored = None
    if isinstance(storage, LocalStorage):
        inode = _inode(storage, backup.key, path)
        stored = Entry(path, FILE, inode=inode) if inode else None
    digest, size = hashlib.sha256(), 0
    try:
        with contextlib.closing(open_file(storage, key, stored)) as stream:
            while block := stream.read(CHUNK):
                digest.update(block)
                size += len(block)
    except (DrillError, OSError):
        return False
    return size == entry.size and digest.hexdigest() == entry.sha256.lower()
