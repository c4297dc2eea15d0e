"""Restore engine for uploads: a files snapshot from storage into a fresh Docker volume.

The same engine serves drills and real recoveries. What must come back is the snapshot as
`drills.storage.snapshot` defines it (files with their modes, owners and nanosecond times,
symlinks as links, empty directories, hard links), from the manifest when it records the
tree, else from the stored tree itself. A tar stream of exactly that is built on the fly (each
file hashed and its first bytes sniffed as it is read, many small objects fetched in parallel,
no temporary copy) and unpacked by `tar -x` in a labelled helper container that owns the new
volume. A link is written as a link, never followed: a restore reads nothing outside the
snapshot, whatever its links point at. What landed is then read back from a second, read-only
container over the volume (`find` and `sha256sum`) and compared with the snapshot fact by
fact: missing, altered and extra entries, modes, owners, times and hard links are named.

    >>> restored = restore_files(client, session, storage, backup, image=img, timeout=600)
    >>> landed = landed_files(client, session, restored.volume, image=img, timeout=600)
    >>> check_files(record, backup, restored, landed)          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import tarfile
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import BinaryIO

import docker
import docker.errors

from drills.config.clock import StepTimeout
from drills.config.errors import DrillError, IntegrityError, StorageError
from drills.record import DrillRecord
from drills.restore import damage, filetype, progress
from drills.restore.common import Drain
from drills.restore.damage import Trace
from drills.restore.prefetch import Item, Prefetch, Wanted
from drills.restore.tree_diff import compare
from drills.runtime.labels import RunSession
from drills.runtime.network import create_volume
from drills.storage import LocalStorage, Storage, catalog
from drills.storage.catalog import Backup
from drills.storage.etag import EtagCheck, Verdict
from drills.storage.manifest import HashingReader
from drills.storage.snapshot import (
    DIR,
    FILE,
    LINK,
    ROOT,
    Entry,
    Snapshot,
    expected,
    listing_snapshot,
    open_file,
    pax_time,
    stored_snapshot,
)

MOUNT = "/restore"
SHOWN = 10  # names listed in a check's detail before "and N more"
S3_WORKERS = 16
"""GETs in flight at once from an object store (see bench/files.py)."""
LOCAL_WORKERS = 4
"""Files read at once from a local storage."""

# NUL-separated records of every entry (type, mode, owner, size, time, inode, path; then the
# link target), a marker record, then sha256sum's NUL-separated "digest  ./path" records (-z:
# names are not escaped). A type record starts with a letter and a space, so it is never the
# marker. pipefail: a failed find or sha256sum fails the script instead of a short listing.
_MARKER = "#sha256"
_LIST_SCRIPT = (
    f"set -euo pipefail; cd {MOUNT}; "
    "find . -printf '%y %m %U %G %s %T@ %i %P\\0%l\\0'; "
    f"printf '{_MARKER}\\0'; "
    "find . -type f -print0 | xargs -0 -r sha256sum -z --"
)
_KINDS = {"f": FILE, "l": LINK, "d": DIR}


class FilesRestoreError(DrillError):
    """Copying a snapshot into its volume failed (the helper's tar or the engine said why)."""


@dataclass(frozen=True)
class FileState:
    """One file as read from storage or as found in the volume."""

    size: int
    sha256: str


@dataclass
class Landed:
    """A restored tree as read back in place: every entry (files with their sha256)."""

    tree: Snapshot

    @property
    def files(self) -> dict[str, FileState]:
        """Each regular file's size and sha256, by path."""
        return {p: FileState(e.size, e.sha256 or "") for p, e in self.tree.files.items()}

    def __len__(self) -> int:
        return len(self.tree.files)


@dataclass
class FilesRestore:
    """A snapshot restored into a volume: what was expected, what was streamed, where it went."""

    volume: str
    expected: Snapshot = field(default_factory=Snapshot)
    streamed: dict[str, FileState] = field(default_factory=dict)
    heads: dict[str, filetype.Head] = field(default_factory=dict)
    """What each file's first bytes say (sniffed as they streamed by: no extra read)."""
    missing: dict[str, str] = field(default_factory=dict)
    """Files of the snapshot the storage does not hold as files, and what it holds instead."""
    extra: list[str] = field(default_factory=list)
    """What the storage holds under the snapshot that the snapshot does not list."""
    damaged: dict[str, str] = field(default_factory=dict)
    """Files whose bytes disagree with the manifest, and how."""
    traces: dict[str, Trace] = field(default_factory=dict)
    """Where each damaged or missing file can still be found."""
    etags: dict[str, Verdict] = field(default_factory=dict)
    """What each object's S3 ETag says of the bytes read (object stores only)."""
    bytes_read: int = 0
    seconds: float = 0.0
    method: str = f"storage -> tar stream -> tar -x in a helper container ({MOUNT})"
    client: docker.DockerClient | None = field(default=None, repr=False)

    def remove(self) -> None:
        """Remove the volume (best effort: the run's sweep takes what is left)."""
        if self.client is not None:
            _remove_volume(self.client, self.volume)

    @property
    def unusable(self) -> list[str]:
        """Files that cannot be restored from this snapshot: damaged or missing."""
        return sorted({*self.damaged, *self.missing})


def restore_files(
    client: docker.DockerClient,
    session: RunSession,
    storage: Storage,
    backup: Backup,
    *,
    image: str,
    timeout: float,
) -> FilesRestore:
    """Stream the snapshot `backup` into a new labelled volume; raise with a named cause.

    `image` is any local image with bash, tar, find and sha256sum. The volume is removed if
    the restore fails; on success the caller owns it (`FilesRestore.remove`). Damaged and
    missing files do not stop the restore: they are listed, with where each can still be
    found, for the checks to fail on.
    """
    started = time.monotonic()
    if backup.format == catalog.MIRROR:
        stored = listing_snapshot(catalog.mirror_objects(storage, backup.key), backup.key)
    else:
        stored = stored_snapshot(storage, backup.key)
    want = expected(stored, backup.manifest)
    _refuse_unsafe(backup.key, want)
    volume = create_volume(client, session, "uploads")
    restored = FilesRestore(volume, want, client=client)
    restored.missing = {
        p: _instead(stored.entries.get(p))
        for p, e in want.files.items()
        if e.hardlink is None and not _stored_file(stored, p)
    }
    restored.extra = sorted(
        e.shown for p, e in stored.entries.items() if p not in want.entries and e.kind != DIR
    )
    workers = LOCAL_WORKERS if isinstance(storage, LocalStorage) else S3_WORKERS
    # The terminal's progress line: the bytes of the files to stream, out of their listed sizes.
    sizes = sum(
        e.size for p, e in want.files.items() if not e.hardlink and p not in restored.missing
    )
    try:
        with (
            progress.measuring(backup.key, sizes),
            _Helper(client, session, image, volume, read_only=False) as helper,
        ):
            argv = ["tar", "-x", "--numeric-owner", "-f", "-", "-C", MOUNT]
            untar = subprocess.Popen(
                helper.exec_argv(argv, interactive=True),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            drain = Drain(untar.stderr)
            sender = _SnapshotSender(
                storage, backup.key, want, stored, set(restored.missing), untar.stdin, workers
            )
            sender.start()
            _wait(untar, sender, timeout, f"restore of {backup.key} into volume {volume}")
            # Storage first: a short stream is what makes tar fail. Otherwise tar's own
            # message (no space left...) says more than the broken pipe the sender saw.
            if isinstance(sender.error, StorageError | IntegrityError):
                raise sender.error
            if untar.returncode != 0:
                raise FilesRestoreError(
                    f"{backup.key}: unpacking into volume {volume} failed "
                    f"(tar exit {untar.returncode}): {drain.text().strip() or 'no message'}"
                )
            if sender.error is not None:
                raise sender.error
    except BaseException:
        restored.remove()
        raise
    restored.streamed = sender.streamed
    restored.heads = sender.heads
    restored.bytes_read = sender.bytes_read
    restored.etags = sender.etags
    restored.damaged = _damaged(want, sender.streamed)
    restored.damaged.update({p: v.words for p, v in sender.etags.items() if v.ok is False})
    restored.traces = damage.trace(storage, backup, restored.unusable)
    restored.seconds = time.monotonic() - started
    return restored


def landed_files(
    client: docker.DockerClient,
    session: RunSession,
    volume: str,
    *,
    image: str,
    timeout: float,
) -> Landed:
    """Every entry of `volume` and each file's sha256, read from a read-only container."""
    with _Helper(client, session, image, volume, read_only=True) as helper:
        try:
            result = subprocess.run(
                helper.exec_argv(["bash", "-c", _LIST_SCRIPT]),
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise StepTimeout(
                f"checksums of volume {volume} did not finish within its bound of {timeout:.0f} s"
            ) from None
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip() or "no message"
        raise FilesRestoreError(f"volume {volume}: listing or hashing its files failed: {message}")
    return Landed(_parse_listing(result.stdout, volume))


def read_restored_file(
    client: docker.DockerClient,
    session: RunSession,
    volume: str,
    path: str,
    *,
    image: str,
    timeout: float,
) -> bytes:
    """The content of one file of `volume` (a path relative to its root), read from a
    read-only container; a path that leaves the volume is refused."""
    relative = PurePosixPath(path.lstrip("/"))
    if ".." in relative.parts or not relative.parts:
        raise FilesRestoreError(f"{path!r}: not a path inside the restored uploads")
    with _Helper(client, session, image, volume, read_only=True) as helper:
        try:
            result = subprocess.run(
                helper.exec_argv(["cat", "--", f"{MOUNT}/{relative}"]),
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise StepTimeout(f"reading {path} did not finish within {timeout:.0f} s") from None
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip() or "no message"
        raise FilesRestoreError(f"volume {volume}: cannot read {path}: {message}")
    return result.stdout


def check_files(
    record: DrillRecord,
    backup: Backup,
    restored: FilesRestore,
    landed: Landed,
    *,
    owner: tuple[int, int] | None = None,
    mode: int | None = None,
    skipped: Collection[str] = (),
) -> None:
    """Record the checks of a restored snapshot: the tree against the snapshot on every fact
    it records, and the copy against what was read. `owner` and `mode` are overrides asked
    for on purpose; `skipped` files were left out on purpose (damaged)."""
    want, got = restored.expected, landed.tree
    manifest = backup.manifest
    listed = manifest is not None and bool(manifest.files)
    what = "manifest" if listed else "snapshot"
    found = compare(want, got, owner=owner, mode=mode, skipped=skipped)
    if not listed:
        count = len(got.files)
        record.check(
            "files restored",
            count > 0,
            f"{count} files in the volume"
            if count
            else f"{backup.key} holds no files (an empty snapshot: the uploads directory was "
            "empty or not mounted when it was taken?)",
        )
    record.check(
        f"every file in the {what} is restored",
        not found.missing,
        f"missing: {_names(found.missing, restored.traces, restored.missing)}"
        if found.missing
        else f"{len(want.entries) - len(skipped)} of {len(want.entries) - len(skipped)} present",
    )
    record.check(
        f"restored files match the {what}'s sha256 and size"
        if listed
        else "restored entries are the snapshot's (kind, size, link target)",
        not found.altered,
        f"altered: {_names(found.altered, restored.traces)}"
        if found.altered
        else f"{len(want.files) - len(skipped)} files equal",
    )
    record.check(
        f"no file beyond the {what}",
        not found.extra and not restored.extra,
        f"extra: {_names(sorted({*found.extra, *restored.extra}))}"
        if found.extra or restored.extra
        else "none",
    )
    if listed:
        expect = len(want.files) - len(set(skipped) & set(want.files))
        record.check(
            "file count equals the manifest's",
            len(got.files) == expect,
            f"{len(got.files)} restored, the manifest lists {expect}",
        )
    facts = want.recorded()
    shown = [f for f in facts if f in ("modes", "owners", "times")]
    record.check(
        "modes, owners and times equal the snapshot's",
        not found.attributes,
        f"differ: {_names(found.attributes)}"
        if found.attributes
        else (f"{', '.join(shown)} equal" if shown else "none recorded"),
    )
    if any(e.hardlink for e in want.files.values()):
        record.check(
            "hard links restored as hard links",
            not found.hardlinks,
            f"not linked: {_names(found.hardlinks)}" if found.hardlinks else "every one",
        )
    if restored.etags:
        _check_etags(record, restored.etags)
    record.check(
        "the volume holds exactly what was read from storage",
        not (changed := _changed(restored.streamed, landed, skipped)),
        f"differ after the copy: {_names(changed)}"
        if changed
        else f"{len(restored.streamed)} files, {restored.bytes_read} bytes, checksums equal",
    )
    _notes(record, backup, restored, facts, listed)


def _check_etags(record: DrillRecord, etags: Mapping[str, Verdict]) -> None:
    """Every object's bytes against its ETag: a mismatch fails; one that cannot be checked
    is named in a note, never counted as verified."""
    differ = sorted(p for p, v in etags.items() if v.ok is False)
    unverifiable = sorted(p for p, v in etags.items() if v.ok is None)
    verified = len(etags) - len(differ) - len(unverifiable)
    record.check(
        "objects match their S3 ETag and size",
        not differ,
        f"differ: {_names([f'{p} ({etags[p].words})' for p in differ])}"
        if differ
        else f"{verified} of {len(etags)} verified"
        + (f", {len(unverifiable)} unverifiable" if unverifiable else ""),
    )
    if unverifiable:
        record.notes.append(
            "objects whose ETag cannot be checked (their bytes rest on the size and the "
            f"restore alone): {_names([f'{p} ({etags[p].words})' for p in unverifiable])}"
        )


def sample_file(
    backup: Backup, landed: Landed | Mapping[str, FileState]
) -> tuple[str, FileState] | None:
    """The first file by path, with what its manifest recorded (else what was restored)."""
    manifest = backup.manifest
    if manifest is not None and manifest.files:
        entry = min(manifest.files, key=lambda e: e.path)
        return entry.path, FileState(entry.size, entry.sha256)
    files = landed.files if isinstance(landed, Landed) else landed
    if files:
        path = min(files)
        return path, files[path]
    return None


def _notes(
    record: DrillRecord, backup: Backup, restored: FilesRestore, facts: list[str], listed: bool
) -> None:
    want = restored.expected
    record.notes.append(f"{backup.key}: compared {', '.join(facts)} (from the {want.source})")
    if backup.format == catalog.MIRROR:
        record.notes.append(
            f"{backup.key} is a flat mirror (aws s3 sync --delete of the uploads), restored "
            f"whole as one backup; taken at {backup.taken_at.isoformat()} by its "
            f"{backup.time_source}: at most that old, so the RPO verdict is conservative"
        )
    if not listed:
        why = "it has no manifest" if backup.manifest is None else "its manifest lists no files"
        tree = (
            "its tree (modes, owners, times, links, directories) was read from the stored snapshot"
            if want.source == "tree"
            else "an object store keeps no modes, owners, times, links or empty directories "
            "without a manifest: files were restored with mode 644"
        )
        record.notes.append(
            f"{backup.key}: integrity was not provable: {why}, so restored checksums and "
            f"sizes could only be compared with what was read ({len(want.files)} files); {tree}"
        )
    outside = want.outside()
    if outside:
        links = [f"{e.path} -> {e.target}" for e in outside]
        record.notes.append(
            f"links that point outside the snapshot, restored as links and never followed: "
            f"{_names(links)}"
        )
    if want.special:
        record.notes.append(
            f"fifos, sockets and devices are not part of a snapshot: {_names(want.special)}"
        )
    record.extra["tree"] = {
        "source": want.source,
        "files": len(want.files),
        "links": len(want.of_kind(LINK)),
        "directories": len(want.of_kind(DIR)),
        "hard_links": sum(1 for e in want.files.values() if e.hardlink),
        "links_outside": [e.path for e in outside],
        "damaged": {
            path: {
                "cause": restored.damaged.get(path) or restored.missing.get(path, ""),
                "shared_with": list(t.shared) if (t := restored.traces.get(path)) else [],
                "intact_in": t.intact if t else None,
            }
            for path in restored.unusable
        },
    }


def _changed(
    streamed: Mapping[str, FileState], landed: Landed, skipped: Collection[str]
) -> list[str]:
    files = landed.files
    return sorted(p for p, s in streamed.items() if p not in skipped and files.get(p) != s)


def _damaged(want: Snapshot, streamed: Mapping[str, FileState]) -> dict[str, str]:
    found = {}
    for path, state in streamed.items():
        entry = want.entries[path]
        if entry.sha256 is not None and state.sha256 != entry.sha256:
            found[path] = "checksum differs"
        elif state.size != entry.size and entry.sha256 is not None:
            found[path] = f"size {state.size}, recorded {entry.size}"
    return found


def _instead(stored: Entry | None) -> str:
    """What the storage holds where a file should be, in words."""
    if stored is None:
        return "not in the storage"
    if stored.kind == LINK:
        return f"stored as a link to {stored.target!r}, not a file: never followed"
    return "stored as a directory, not a file"


def _stored_file(stored: Snapshot, path: str) -> bool:
    entry = stored.entries.get(path)
    return entry is not None and entry.kind == FILE


def _refuse_unsafe(key: str, want: Snapshot) -> None:
    """A path that would land outside the volume, or below a link, is refused: unpacking it
    could write wherever the link points."""
    links = {p for p, e in want.entries.items() if e.kind == LINK}
    for path in want.entries:
        if path == ROOT:
            continue
        parts = path.split("/")
        if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise IntegrityError(f"{key}{path}: unsafe name in the snapshot (path traversal)")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in links:
                raise IntegrityError(
                    f"{key}{path}: listed below the link {'/'.join(parts[:i])}: unpacking it "
                    "would write where the link points; refused"
                )


def _names(
    names: list[str],
    traces: Mapping[str, Trace] | None = None,
    why: Mapping[str, str] | None = None,
) -> str:
    def said(name: str) -> str:
        path = name.split(" (", 1)[0]
        if why and path in why and why[path] != "not in the storage":
            name = f"{name} ({why[path]})"
        trace = traces.get(path) if traces else None
        return f"{name} [{trace.words()}]" if trace else name

    shown = ", ".join(said(n) for n in names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _parse_listing(output: bytes, volume: str) -> Snapshot:
    records = output.decode(errors="surrogateescape").split("\0")
    if _MARKER not in records:
        raise FilesRestoreError(f"volume {volume}: the listing of its files is incomplete")
    cut = records.index(_MARKER)
    tree = Snapshot(source="restored tree")
    listed = records[:cut]
    for header, target in zip(listed[0::2], listed[1::2], strict=False):
        kind, mode, uid, gid, size, when, inode, path = header.split(" ", 7)
        path = path or ROOT
        if kind not in _KINDS:
            tree.special.append(path)
            continue
        tree.entries[path] = Entry(
            path,
            _KINDS[kind],
            mode=None if kind == "l" else int(mode, 8),
            uid=int(uid),
            gid=int(gid),
            mtime_ns=_nanoseconds(when),
            size=int(size) if kind == "f" else 0,
            target=target if kind == "l" else None,
            inode=(0, int(inode)),
        )
    hashed = 0
    for record in filter(None, records[cut + 1 :]):
        digest, _, path = record.partition("  ")
        path = path.removeprefix("./")
        entry = tree.entries.get(path)
        if entry is None or entry.kind != FILE:
            raise FilesRestoreError(f"volume {volume}: {path} appeared while it was listed")
        tree.entries[path] = Entry(**{**entry.__dict__, "sha256": digest})
        hashed += 1
    if hashed != len(tree.files):
        raise FilesRestoreError(
            f"volume {volume}: {len(tree.files)} files listed but {hashed} hashed"
        )
    return tree


def _nanoseconds(text: str) -> int:
    """find's %T@ (seconds, a point, ten digits) in nanoseconds."""
    negative = text.startswith("-")
    seconds, _, fraction = text.lstrip("-").partition(".")
    value = int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])
    return -value if negative else value


class _SnapshotSender(threading.Thread):
    """Writes the snapshot as one tar stream into a pipe, hashing and sniffing each file."""

    def __init__(
        self,
        storage: Storage,
        root: str,
        want: Snapshot,
        stored: Snapshot,
        absent: set[str],
        sink: BinaryIO,
        workers: int,
    ) -> None:
        super().__init__(daemon=True, name=f"tar {root}")
        self.storage = storage
        self.root = root
        self.want = want
        self.stored = stored
        self.absent = absent
        self.sink = sink
        self.workers = workers
        self.now_ns = time.time_ns()
        self.streamed: dict[str, FileState] = {}
        self.heads: dict[str, filetype.Head] = {}
        self.bytes_read = 0
        self.count = progress.counter()
        self.etags: dict[str, Verdict] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with tarfile.open(
                fileobj=self.sink, mode="w|", format=tarfile.PAX_FORMAT, errors="surrogateescape"
            ) as tar:
                self._send(tar)
        except BrokenPipeError:
            self.error = FilesRestoreError(f"{self.root}: the helper container stopped reading")
        except DrillError as exc:
            self.error = exc
        except Exception as exc:
            self.error = StorageError(f"{self.root}: reading from storage failed: {exc}")
        finally:
            with contextlib.suppress(BrokenPipeError):
                self.sink.close()

    def _send(self, tar: tarfile.TarFile) -> None:
        entries = [e for e in self.want.ordered() if e.path not in self.absent]
        carriers = [e for e in entries if e.kind == FILE and not self._linked(e)]
        wanted = [Wanted(self.root + e.path, self._size(e), e.path) for e in carriers]
        fetched = iter(Prefetch(self._open, wanted, workers=self.workers))
        with contextlib.closing(fetched):
            for entry in entries:
                self._add(tar, entry, fetched)

    def _add(self, tar: tarfile.TarFile, entry: Entry, fetched: Iterator[Item]) -> None:
        if entry.kind == DIR:
            tar.addfile(self._member(entry, tarfile.DIRTYPE))
        elif entry.kind == LINK:
            member = self._member(entry, tarfile.SYMTYPE)
            member.linkname = entry.target or ""
            tar.addfile(member)
        elif self._linked(entry):
            member = self._member(entry, tarfile.LNKTYPE)
            member.linkname = entry.hardlink or ""
            tar.addfile(member)
            self.streamed[entry.path] = self.streamed[entry.hardlink or ""]
        else:
            self._add_file(tar, entry, next(fetched))

    def _linked(self, entry: Entry) -> bool:
        """Whether a file goes as a hard link to its first name (which went before it)."""
        first = self.want.entries.get(entry.hardlink or "")
        return first is not None and first.kind == FILE and first.path not in self.absent

    def _size(self, entry: Entry) -> int:
        stored = self.stored.entries.get(entry.path)
        return stored.size if stored is not None else entry.size

    def _open(self, wanted: Wanted) -> BinaryIO:
        return open_file(self.storage, wanted.key, self.stored.entries.get(wanted.name))

    def _add_file(self, tar: tarfile.TarFile, entry: Entry, item: Item) -> None:
        member = self._member(entry, tarfile.REGTYPE)
        stored = self.stored.entries.get(entry.path)
        etag = EtagCheck(stored.etag, stored.size) if stored and stored.etag else None
        if item.data is not None:
            member.size = len(item.data)
            tar.addfile(member, io.BytesIO(item.data))
            state, head = FileState(len(item.data), item.sha256), item.data[: filetype.SAMPLE]
            if etag is not None:
                etag.update(item.data)
            self.count.done += len(item.data)
        else:
            member.size = item.wanted.size
            reader = HashingReader(self._open(item.wanted))
            tap = _HeadTap(reader, etag, self.count)
            with reader:
                try:
                    tar.addfile(member, tap)
                except OSError as exc:
                    if "unexpected end of data" in str(exc):
                        raise IntegrityError(
                            f"{item.wanted.key}: object shorter than listed "
                            f"({reader.bytes_read} of {member.size} bytes)"
                        ) from None
                    raise
            state, head = FileState(reader.bytes_read, reader.sha256), tap.head
        self.streamed[entry.path] = state
        self.heads[entry.path] = filetype.sniff(head)
        if etag is not None:
            self.etags[entry.path] = etag.result()
        self.bytes_read += state.size

    def _member(self, entry: Entry, kind: bytes) -> tarfile.TarInfo:
        member = tarfile.TarInfo(entry.path)
        member.type = kind
        default = 0o755 if entry.kind == DIR else 0o644
        member.mode = entry.mode if entry.mode is not None else default
        member.uid, member.gid = entry.uid or 0, entry.gid or 0
        member.uname = member.gname = ""
        ns = entry.mtime_ns if entry.mtime_ns is not None else self._stamp(entry)
        member.mtime = max(0, ns // 1_000_000_000)
        member.pax_headers = {"mtime": pax_time(ns)}
        return member

    def _stamp(self, entry: Entry) -> int:
        stored = self.stored.stamps.get(entry.path)
        return stored if stored is not None else self.now_ns


class _HeadTap:
    """Passes reads through, keeping the first `filetype.SAMPLE` bytes for the plausibility
    checks: the head of every file is seen on the way to the volume, never read twice."""

    def __init__(
        self, stream: HashingReader, etag: EtagCheck | None, count: progress.Counter
    ) -> None:
        self.stream = stream
        self.etag = etag
        self.count = count
        self.head = b""

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.count.done += len(data)
        if self.etag is not None:
            self.etag.update(data)
        if len(self.head) < filetype.SAMPLE:
            self.head += data[: filetype.SAMPLE - len(self.head)]
        return data


class _Helper:
    """A labelled, network-less container that holds the volume at MOUNT while we exec in it."""

    def __init__(
        self,
        client: docker.DockerClient,
        session: RunSession,
        image: str,
        volume: str,
        *,
        read_only: bool,
    ) -> None:
        role = "files-verify" if read_only else "files-restore"
        try:
            self.container = client.containers.run(
                image,
                entrypoint=["sleep", "infinity"],
                command=[],
                detach=True,
                user="root",
                network_mode="none",
                labels=session.labels(role),
                volumes={volume: {"bind": MOUNT, "mode": "ro" if read_only else "rw"}},
            )
        except docker.errors.DockerException as exc:
            raise FilesRestoreError(
                f"cannot start a {role} helper container from {image} over volume {volume}: "
                f"{str(exc).strip() or type(exc).__name__}"
            ) from None

    def exec_argv(self, argv: list[str], interactive: bool = False) -> list[str]:
        """The `docker exec` command line running `argv` in the helper."""
        return ["docker", "exec", *(["-i"] if interactive else []), self.container.id, *argv]

    def __enter__(self) -> _Helper:
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.container.remove(force=True)


def _wait(proc: subprocess.Popen, thread: threading.Thread, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    try:
        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        thread.join(timeout=max(0.1, deadline - time.monotonic()))
        if thread.is_alive():
            raise subprocess.TimeoutExpired(what, timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise StepTimeout(f"{what} did not finish within its bound of {timeout:.0f} s") from None


def _remove_volume(client: docker.DockerClient, name: str) -> None:
    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
        client.volumes.get(name).remove(force=True)
