"""One definition of a files snapshot, shared by the producer, the drill and the restore.

A snapshot is a tree of entries, each with the facts a restore must give back:

- regular files: content (size, sha256), mode (setuid and sticky bits included), owner,
  modification time to the nanosecond, and hard links inside the snapshot (a second name of
  an inode points at the first one in tree order);
- symlinks: their target as written, never followed (a link may point anywhere, even at a
  host file; it is restored as a link, and named when its target leaves the tree);
- directories, empty ones included; the snapshot's own directory is ".".

Where the facts come from (`expected`): a manifest that records the tree (the producer's)
gives all of them; a stored tree read in place (a ``file://`` storage: the runbook's rsync +
``cp -al`` snapshots) gives them by ``lstat``, with a manifest's checksums and modes over it
when an older one lists files; an object listing (S3 without such a manifest) gives files and
sizes only. A fact nobody recorded is None and not compared.

Example::

    tree = read_tree(Path("/var/backups/files/20250115_020000"))
    stored = stored_snapshot(storage, "files/20250115_020000/")
    want = expected(stored, backup.manifest)
    for entry in want.ordered():
        ...
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from drills.config.errors import IntegrityError, StorageError
from drills.storage.base import ObjectInfo, Storage
from drills.storage.local import LocalStorage
from drills.storage.manifest import DirEntry, FileEntry, LinkEntry, Manifest

ROOT = "."
FILE, LINK, DIR = "file", "link", "dir"


@dataclass(frozen=True)
class Entry:
    """One entry of a snapshot; a fact that was not recorded is None."""

    path: str
    kind: str
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    mtime_ns: int | None = None
    size: int = 0
    sha256: str | None = None
    target: str | None = None
    """A link's target, as written."""
    hardlink: str | None = None
    """A file's first path of the same inode, when this is a second name of it."""
    inode: tuple[int, int] | None = field(default=None, compare=False, repr=False)
    """(device, inode) where the entry was read in place; never recorded."""
    etag: str | None = field(default=None, compare=False, repr=False)
    """An object store's ETag of the stored file, where listed; never recorded."""

    @property
    def shown(self) -> str:
        """The path for people: directories with a trailing '/', the root as './'."""
        if self.kind == DIR:
            return "./" if self.path == ROOT else self.path + "/"
        return self.path


@dataclass
class Snapshot:
    """A snapshot's entries by path, and where they came from."""

    entries: dict[str, Entry] = field(default_factory=dict)
    source: str = "listing"
    """"manifest", "tree" (read in place), "tree + manifest", "listing", "listing + manifest"."""
    tree: bool = False
    """Whether links, directories and hard links are known (a tree read in place, or a
    manifest that records one), not only files."""
    special: list[str] = field(default_factory=list)
    """Fifos, sockets and devices found in a tree: never part of a snapshot."""
    stamps: dict[str, int] = field(default_factory=dict, repr=False)
    """An object listing's modification times (ns), for files whose own time is unknown."""

    def ordered(self) -> list[Entry]:
        """Every entry in tree order: a directory before what it holds."""
        return [self.entries[path] for path in sorted(self.entries, key=order_key)]

    def of_kind(self, kind: str) -> dict[str, Entry]:
        """The entries of one kind, by path."""
        return {p: e for p, e in self.entries.items() if e.kind == kind}

    @property
    def files(self) -> dict[str, Entry]:
        """The regular files, by path."""
        return self.of_kind(FILE)

    def outside(self) -> list[Entry]:
        """The links whose target leaves the tree (absolute, or above its root)."""
        return [e for e in self.ordered() if e.kind == LINK and leaves_tree(e.path, e.target)]

    def recorded(self) -> list[str]:
        """The facts some entry records, in words."""
        found = []
        for name, words in (
            ("sha256", "content"),
            ("mode", "modes"),
            ("uid", "owners"),
            ("mtime_ns", "times"),
        ):
            if any(getattr(e, name) is not None for e in self.entries.values()):
                found.append(words)
        if self.tree:
            found += ["links", "directories", "hard links"]
        return found


