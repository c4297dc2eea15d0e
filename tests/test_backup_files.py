"""`drill backup files`: hard-linked dated snapshots with manifests, synced to real storage
(moto S3 over HTTP, a file:// directory), with rsync and with the Python fallback."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drills.backup import Destination, backup_files, destination
from drills.backup.common import stamp
from drills.backup.marks import manifest_bytes, mark
from drills.config import load_config
from drills.config.errors import DrillError
from drills.runtime.estate import generated_uploads
from drills.storage import LocalStorage
from drills.storage.catalog import latest, list_backups
from drills.storage.manifest import Manifest, manifest_key, sha256_file
from drills.storage.s3 import S3Storage
from drills.storage.snapshot import expected, read_tree
from fixtures.upload_trees import every_shape


@pytest.fixture
def uploads(tmp_path: Path) -> Path:
    """An uploads directory of generated images and documents, one of them private."""
    root = tmp_path / "uploads"
    for rel, data in generated_uploads(12).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "documents" / "file00001.pdf").chmod(0o600)
    return root


def _change(uploads: Path) -> tuple[str, str, str]:
    """Modify one file, add one, delete one; return their relative paths."""
    changed, added, deleted = "avatars/file00000.png", "receipts/new.jpg", "avatars/file00003.png"
    (uploads / changed).write_bytes(b"a new avatar")
    (uploads / added).write_bytes(b"a new receipt")
    (uploads / deleted).unlink()
    return changed, added, deleted


def _files_of(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("use_rsync", [True, False], ids=["rsync", "python"])
def test_snapshot_hard_links_unchanged_files_and_its_manifest_matches(
    uploads: Path, tmp_path: Path, use_rsync: bool
):
    local = tmp_path / "local"
    dest = Destination("files/", local_dir=local)
    first = backup_files(dest, uploads, use_rsync=use_rsync)
    changed, added, deleted = _change(uploads)

    second = backup_files(dest, uploads, use_rsync=use_rsync)

    one, two = first.local_path, second.local_path
    assert (one.parent, two.parent) == (local / "files", local / "files")
    assert one.name < two.name
    assert os.readlink(local / "files" / "current") == two.name
    assert _files_of(two) == _files_of(uploads)
    assert deleted not in _files_of(two)
    assert deleted in _files_of(one)
    for rel in _files_of(two) - {changed, added}:
        assert (two / rel).stat().st_ino == (one / rel).stat().st_ino, rel
    assert (two / changed).stat().st_ino != (one / changed).stat().st_ino
    assert (two / changed).read_bytes() == b"a new avatar"
    manifest = Manifest.from_json((local / "files" / f"{two.name}.manifest.json").read_text())
    assert manifest == second.manifest
    assert manifest.kind == "files"
    assert {f.path for f in manifest.files} == _files_of(uploads)
    for entry in manifest.files:
        path = two / entry.path
        assert entry.sha256 == sha256_file(path) == sha256_file(uploads / entry.path)
        assert entry.size == path.stat().st_size
        assert entry.mode == stat.S_IMODE((uploads / entry.path).stat().st_mode)
    assert {f.mode for f in manifest.files} == {0o644, 0o600}
    assert manifest.bytes == sum(f.size for f in manifest.files)


def test_sync_uploads_only_changed_files_and_each_snapshot_is_complete(
    uploads: Path, tmp_path: Path, s3_bucket: S3Storage
):
    dest = Destination("files/", storage=s3_bucket, local_dir=tmp_path / "local")
    first = backup_files(dest, uploads)
    changed, added, _ = _change(uploads)

    second = backup_files(dest, uploads)

    assert (first.uploaded, first.copied) == (12 + 1, 0)  # every file, then the manifest
    assert (second.uploaded, second.copied) == (2 + 1, 10)  # changed and added; 10 copied
    for result in (first, second):
        stored = {info.key[len(result.key) :]: info for info in s3_bucket.list(result.key)}
        assert set(stored) == {f.path for f in result.manifest.files}
        for entry in result.manifest.files:
            body = s3_bucket.read_bytes(result.key + entry.path)
            assert (len(body), _sha(body)) == (entry.size, entry.sha256)
    assert s3_bucket.read_bytes(second.key + changed) == b"a new avatar"
    assert s3_bucket.read_bytes(second.key + added) == b"a new receipt"
    found = latest(list_backups(s3_bucket, "files"))
    assert (found.key, found.time_source) == (second.key, "manifest")
    assert found.manifest == second.manifest


def test_unreadable_previous_manifest_means_upload_everything(
    uploads: Path, tmp_path: Path, local_storage: LocalStorage
):
    dest = Destination("files/", storage=local_storage, local_dir=tmp_path / "local")
    first = backup_files(dest, uploads)
    local_storage.put_bytes(manifest_key(first.key), b"{not json")

    second = backup_files(dest, uploads)

    assert (second.uploaded, second.copied) == (12 + 1, 0)
    assert _files_of(local_storage.root / second.key) == _files_of(uploads)


def test_file_storage_without_local_dir_keeps_snapshots_in_place(
    uploads: Path, local_storage: LocalStorage, tmp_path: Path
):
    config = tmp_path / "drill.toml"
    config.write_text(f'[storage]\nurl = "{local_storage.url}"\n')
    dest = destination(load_config(config, env={}), "files")

    result = backup_files(dest, uploads)

    assert (result.uploaded, result.stored_at) == (0, local_storage.url)
    [backup] = list_backups(local_storage, "files")
    assert backup.key == result.key
    assert backup.manifest == result.manifest


def test_pruning_removes_only_our_old_snapshots_and_only_when_asked(uploads: Path, tmp_path: Path):
    files = tmp_path / "local" / "files"
    old = stamp(datetime.now(UTC) - timedelta(days=40))
    seed = stamp(datetime.now(UTC) - timedelta(days=50))
    for snapshot in (old, seed):
        (files / snapshot / "avatars").mkdir(parents=True)
        (files / snapshot / "avatars" / "x.png").write_bytes(b"old")
    ours = Manifest("files", datetime.now(UTC) - timedelta(days=40), datetime.now(UTC))
    (files / f"{old}.manifest.json").write_bytes(
        manifest_bytes(mark(ours, estate="estate", run={"id": "old"}))
    )
    dest = Destination("files/", local_dir=tmp_path / "local", retention_days=30, keep_min=1)

    kept = backup_files(dest, uploads)
    result = backup_files(dataclasses.replace(dest, prune=True), uploads)

    assert kept.pruned == ()
    assert result.pruned == (f"{(tmp_path / 'local').as_uri()}/files/{old}/",)
    assert sorted(p.name for p in files.iterdir() if not p.name.startswith(".")) == sorted(
        [
            "current",
            kept.local_path.name,
            f"{kept.local_path.name}.manifest.json",
            result.local_path.name,
            f"{result.local_path.name}.manifest.json",
            seed,  # the seed scripts' snapshot: no manifest of ours, never pruned
        ]
    )


def test_empty_or_missing_source_is_a_named_error(tmp_path: Path):
    empty = tmp_path / "uploads"
    empty.mkdir()
    dest = Destination("files/", local_dir=tmp_path / "local")

    with pytest.raises(DrillError, match=r"uploads directory is empty \(not mounted\?\)"):
        backup_files(dest, empty)
    with pytest.raises(DrillError, match="missing: no such directory; nothing backed up"):
        backup_files(dest, tmp_path / "missing")
    assert not (tmp_path / "local").exists()


def test_cli_backup_files_end_to_end(uploads: Path, tmp_path: Path):
    store = tmp_path / "store"
    store.mkdir()
    config = tmp_path / "drill.toml"
    config.write_text(
        f'[storage]\nurl = "{store.as_uri()}"\n\n[files]\nsource_dir = "{uploads}"\n\n'
        f'[backup]\nlocal_dir = "{tmp_path / "local"}"\n'
    )

    done = subprocess.run(
        [sys.executable, "-m", "drills.cli", "backup", "files", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("files: files/")
    [backup] = list_backups(LocalStorage(store), "files")
    assert _files_of(store / backup.key) == _files_of(uploads)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_manifest_records_the_tree_the_same_with_rsync_and_python(tmp_path: Path):
    """Links as links (one to a host file, never read), empty directories, hard links, modes,
    owners and nanosecond times: the manifest records the uploads directory exactly, whichever
    copier made the snapshot, and each snapshot holds the same tree."""
    source = every_shape(tmp_path / "uploads", tmp_path / "host.txt")
    made = {
        copier: backup_files(
            Destination("files/", local_dir=tmp_path / copier), source, use_rsync=copier == "rsync"
        )
        for copier in ("rsync", "python")
    }

    want = read_tree(source)
    for copier, result in made.items():
        manifest = result.manifest
        recorded = expected(read_tree(result.local_path), manifest)
        assert recorded.source == "manifest", copier
        assert set(recorded.entries) == set(want.entries), copier
        for path, entry in want.entries.items():
            got = recorded.entries[path]
            facts = (got.kind, got.uid, got.gid, got.mtime_ns, got.target, got.hardlink)
            assert facts == (
                entry.kind, entry.uid, entry.gid, entry.mtime_ns, entry.target, entry.hardlink
            ), (copier, path)  # fmt: skip
            assert entry.kind == "link" or got.mode == entry.mode, (copier, path)
        snapshot = read_tree(result.local_path)
        assert {p: (e.kind, e.mode, e.mtime_ns, e.target) for p, e in snapshot.entries.items()} == {
            p: (e.kind, e.mode, e.mtime_ns, e.target) for p, e in want.entries.items()
        }, copier
        assert snapshot.entries["photos/same-inode.jpg"].hardlink == "photos/original.jpg"
    assert made["rsync"].manifest.links == made["python"].manifest.links
    assert made["rsync"].manifest.directories == made["python"].manifest.directories


@pytest.mark.parametrize("use_rsync", [True, False], ids=["rsync", "python"])
def test_a_file_rewritten_within_the_same_second_is_not_the_old_one(tmp_path: Path, use_rsync):
    """Same size, a time in the same second: rsync compares whole seconds unless told
    otherwise, and would hard-link the old bytes into the new snapshot."""
    source = tmp_path / "uploads"
    source.mkdir()
    upload = source / "avatar.png"
    upload.write_bytes(b"aaaa")
    when = 1_700_000_000_100_000_000
    os.utime(upload, ns=(when, when))
    dest = Destination("files/", local_dir=tmp_path / "local")
    backup_files(dest, source, use_rsync=use_rsync)
    upload.write_bytes(b"bbbb")
    os.utime(upload, ns=(when + 1_000, when + 1_000))

    second = backup_files(dest, source, use_rsync=use_rsync)

    assert (second.local_path / "avatar.png").read_bytes() == b"bbbb"
    assert second.manifest.files[0].sha256 == _sha(b"bbbb")
