"""One producer run: everything around the backup itself, in the order that keeps data safe.

1. Preflight: the storage answers, the bucket exists, the credentials work, all before the
   producer's own work starts (a dump of hours is never made only to be thrown away). With
   a local directory a storage that fails this check does not stop the backup: the local
   copy is made, the run fails naming the storage's problem, and the next run uploads it.
2. The series' lock in the store (`drills.backup.lock`): one writer at a time, a clash
   names the other run.
3. Leftovers of unfinished runs cleaned (`drills.backup.leftovers`), local copies an
   earlier run could not upload noted (`drills.backup.catchup`).
4. The producer works: `name()` gives a name nobody has, `previous()` the backup to judge a
   new one against, `check_space()` whether the staging directory can hold it.
5. `finish()`: the manifest (marked ours, and suspect if it is), the upload, every stored
   object checked against what was written (size and ETag) before and after the manifest's
   conditional create; then the earlier local copies uploaded; then pruning, unless the new
   backup is suspect.
6. On failure, this run's partial uploads are aborted and removed; when the store is down,
   the lock stays with what it was writing, for the next run to clean.

Example::

    with Run(dest, Series("config", "config/", "config_")) as run:
        with dest.workdir() as work:
            name = run.name(utcnow(), ".tar.gz")
            ...  # write work / name
            result = run.finish(work / name, manifest, etags={"": digests.etag})
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from drills.backup import catchup, leftovers, retention
from drills.backup.common import (
    BackupResult,
    Destination,
    human_size,
    os_error,
    stamp,
    utcnow,
    write_manifest,
)
from drills.backup.lock import StoreLock
from drills.backup.marks import mark
from drills.backup.series import Series, Stored, list_series
from drills.backup.transfer import send_backup, store_manifest
from drills.backup.verify import Expected, verify_stored
from drills.config.errors import DrillError, StorageError
from drills.storage import LocalStorage, Storage
from drills.storage.manifest import SUFFIX, Manifest, manifest_key
from drills.storage.s3 import S3Storage

log = logging.getLogger(__name__)

SPACE_MARGIN = 1.2
"""Room a new backup needs in its staging directory, against the previous one's size."""

Send = Callable[[Storage, str, Path], tuple[int, int]]
"""Upload a backup's objects (not its manifest): (objects uploaded, objects copied)."""


def _send(storage: Storage, key: str, local: Path) -> tuple[int, int]:
    return send_backup(storage, key, local), 0


