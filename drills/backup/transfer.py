"""Moving a backup into the storage: its objects first, its manifest last and only once.

A manifest in the storage means its backup is complete, so it goes last, with a conditional
create: a manifest already there (another run's) is never replaced, and the clash names
that run. Files named in `LAST` (a directory dump's ``toc.dat``, a base backup's
``backup_manifest``) are uploaded after the others, so an interrupted upload does not look
like a complete backup either.

Example::

    count = send_backup(storage, "database/db_20250115_020000.dir/", Path("/b/db.dir"))
    store_manifest(storage, "database/db_20250115_020000.dir/", manifest)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from drills.backup.common import discard
from drills.backup.marks import manifest_bytes
from drills.config.errors import DrillError, StorageError
from drills.storage import LocalStorage, ObjectExists, Storage
from drills.storage.manifest import Manifest, manifest_key

UPLOAD_THREADS = 8
LAST = ("toc.dat", "backup_manifest")


def send_backup(storage: Storage, key: str, local: Path) -> int:
    """Upload a backup file, or every file of a backup directory; the count of objects."""
    if local.is_dir():
        return upload_tree(storage, key, local, last=LAST)
    storage.put_file(key, local)
    return 1


def store_manifest(storage: Storage, key: str, manifest: Manifest) -> str:
    """Create the manifest of `key` in the storage, never over another run's; its tag."""
    mkey = manifest_key(key)
    try:
        return storage.create(mkey, manifest_bytes(manifest))
    except ObjectExists:
        where = f"{storage.url.rstrip('/')}/{mkey}"
        raise StorageError(f"{where}: {_other_run(storage, mkey)}") from None


def _other_run(storage: Storage, mkey: str) -> str:
    try:
        other = Manifest.from_json(storage.read_bytes(mkey), source=mkey).extra.get("run") or {}
    except DrillError:
        other = {}
    who = (
        f"run {other.get('id')} on host {other.get('host')} (pid {other.get('pid')})"
        if other
        else "another writer"
    )
    return f"stored already by {who}; this run's backup under that name was not reported"


def upload_tree(storage: Storage, key: str, root: Path, last: tuple[str, ...] = ()) -> int:
    """Upload every regular file under `root` to `key` + relative path; `last` names go last."""
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
    from drills.storage.s3 import S3Storage

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