def order_key(path: str) -> tuple[str, ...]:
    """Tree order: the root first, then each directory before its contents."""
    return () if path == ROOT else tuple(path.split("/"))


def leaves_tree(path: str, target: str | None) -> bool:
    """Whether the link at `path` points outside the tree it is in."""
    if not target:
        return False
    if target.startswith("/"):
        return True
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    return joined == ".." or joined.startswith("../")


def read_tree(root: Path) -> Snapshot:
    """The tree under `root` by lstat: nothing followed, nothing read but names and stats."""
    snapshot = Snapshot(source="tree", tree=True)
    try:
        top = os.lstat(root)
    except OSError as exc:
        raise StorageError(f"{root}: cannot read it: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(top.st_mode):
        raise StorageError(f"{root}: not a directory")
    snapshot.entries[ROOT] = _entry(ROOT, top, None)
    inodes: dict[tuple[int, int], list[str]] = defaultdict(list)
    pending = [(root, "")]
    while pending:
        directory, rel = pending.pop()
        try:
            with os.scandir(directory) as found:
                items = list(found)
        except OSError as exc:
            raise StorageError(f"{directory}: cannot list it: {exc.strerror or exc}") from None
        for item in items:
            path = f"{rel}{item.name}"
            try:
                st = item.stat(follow_symlinks=False)
                target = os.readlink(item.path) if stat.S_ISLNK(st.st_mode) else None
            except FileNotFoundError:
                continue  # removed while we walked
            except OSError as exc:
                raise StorageError(f"{item.path}: cannot read it: {exc.strerror or exc}") from None
            entry = _entry(path, st, target)
            if entry is None:
                snapshot.special.append(path)
                continue
            snapshot.entries[path] = entry
            if entry.kind == DIR:
                pending.append((Path(item.path), path + "/"))
            elif entry.kind == FILE and st.st_nlink > 1:
                inodes[(st.st_dev, st.st_ino)].append(path)
    for paths in inodes.values():
        if len(paths) > 1:
            first, *others = sorted(paths, key=order_key)
            for other in others:
                snapshot.entries[other] = replace(snapshot.entries[other], hardlink=first)
    snapshot.special.sort()
    return snapshot


def read_entry(path: Path, name: str) -> Entry | None:
    """One path's entry by lstat (a link is not followed), named `name`; None for a fifo,
    a socket or a device."""
    try:
        st = os.lstat(path)
        target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
    except OSError as exc:
        raise StorageError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    return _entry(name, st, target)


def pax_time(ns: int) -> str:
    """Nanoseconds as a pax header's time ("1700000000.123456789"): exact, where a float in
    a tar header is not."""
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    seconds, rest = divmod(ns, 1_000_000_000)
    return f"{sign}{seconds}.{rest:09d}"


def _entry(path: str, st: os.stat_result, target: str | None) -> Entry | None:
    common = {"uid": st.st_uid, "gid": st.st_gid, "mtime_ns": st.st_mtime_ns}
    if stat.S_ISLNK(st.st_mode):
        return Entry(path, LINK, target=target, **common)
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        return Entry(path, DIR, mode=mode, **common)
    if stat.S_ISREG(st.st_mode):
        inode = (st.st_dev, st.st_ino)
        return Entry(path, FILE, mode=mode, size=st.st_size, inode=inode, **common)
    return None


def from_manifest(manifest: Manifest) -> Snapshot:
    """What a manifest records: its files, and when it records the tree, links and
    directories too."""
    snapshot = Snapshot(source="manifest", tree=manifest.records_tree)
    for f in manifest.files:
        snapshot.entries[f.path] = Entry(
            f.path, FILE, f.mode, f.uid, f.gid, f.mtime_ns, f.size, f.sha256.lower(),
            hardlink=f.hardlink,
        )  # fmt: skip
    for link in manifest.links:
        snapshot.entries[link.path] = Entry(
            link.path, LINK, None, link.uid, link.gid, link.mtime_ns, target=link.target
        )
    for d in manifest.directories:
        snapshot.entries[d.path] = Entry(d.path, DIR, d.mode, d.uid, d.gid, d.mtime_ns)
    return snapshot


def manifest_fields(
    snapshot: Snapshot, sha256: Mapping[str, str]
) -> tuple[tuple[FileEntry, ...], tuple[LinkEntry, ...], tuple[DirEntry, ...]]:
    """The `files`, `links` and `directories` of a manifest recording `snapshot`, with each
    file's checksum from `sha256` (by path)."""
    files, links, dirs = [], [], []
    for e in snapshot.ordered():
        if e.kind == FILE:
            digest = sha256[e.hardlink or e.path]
            files.append(
                FileEntry(e.path, e.size, e.mode or 0, digest, e.mtime_ns, e.uid, e.gid, e.hardlink)
            )
        elif e.kind == LINK:
            links.append(LinkEntry(e.path, e.target or "", e.mtime_ns, e.uid, e.gid))
        else:
            dirs.append(DirEntry(e.path, e.mode or 0, e.mtime_ns, e.uid, e.gid))
    return tuple(files), tuple(links), tuple(dirs)


def stored_snapshot(storage: Storage, key: str) -> Snapshot:
    """What the storage holds under the snapshot `key`: the tree read in place for a local
    storage (links never followed), else the objects' listing (files and sizes)."""
    if isinstance(storage, LocalStorage):
        root = storage.root.joinpath(*key.rstrip("/").split("/"))
        if not os.path.lexists(root):
            return Snapshot(source="tree", tree=True)  # only its manifest is left
        return read_tree(root)
    return listing_snapshot(storage.list(key), key)


def listing_snapshot(infos: Iterable[ObjectInfo], key: str) -> Snapshot:
    """The files an object listing shows under `key`: sizes, ETags and LastModified only."""
    snapshot = Snapshot(source="listing")
    for info in infos:
        rel = info.key[len(key) :]
        if rel and not rel.endswith("/"):
            snapshot.entries[rel] = Entry(rel, FILE, size=info.size, etag=info.etag)
            snapshot.stamps[rel] = int(info.modified.timestamp() * 1_000_000_000)
    return snapshot


def expected(stored: Snapshot, manifest: Manifest | None) -> Snapshot:
    """What a restore must give back: the manifest's tree when it records one; else the stored
    tree, with an older manifest's file list (checksums, sizes, modes) over it."""
    if manifest is not None and manifest.records_tree:
        return from_manifest(manifest)
    if manifest is None or not manifest.files:
        return stored
    listed = from_manifest(manifest)
    want = Snapshot(
        source=f"{stored.source} + manifest",
        tree=stored.tree,
        special=list(stored.special),
        stamps=stored.stamps,
    )
    want.entries = {p: e for p, e in stored.entries.items() if e.kind != FILE}
    for path, entry in listed.entries.items():
        there = stored.entries.get(path)
        if there is not None and there.kind == FILE:
            entry = replace(
                entry,
                uid=there.uid,
                gid=there.gid,
                mtime_ns=there.mtime_ns,
                hardlink=there.hardlink,
                inode=there.inode,
            )
        want.entries[path] = entry
    return want


def open_file(storage: Storage, key: str, stored: Entry | None) -> BinaryIO:
    """A reader of one stored file. In a local storage the file is opened without following
    a link and must be the inode the tree was read with (a link or a directory swapped in
    meanwhile is refused): a restore never reads outside the snapshot."""
    if not isinstance(storage, LocalStorage):
        return storage.open(key)
    if stored is None or stored.kind != FILE:
        what = "nothing" if stored is None else f"a {stored.kind}"
        raise IntegrityError(f"{key}: the storage holds {what} there, not a file")
    path = storage.root.joinpath(*key.split("/"))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise StorageError(f"{storage.url.rstrip('/')}/{key}: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != stored.inode:
        os.close(fd)
        raise IntegrityError(
            f"{key}: replaced while the snapshot was read (not the file listed); not followed"
        )
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def walk_files(snapshot: Snapshot) -> Iterator[Entry]:
    """The regular files that carry content (first names of their inodes), in tree order."""
    for entry in snapshot.ordered():
        if entry.kind == FILE and entry.hardlink is None:
            yield entry
