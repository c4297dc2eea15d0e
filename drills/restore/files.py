"""Restore engine for uploads: a files snapshot from storage into a fresh Docker volume.

The same engine serves drills and real recoveries. A tar stream is built on the fly from the
snapshot's objects (each hashed as it is read, no temporary copy) and unpacked by `tar -x` in a
labelled helper container that owns the new volume. What landed is then verified from a second,
read-only container over the volume: `find -type f` and `sha256sum` give every file's path, size
and checksum, compared with the manifest: missing, altered and extra files are named.

    >>> restored = restore_files(client, session, storage, backup, image=img, timeout=600)
    >>> landed = landed_files(client, session, restored.volume, image=img, timeout=600)
    >>> check_files(record, backup, restored, landed)          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass, field
from typing import BinaryIO

import docker
import docker.errors

from drills.config.clock import StepTimeout
from drills.config.errors import DrillError, IntegrityError, StorageError
from drills.record import DrillRecord
from drills.restore import filetype
from drills.restore.common import Drain
from drills.runtime.labels import RunSession
from drills.runtime.network import create_volume
from drills.storage import ObjectInfo, Storage
from drills.storage.catalog import Backup
from drills.storage.manifest import HashingReader, Manifest

MOUNT = "/restore"
SHOWN = 10  # names listed in a check's detail before "and N more"

# NUL-separated "size path" records, a marker record, then sha256sum's NUL-separated
# "digest  ./path" records (-z: names are not escaped). A size record starts with a digit, so
# it is never the marker. pipefail: a failed find or sha256sum fails the script instead of
# yielding a short listing.
_MARKER = "#sha256"
_LIST_SCRIPT = (
    f"set -euo pipefail; cd {MOUNT}; "
    "find . -type f -printf '%s %P\\0'; "
    f"printf '{_MARKER}\\0'; "
    "find . -type f -print0 | xargs -0 -r sha256sum -z --"
)


class FilesRestoreError(DrillError):
    """Copying a snapshot into its volume failed (the helper's tar or the engine said why)."""


@dataclass(frozen=True)
class FileState:
    """One file as read from storage or as found in the volume."""

    size: int
    sha256: str


@dataclass
class FilesRestore:
    """A snapshot restored into a volume: what was streamed, and where it went."""

    volume: str
    streamed: dict[str, FileState] = field(default_factory=dict)
    heads: dict[str, filetype.Head] = field(default_factory=dict)
    """What each file's first bytes say (sniffed as they streamed by: no extra read)."""
    bytes_read: int = 0
    seconds: float = 0.0
    method: str = f"storage -> tar stream -> tar -x in a helper container ({MOUNT})"
    client: docker.DockerClient | None = field(default=None, repr=False)

    def remove(self) -> None:
        """Remove the volume (best effort: the run's sweep takes what is left)."""
        if self.client is not None:
            _remove_volume(self.client, self.volume)


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
    the restore fails; on success the caller owns it (`FilesRestore.remove`).
    """
    started = time.monotonic()
    manifest = backup.manifest
    modes = {entry.path: entry.mode for entry in manifest.files} if manifest else {}
    objects = [info for info in storage.list(backup.key) if not info.key.endswith("/")]
    if not objects:
        raise StorageError(f"{backup.key}: the snapshot holds no objects")
    volume = create_volume(client, session, "uploads")
    restored = FilesRestore(volume, client=client)
    try:
        with _Helper(client, session, image, volume, read_only=False) as helper:
            untar = subprocess.Popen(
                helper.exec_argv(["tar", "-x", "-f", "-", "-C", MOUNT], interactive=True),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            drain = Drain(untar.stderr)
            sender = _SnapshotSender(storage, backup.key, objects, modes, untar.stdin)
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
    restored.seconds = time.monotonic() - started
    return restored


def landed_files(
    client: docker.DockerClient,
    session: RunSession,
    volume: str,
    *,
    image: str,
    timeout: float,
) -> dict[str, FileState]:
    """Every regular file in `volume` (path -> size, sha256), read from a read-only container."""
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
    return _parse_listing(result.stdout, volume)


def check_files(
    record: DrillRecord, backup: Backup, restored: FilesRestore, landed: dict[str, FileState]
) -> None:
    """Record the checks of a restored snapshot: against the manifest, and the copy itself."""
    manifest = backup.manifest
    if manifest is not None and manifest.files:
        _against_manifest(record, manifest, landed)
    else:
        record.check(
            "files restored",
            len(landed) > 0,
            f"{len(landed)} files in the volume" if landed else "the restored volume is empty",
        )
        why = "it has no manifest" if manifest is None else "its manifest lists no files"
        record.notes.append(
            f"{backup.key}: integrity was not provable: {why}, so restored checksums, sizes "
            f"and the file count could not be compared ({len(landed)} files restored)"
        )
    changed = sorted(path for path, state in restored.streamed.items() if landed.get(path) != state)
    record.check(
        "the volume holds exactly what was read from storage",
        not changed,
        f"differ after the copy: {_names(changed)}"
        if changed
        else f"{len(restored.streamed)} files, {restored.bytes_read} bytes, checksums equal",
    )


def sample_file(backup: Backup, landed: dict[str, FileState]) -> tuple[str, FileState] | None:
    """The first file by path, with what its manifest recorded (else what was restored)."""
    manifest = backup.manifest
    if manifest is not None and manifest.files:
        entry = min(manifest.files, key=lambda e: e.path)
        return entry.path, FileState(entry.size, entry.sha256)
    if landed:
        path = min(landed)
        return path, landed[path]
    return None


def _against_manifest(
    record: DrillRecord, manifest: Manifest, landed: dict[str, FileState]
) -> None:
    expected = {entry.path: entry for entry in manifest.files}
    missing = sorted(set(expected) - set(landed))
    extra = sorted(set(landed) - set(expected))
    altered = []
    for path in sorted(set(expected) & set(landed)):
        entry, state = expected[path], landed[path]
        if state.sha256 != entry.sha256.lower():
            altered.append(f"{path} (checksum differs)")
        elif state.size != entry.size:
            altered.append(f"{path} (size {state.size}, manifest {entry.size})")
    record.check(
        "every file in the manifest is restored",
        not missing,
        f"missing: {_names(missing)}" if missing else f"{len(expected)} of {len(expected)} present",
    )
    record.check(
        "restored files match the manifest's sha256 and size",
        not altered,
        f"altered: {_names(altered)}" if altered else f"{len(expected) - len(missing)} files equal",
    )
    record.check(
        "no file beyond the manifest",
        not extra,
        f"extra: {_names(extra)}" if extra else "none",
    )
    record.check(
        "file count equals the manifest's",
        len(landed) == len(expected),
        f"{len(landed)} restored, the manifest lists {len(expected)}",
    )


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _parse_listing(output: bytes, volume: str) -> dict[str, FileState]:
    records = output.decode(errors="surrogateescape").split("\0")
    if _MARKER not in records:
        raise FilesRestoreError(f"volume {volume}: the listing of its files is incomplete")
    cut = records.index(_MARKER)
    sizes: dict[str, int] = {}
    for record in filter(None, records[:cut]):
        size, _, path = record.partition(" ")
        sizes[path] = int(size)
    found: dict[str, FileState] = {}
    for record in filter(None, records[cut + 1 :]):
        digest, _, path = record.partition("  ")
        path = path.removeprefix("./")
        if path not in sizes:
            raise FilesRestoreError(f"volume {volume}: {path} appeared while it was listed")
        found[path] = FileState(sizes[path], digest)
    if len(found) != len(sizes):
        raise FilesRestoreError(
            f"volume {volume}: {len(sizes)} files listed but {len(found)} hashed"
        )
    return found


class _SnapshotSender(threading.Thread):
    """Writes the snapshot's objects as one tar stream into a pipe, hashing each object."""

    def __init__(
        self,
        storage: Storage,
        root: str,
        objects: list[ObjectInfo],
        modes: dict[str, int],
        sink: BinaryIO,
    ) -> None:
        super().__init__(daemon=True, name=f"tar {root}")
        self.storage = storage
        self.root = root
        self.objects = objects
        self.modes = modes
        self.sink = sink
        self.streamed: dict[str, FileState] = {}
        self.heads: dict[str, filetype.Head] = {}
        self.bytes_read = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with tarfile.open(fileobj=self.sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for info in self.objects:
                    self._add(tar, info)
        except BrokenPipeError:
            self.error = FilesRestoreError(f"{self.root}: the helper container stopped reading")
        except DrillError as exc:
            self.error = exc
        except Exception as exc:
            self.error = StorageError(f"{self.root}: reading from storage failed: {exc}")
        finally:
            with contextlib.suppress(BrokenPipeError):
                self.sink.close()

    def _add(self, tar: tarfile.TarFile, info: ObjectInfo) -> None:
        rel = info.key[len(self.root) :]
        if rel.startswith("/") or ".." in rel.split("/"):
            raise IntegrityError(f"{info.key}: unsafe name in the snapshot (path traversal)")
        member = tarfile.TarInfo(rel)
        member.size = info.size
        member.mode = self.modes.get(rel, 0o644)
        member.mtime = int(info.modified.timestamp())
        reader = HashingReader(self.storage.open(info.key))
        tap = _HeadTap(reader)
        with reader:
            try:
                tar.addfile(member, tap)
            except OSError as exc:
                if "unexpected end of data" in str(exc):
                    raise IntegrityError(
                        f"{info.key}: object shorter than listed "
                        f"({reader.bytes_read} of {info.size} bytes)"
                    ) from None
                raise
        self.streamed[rel] = FileState(reader.bytes_read, reader.sha256)
        self.heads[rel] = filetype.sniff(tap.head)
        self.bytes_read += reader.bytes_read


class _HeadTap:
    """Passes reads through, keeping the first `filetype.SAMPLE` bytes for the plausibility
    checks: the head of every file is seen on the way to the volume, never read twice."""

    def __init__(self, stream: HashingReader) -> None:
        self.stream = stream
        self.head = b""

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
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
