"""One definition of a snapshot (`drills.storage.snapshot`): what a tree read in place holds,
what a manifest records of it, what an older harness still reads, and which entries a restore
must give back when the manifest and the stored tree each know part of it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from drills.storage.manifest import FileEntry, Manifest, _Parser
from drills.storage.snapshot import (
    DIR,
    FILE,
    LINK,
    ROOT,
    expected,
    leaves_tree,
    manifest_fields,
    read_tree,
)
from fixtures.upload_trees import FILES, OWNER, every_shape


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return every_shape(tmp_path / "uploads", tmp_path / "host.txt")


def test_a_tree_read_in_place_has_every_shape_and_follows_nothing(tree: Path, tmp_path: Path):
    os.mkfifo(tree / "a-fifo")

    snapshot = read_tree(tree)

    entries = snapshot.entries
    assert {p for p, e in entries.items() if e.kind == FILE} == {*FILES, "photos/same-inode.jpg"}
    assert entries["docs/host-file"].kind == LINK
    assert entries["docs/host-file"].target == str(tmp_path / "host.txt")
    assert entries["docs/avatars"].kind == LINK  # a link to a directory is not walked into
    assert not any(p.startswith("docs/avatars/") for p in entries)
    assert entries["docs/dangling.png"].target == "../avatars/gone.png"
    assert entries["nested/empty/deeper"].kind == DIR
    assert entries[ROOT].kind == DIR
    assert entries["photos/same-inode.jpg"].hardlink == "photos/original.jpg"
    assert entries["photos/original.jpg"].hardlink is None
    assert entries["keys/id_rsa"].mode == 0o600
    assert entries["bin/setuid-tool"].mode == 0o4755
    assert entries["shared/drop"].mode == 0o1777
    assert (entries["keys/id_rsa"].uid, entries["keys/id_rsa"].gid) == OWNER
    assert entries["keys/id_rsa"].mtime_ns % 1_000_000_000 != 0  # nanoseconds kept
    assert "names/new\nline.txt" in entries
    assert snapshot.special == ["a-fifo"]
    assert [e.path for e in snapshot.outside()] == ["docs/host-file"]


def test_links_that_leave_the_tree():
    assert leaves_tree("docs/x", "/etc/passwd")
    assert leaves_tree("docs/x", "../../etc/passwd")
    assert leaves_tree("x", "..")
    assert not leaves_tree("docs/x", "../avatars/a.png")
    assert not leaves_tree("docs/x", "a/../b")


def test_a_manifest_records_the_tree_and_reads_back_the_same(tree: Path):
    snapshot = read_tree(tree)
    digests = {p: "ab" * 32 for p, e in snapshot.files.items() if e.hardlink is None}
    files, links, directories = manifest_fields(snapshot, digests)
    now = datetime(2025, 1, 15, 2, 0, tzinfo=UTC)
    manifest = Manifest(
        "files", now, now, format="snapshot", files=files, links=links, directories=directories
    )

    again = Manifest.from_json(manifest.to_json())

    assert again == manifest
    assert again.records_tree
    restored = expected(read_tree(tree), again)
    assert restored.source == "manifest"
    for path, entry in snapshot.entries.items():
        mine = restored.entries[path]
        assert (mine.kind, mine.mode, mine.uid, mine.gid, mine.mtime_ns, mine.target) == (
            entry.kind,
            entry.mode if entry.kind != LINK else None,
            entry.uid,
            entry.gid,
            entry.mtime_ns,
            entry.target,
        ), path
        assert mine.hardlink == entry.hardlink


@dataclass(frozen=True)
class _FileEntryBefore:
    """A files entry as the harness before this change parsed it."""

    path: str
    size: int
    mode: int
    sha256: str


def test_an_older_harness_reads_the_new_fields_as_it_read_the_old_ones(tree: Path):
    """The parser an older harness runs: known fields checked, unknown ones ignored in an
    entry and kept in `extra` at the top."""
    snapshot = read_tree(tree)
    files, links, directories = manifest_fields(snapshot, dict.fromkeys(snapshot.files, "cd" * 32))
    now = datetime(2025, 1, 15, 2, 0, tzinfo=UTC)
    text = Manifest("files", now, now, files=files, links=links, directories=directories).to_json()
    data = json.loads(text)

    older = _Parser("files/x.manifest.json", data).entries("files", _FileEntryBefore)

    assert [(e.path, e.size, e.mode) for e in older] == [(f.path, f.size, f.mode) for f in files]
    assert set(data) - {"links", "directories"} <= {
        "schema", "kind", "started_at", "finished_at", "format", "compression", "bytes",
        "sha256", "producer_version", "database", "server_version", "pg_dump_version",
        "tables", "files", "members", "encrypted", "extra",
    }  # fmt: skip


def test_a_manifest_without_a_tree_reads_as_before():
    text = json.dumps(
        {
            "kind": "files",
            "started_at": "2025-01-15T02:00:00Z",
            "finished_at": "2025-01-15T02:00:01Z",
            "files": [{"path": "a.png", "size": 3, "mode": 420, "sha256": "ab" * 32}],
        }
    )
    manifest = Manifest.from_json(text)
    assert not manifest.records_tree
    assert manifest.files[0].mtime_ns is None
    assert '"links"' not in manifest.to_json()  # nothing new is written for it either


def test_an_older_manifest_over_a_stored_tree(tree: Path):
    """A manifest that lists files only (an older producer): its checksums and modes, and
    the tree's links, directories, owners and times."""
    stored = read_tree(tree)
    now = datetime(2025, 1, 15, 2, 0, tzinfo=UTC)
    files, _, _ = manifest_fields(stored, dict.fromkeys(stored.files, "ef" * 32))
    older = tuple(FileEntry(f.path, f.size, f.mode, f.sha256) for f in files)
    manifest = Manifest("files", now, now, files=older)

    want = expected(stored, manifest)

    assert want.source == "tree + manifest"
    assert want.entries["docs/host-file"].kind == LINK
    assert want.entries["empty"].kind == DIR
    assert want.entries["keys/id_rsa"].sha256 == "ef" * 32
    assert want.entries["keys/id_rsa"].mtime_ns == stored.entries["keys/id_rsa"].mtime_ns