class Run:
    """The frame of one producer run; use it as a context manager around the work."""

    def __init__(self, dest: Destination, series: Series, *, send: Send = _send) -> None:
        self.dest = dest
        self.series = series
        self.send = send
        self.run_id = uuid.uuid4().hex[:12]
        self.key: str | None = None
        self.stored: list[Stored] = []
        self.local: list[Stored] = []
        self.cleaned: list[str] = []
        self.pending: list[Stored] = []
        self.store_problem: str | None = None
        """Why the storage cannot be used this run (the local copy is made all the same)."""
        self._uploading = False
        self._clash = False
        self.home: Storage = dest.storage or self._local_store()
        self.lock = StoreLock(self.home, series.lock_key, self.run_id)

    def _local_store(self) -> LocalStorage:
        assert self.dest.local_dir is not None, "a destination has a storage or a local dir"
        return LocalStorage(self.dest.local_dir)

    def __enter__(self) -> Run:
        now = utcnow()
        self.dest.make_kind_dir()
        if self.dest.storage is not None:
            try:
                self.dest.storage.check()
            except StorageError as exc:
                if self.dest.kind_dir is None or self.dest.in_place:
                    raise StorageError(
                        f"{exc}; checked before the backup: nothing was made"
                    ) from None
                log.info("%s; making the local copy only", exc)
                self.store_problem = str(exc)
                self.home = self._local_store()
                self.lock = StoreLock(self.home, self.series.lock_key, self.run_id)
        stale = self.lock.acquire()
        try:
            self.stored = list_series(self.home, self.series)
            notes = []
            if stale is not None:
                notes.append(f"took over the lock of {stale.describe()}: {self.lock.took_over}")
            cleaned, removed = leftovers.clean_store(
                self.home, self.series, self.stored, stale, now
            )
            notes += cleaned
            self.stored = [b for b in self.stored if b.key not in removed]
            if self.dest.kind_dir is not None:
                notes += leftovers.clean_local(self.dest.kind_dir, self.series, stale, now)
            self.cleaned = notes
            if self._separate_local():
                assert self.dest.local_dir is not None
                self.local = list_series(LocalStorage(self.dest.local_dir), self.series)
                self.pending = catchup.pending(
                    self.local, self.stored, self.dest.estate, self.dest.retention_days, now
                )
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        keep = False
        if exc is not None and self._uploading and not self._clash:
            keep = not self._remove_own_upload()
        self.lock.release(keep=keep)
        if keep and isinstance(exc, DrillError):
            raise type(exc)(
                f"{exc}; what it uploaded stays in the store until the next run cleans it"
            ) from None

    def name(self, when: datetime, ext: str = "", directory: bool = False) -> str:
        """A name for the new backup: ``<stem><stamp><ext>``, with a unique suffix when that
        second's name is taken (here, in the store, or in the local directory)."""
        base = f"{self.series.stem}{stamp(when)}"
        name = base + ext
        if self._taken(name):
            name = f"{base}_{self.run_id[:6]}{ext}"
            if self._taken(name):
                raise DrillError(f"{self.series.prefix}{name}: taken already; not overwriting it")
        self.key = self.series.prefix + name + ("/" if directory else "")
        self.lock.record([self.key])
        return name

    def previous(self, compression: str | None = None) -> Stored | None:
        """The newest good earlier backup of the series (with that compression), if any."""
        candidates = [
            b
            for b in self.stored + self.local
            if b.manifest is not None
            and not (b.suspect or b.problem)
            and compression in (None, b.manifest.compression)
        ]
        return max(candidates, key=lambda b: (b.taken_at, b.key), default=None)

    def check_space(self, directory: Path, compression: str | None = None) -> None:
        """Fail before the work when `directory` has less room than the previous backup
        took (plus a margin)."""
        previous = self.previous(compression)
        if previous is None:
            return
        try:
            free = shutil.disk_usage(directory).free
        except OSError as exc:
            raise os_error(directory, exc) from None
        need = int(previous.size * SPACE_MARGIN)
        if free < need:
            raise DrillError(
                f"{directory}: {human_size(free)} free, the previous backup {previous.key} "
                f"took {human_size(previous.size)}: no room for the next one; checked before "
                "the backup: nothing was made (free space, or set [backup] staging_dir)"
            )

    def mark(self, manifest: Manifest, suspect: list[str] | None = None) -> Manifest:
        """`manifest` marked as ours (estate, this run) and suspect with `suspect` causes."""
        run = {"id": self.run_id, "host": socket.gethostname(), "pid": os.getpid()}
        return mark(manifest, estate=self.dest.estate, run=run, suspect=suspect)

    def finish(
        self, final: Path, manifest: Manifest, etags: dict[str, str | None] | None = None
    ) -> BackupResult:
        """Write the manifest beside `final`, store and verify the backup, upload earlier
        local copies, prune; the run's result.

        `etags` are the S3 ETags of what was written: by relative path for a directory
        backup, under "" for a file.
        """
        assert self.key is not None, "name() first"
        key = self.key
        write_manifest(final.parent / f"{final.name}{SUFFIX}", manifest)
        if self.store_problem is not None:
            raise StorageError(
                f"{self.store_problem}; local copy kept at {final} (the next run uploads it)"
            )
        storage = self.dest.storage
        uploaded = copied = 0
        if storage is not None:
            expected = _expected(key, manifest, etags or {}, final)
            if not self.dest.in_place:
                uploaded, copied = self._upload(storage, key, final, manifest, expected)
            verify_stored(storage, key, expected)
        self.lock.confirm()
        caught_up, problems = self._catch_up()
        pruned, would, note = self._prune(manifest)
        return BackupResult(
            manifest.kind,
            key,
            manifest,
            self.dest.local_copy(final),
            storage.url if storage is not None else None,
            uploaded,
            copied,
            pruned=pruned,
            would_prune=would,
            prune_note=note,
            suspect=tuple(manifest.extra.get("suspect") or ()),
            cleaned=tuple(self.cleaned),
            caught_up=caught_up,
            problems=problems,
        )

    def _upload(
        self, storage: Storage, key: str, local: Path, manifest: Manifest, expected: Expected
    ) -> tuple[int, int]:
        self._uploading = True
        try:
            uploaded, copied = self.send(storage, key, local)
            self._store_manifest(storage, key, manifest, expected)
        except DrillError as exc:
            kept = self.dest.local_copy(local)
            if kept is None:
                raise
            raise type(exc)(f"{exc}; local copy kept at {kept} (the next run uploads it)") from None
        self._uploading = False
        return uploaded + 1, copied

    def _store_manifest(
        self, storage: Storage, key: str, manifest: Manifest, expected: Expected
    ) -> None:
        """Verify, create the manifest, verify again (nobody replaced the objects meanwhile).

        After a failure here what the store holds under `key` may be another writer's: it
        is left alone, and a manifest of ours that would vouch for it is removed.
        """
        try:
            verify_stored(storage, key, expected)
            tag = store_manifest(storage, key, manifest)
        except DrillError:
            self._clash = True
            raise
        try:
            verify_stored(storage, key, expected)
        except DrillError:
            self._clash = True
            with contextlib.suppress(StorageError):
                storage.delete(manifest_key(key), tag)
            raise

    def _remove_own_upload(self) -> bool:
        """Abort this run's multipart uploads and remove its objects; False if the store
        could not be reached (the lock then keeps the key for the next run)."""
        storage, key = self.dest.storage, self.key
        assert storage is not None
        assert key is not None
        try:
            if isinstance(storage, S3Storage):
                for upload in storage.list_uploads(key):
                    storage.abort_upload(upload)
            mine = [info.key for info in storage.list(key) if info.key != manifest_key(key)]
            if key.endswith("/") or mine == [key]:
                storage.delete_all(mine)
            storage.delete(manifest_key(key))
        except StorageError as exc:
            log.info("%s: partial upload not removed: %s", key, exc)
            return False
        return True

    def _catch_up(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        storage, root = self.dest.storage, self.dest.local_dir
        done, problems = [], []
        for backup in self.pending:
            assert storage is not None
            assert root is not None
            assert backup.manifest is not None
            try:
                expected = catchup.check_local(root, backup)
                self.lock.record([backup.key])
                self.send(storage, backup.key, root / backup.key)
                self._store_manifest(storage, backup.key, backup.manifest, expected)
                done.append(backup.key)
            except DrillError as exc:
                problems.append(f"{backup.key}: a local copy of an earlier run not uploaded: {exc}")
        return tuple(done), tuple(problems)

    def _prune(self, manifest: Manifest) -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
        rules = retention.Retention(
            self.dest.prune, self.dest.retention_days, self.dest.keep_min, self.dest.dry_run_prune
        )
        if not rules.active:
            return (), (), None
        if manifest.extra.get("suspect"):
            return (), (), "this run's backup is suspect: nothing pruned"
        stores = [self.home]
        if self._separate_local():
            assert self.dest.local_dir is not None
            stores.append(LocalStorage(self.dest.local_dir))
        pruned, would, notes = [], [], []
        for store in stores:
            doomed, why = retention.select(
                list_series(store, self.series), self.dest.estate, rules, utcnow()
            )
            if why:
                notes.append(f"{store.url}: {why}")
            for backup in doomed:
                where = f"{store.url.rstrip('/')}/{backup.key}"
                if rules.dry_run:
                    would.append(where)
                else:
                    retention.remove(store, backup)
                    pruned.append(where)
        return tuple(pruned), tuple(would), "; ".join(notes) or None

    def _separate_local(self) -> bool:
        return (
            self.dest.storage is not None
            and self.dest.local_dir is not None
            and not self.dest.in_place
            and self.store_problem is None
        )

    def _taken(self, name: str) -> bool:
        kind_dir = self.dest.kind_dir
        if kind_dir is not None:
            path = kind_dir / name
            if any(os.path.lexists(f"{path}{end}") for end in ("", ".partial", SUFFIX)):
                return True
        return any(True for _ in self.home.list(self.series.prefix + name))


def _expected(key: str, manifest: Manifest, etags: dict[str, str | None], final: Path) -> Expected:
    """What the store must hold for the backup `key`: sizes from the manifest, ETags given."""
    if not key.endswith("/"):
        size = manifest.bytes if manifest.bytes is not None else final.stat().st_size
        return {key: (size, etags.get(""))}
    return {key + f.path: (f.size, etags.get(f.path)) for f in manifest.files}
