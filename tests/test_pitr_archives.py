"""Point-in-time recovery from the archives people already have (`fixtures.pitr`'s failover):
base backups taken by hand with `pg_basebackup`, WAL compressed every way archivers compress
it, stored by other means, imported from a directory; and what must fail: a file that looks
like WAL but cannot be read, a hole, a shipper that ships nothing while the server archives
elsewhere, a hole inside the promised window.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from drills.pitr import iso
from drills.storage.manifest import Manifest
from drills.storage.walfile import SEGMENT, segment_name
from fixtures.estate_backups import drill_cli, run_drill
from fixtures.pitr import pg_basebackup_by_hand, switch_and_wait, wait_quiet

MB16 = 16 * 1024 * 1024


def _drill(*args: str, env: dict) -> subprocess.CompletedProcess:
    return drill_cli(*args, env=env, stdin=None, timeout=300)


def _import_base(archive, tmp_path: Path, kind: str, *, keep_ours: bool = False) -> tuple:
    """A store holding the shipped WAL (and, `keep_ours`, the base backup of drill backup
    base) and the hand-made base backup `kind`, imported; its config, output and manifest."""
    url = archive.copy_store(tmp_path / "store", without=() if keep_ours else ("base/",))
    config = archive.config(tmp_path, url)
    done = _drill("backup", "base", "--config", str(config), "--import",
                  str(archive.handmade[kind]), env=archive.env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    manifests = [
        Manifest.from_json(p.read_text()) for p in (tmp_path / "store" / "base").glob("*.json")
    ]
    imported = next(m for m in manifests if "imported_from" in m.extra)
    return config, done.stdout, imported


def test_a_handmade_tar_base_backup_is_imported_and_drilled(tmp_path, promoted_archive):
    archive = promoted_archive
    config, output, manifest = _import_base(archive, tmp_path, "tar")
    assert output.startswith("base: base/"), output
    assert {f.path for f in manifest.files} == {"base.tar.gz", "pg_wal.tar.gz", "backup_manifest"}
    extra = manifest.extra
    assert extra["verified"] is True
    assert extra["wal_included"] is True
    assert extra["superuser"] == archive.server.user
    assert extra["superuser_source"] == "pg_authid"
    assert extra["ended_at_source"] == "backup history file"
    outcome = run_drill(config, "pitr", env=archive.env)
    assert outcome.exit == 0, outcome.output[-3000:]
    drill = outcome.drill("pitr")
    assert drill["backup"]["key"].startswith("base/")
    assert drill["pitr"]["measured"]["verified"].startswith("backup successfully verified")
    # the earliest point the window offers recovers: the backup history file's STOP TIME is
    # cut to the second, and a target inside that second may lie before the point where the
    # backup is consistent ("requested recovery stop point is before consistent recovery point")
    earliest = extra["server_ended_at"]
    config = archive.config(tmp_path / "earliest", (tmp_path / "store").as_uri(), target=earliest)
    outcome = run_drill(config, "pitr", env=archive.env)
    assert outcome.exit == 0, outcome.output[-3000:]
    assert outcome.drill("pitr")["backup"]["key"] == drill["backup"]["key"]


def test_a_handmade_plain_base_backup_is_imported_as_ours(tmp_path, promoted_archive):
    archive = promoted_archive
    _, _, manifest = _import_base(archive, tmp_path, "plain")
    assert {f.path for f in manifest.files} == {"base.tar.gz", "pg_wal.tar.gz", "backup_manifest"}
    assert manifest.extra["pg_basebackup_format"] == "plain"
    assert manifest.extra["verified"] is True
    again = _drill("backup", "base", "--config", str(tmp_path / "drill.toml"), "--import",
                   str(archive.handmade["plain"]), env=archive.env)  # fmt: skip
    assert again.returncode == 1
    assert "is stored already as base/" in again.stderr, again.stderr


@pytest.mark.parametrize("compression", ["zstd", "lz4"])
def test_a_handmade_tar_base_backup_compressed_otherwise_is_imported(
    tmp_path, promoted_archive, compression
):
    """pg_basebackup -Ft --compress=client-zstd (or lz4) taken now from the promoted server;
    its WAL shipped first, as docs/pitr.md says, then the backup imported and verified."""
    archive = promoted_archive
    histories = set(archive.archive.glob("*.backup.gz"))
    made = pg_basebackup_by_hand(
        archive.server, tmp_path / "made", "-Ft", f"--compress=client-{compression}"
    )
    suffix = {"zstd": "zst", "lz4": "lz4"}[compression]
    names = {p.name for p in made.iterdir()}
    # PostgreSQL 15 compresses -X stream's pg_wal.tar only with gzip
    assert f"base.tar.{suffix}" in names, names
    assert names & {"pg_wal.tar", f"pg_wal.tar.{suffix}"}, names
    deadline = time.monotonic() + 60
    while not set(archive.archive.glob("*.backup.gz")) - histories:
        assert time.monotonic() < deadline, "the backup history file was not archived"
        time.sleep(0.5)
    url = archive.copy_store(tmp_path / "store", without=("base/",))
    config = archive.config(tmp_path, url, extra=f'archive_dir = "{archive.archive}"')
    shipped = _drill("backup", "wal", "--config", str(config), env=archive.env)
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    done = _drill("backup", "base", "--config", str(config), "--import", str(made),
                  env=archive.env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("base: base/"), done.stdout
    manifest = next(
        Manifest.from_json(p.read_text()) for p in (tmp_path / "store" / "base").glob("*.json")
    )
    assert {f.path for f in manifest.files} == {"base.tar.gz", "pg_wal.tar.gz", "backup_manifest"}
    assert manifest.extra["verified"] is True
    assert manifest.extra["wal_included"] is True
    assert manifest.extra["ended_at_source"] == "backup history file"


def test_a_damaged_handmade_base_backup_is_refused(tmp_path, promoted_archive):
    archive = promoted_archive
    damaged = tmp_path / "damaged"
    shutil.copytree(archive.handmade["plain"], damaged)
    victim = next(p for p in (damaged / "base").rglob("*") if p.is_file() and p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    url = archive.copy_store(tmp_path / "store", without=("base/",))
    config = archive.config(tmp_path, url)
    done = _drill("backup", "base", "--config", str(config), "--import", str(damaged),
                  env=archive.env)  # fmt: skip
    assert done.returncode == 1, done.stdout
    assert "pg_verifybackup failed" in done.stderr, done.stderr
    assert "checksum mismatch" in done.stderr, done.stderr
    assert not list((tmp_path / "store" / "base").iterdir())


def _compress(data: bytes, tool: str) -> bytes:
    return subprocess.run([tool, "-c", "-q"], input=data, capture_output=True, check=True).stdout


def test_wal_stored_by_other_means_is_read(tmp_path, promoted_archive):
    """An archive_command that writes into the storage itself: plain, zstd and lz4 objects
    with no manifest of ours."""
    archive = promoted_archive
    url = archive.copy_store(tmp_path / "store")
    wal = tmp_path / "store" / "wal"
    segments = sorted(p for p in wal.glob("*.gz") if SEGMENT.match(p.name[:-3]))
    for index, path in enumerate(segments):
        data = gzip.decompress(path.read_bytes())
        name = path.name[:-3]
        form = ("", ".zst", ".lz4")[index % 3]
        stored = _compress(data, {".zst": "zstd", ".lz4": "lz4"}[form]) if form else data
        (wal / f"{name}{form}").write_bytes(stored)
        path.unlink()
        Path(f"{path}.manifest.json").unlink()
    config = archive.config(tmp_path, url)
    outcome = run_drill(config, "pitr", env=archive.env)
    assert outcome.exit == 0, outcome.output[-3000:]
    drill = outcome.drill("pitr")
    assert any("stored without a manifest of drill backup wal" in n for n in drill["notes"])


def _content(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


def test_import_of_an_archive_directory_compressed_every_way(tmp_path, promoted_archive):
    archive = promoted_archive
    source = tmp_path / "old-archive"
    source.mkdir()
    originals = {}
    for index, path in enumerate(sorted(archive.archive.glob("*.gz"))):
        name, data = path.name[:-3], _content(path)
        originals[name] = hashlib.sha256(data).hexdigest()
        form = ("", ".gz", ".zst", ".lz4")[index % 4]
        if form == ".gz":
            stored = gzip.compress(data)
        elif form:
            stored = _compress(data, {".zst": "zstd", ".lz4": "lz4"}[form])
        else:
            stored = data
        (source / f"{name}{form}").write_bytes(stored)
    (tmp_path / "store").mkdir()
    config = archive.config(tmp_path, (tmp_path / "store").as_uri())
    done = _drill("backup", "wal", "--config", str(config), "--import", str(source),
                  env=archive.env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"wal import: {len(originals)} shipped"), done.stdout
    for name, sha in originals.items():
        manifest = tmp_path / "store" / "wal" / f"{name}.gz.manifest.json"
        assert json.loads(manifest.read_text())["extra"]["content_sha256"] == sha, name
    assert len(list(source.iterdir())) == len(originals)  # an import removes nothing


def test_wal_that_cannot_be_read_fails_the_shipper(tmp_path, promoted_archive):
    archive = promoted_archive
    first, second = sorted(p for p in archive.archive.glob("*.gz") if SEGMENT.match(p.name[:-3]))[
        :2
    ]
    (tmp_path / "store").mkdir()
    config = archive.config(tmp_path, (tmp_path / "store").as_uri())
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / first.name).write_bytes(first.read_bytes()[:-100])
    done = _drill("backup", "wal", "--config", str(config), "--import", str(cut), env=archive.env)
    assert done.returncode == 1, done.stdout
    assert f"{first.name}: gzip stream ends early" in done.stderr, done.stderr
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / f"{second.name[:-3]}.bz2").write_bytes(b"BZh91AY&SY")
    done = _drill("backup", "wal", "--config", str(config), "--import", str(odd), env=archive.env)
    assert done.returncode == 1, done.stdout
    assert "looks like WAL but cannot be read" in done.stderr, done.stderr


def test_shipping_across_a_hole_ships_and_fails_naming_it(tmp_path, promoted_archive):
    archive = promoted_archive
    source = tmp_path / "holed"
    shutil.copytree(archive.archive, source)
    segments = sorted(p.name for p in source.glob("00000001*.gz") if SEGMENT.match(p.name[:-3]))
    gone = segments[len(segments) // 2]
    (source / gone).unlink()
    (tmp_path / "store").mkdir()
    config = archive.config(tmp_path, (tmp_path / "store").as_uri())
    done = _drill(
        "backup", "wal", "--config", str(config), "--import", str(source), env=archive.env
    )
    assert done.returncode == 1, done.stdout
    assert f"the WAL has a hole: {gone[:-3]} missing" in done.stderr, done.stderr
    assert "take a new base backup" in done.stderr
    after = segments[segments.index(gone) + 1][:-3]
    assert (tmp_path / "store" / "wal" / f"{after}.gz.manifest.json").exists()


def test_a_shipper_that_ships_nothing_while_the_server_archives_fails(tmp_path, promoted_archive):
    archive = promoted_archive
    with archive.server.connect("app", autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS probe (at timestamptz DEFAULT now())")
        conn.execute("INSERT INTO probe DEFAULT VALUES")
    archived = switch_and_wait(archive.server, archive.archive)
    wait_quiet(archive.server)
    elsewhere = tmp_path / "not-the-archive"
    elsewhere.mkdir()
    url = archive.copy_store(tmp_path / "store")
    config = archive.config(tmp_path, url, extra=f'archive_dir = "{elsewhere}"')
    done = _drill("backup", "wal", "--config", str(config), env=archive.env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith("wal: 0 shipped"), done.stdout
    assert f"the server archived {archived}" in done.stderr, done.stderr
    assert "(pg_stat_archiver), but it is neither in" in done.stderr, done.stderr
    assert str(elsewhere) in done.stderr


def test_a_hole_fails_the_drill_unless_it_is_older_than_the_promise(tmp_path, promoted_archive):
    archive = promoted_archive
    config, _, imported = _import_base(archive, tmp_path, "tar", keep_ours=True)
    seg = MB16
    ours = next(
        Manifest.from_json(p.read_text())
        for p in (tmp_path / "store" / "base").glob("*.manifest.json")
        if "imported_from" not in p.read_text()
    )
    first = int(ours.extra["end_wal"][16:], 16) + 1
    last = int(imported.extra["start_wal"][16:], 16) - 1
    assert last >= first, (ours.extra["end_wal"], imported.extra["start_wal"])
    gone = segment_name(1, (first + last) // 2, seg)
    for suffix in (".gz", ".gz.manifest.json"):
        (tmp_path / "store" / "wal" / f"{gone}{suffix}").unlink()
    outcome = run_drill(config, "pitr", env=archive.env)
    assert outcome.exit == 1, outcome.output[-3000:]
    drill = outcome.drill("pitr")
    error = drill["error"]
    assert "the WAL is not continuous from base/" in error, error
    assert f"wal/{gone} is missing (later ones are archived)" in error, error
    assert "recoverable pieces: " in error, error
    assert [h["first"] for h in drill["pitr"]["holes"]] == [gone]
    assert f"1 WAL segment missing from {gone}" in _window(outcome.run_dir, "win-hole")
    accept = imported.extra["server_ended_at"]
    assert f'accept_gaps_before = "{iso(_utc(accept))}" accepts it' in error, error
    config = archive.config(tmp_path, (tmp_path / "store").as_uri(),
                            extra=f'accept_gaps_before = "{accept}"')  # fmt: skip
    outcome = run_drill(config, "pitr", env=archive.env)
    assert outcome.exit == 0, outcome.output[-3000:]
    pitr = outcome.drill("pitr")["pitr"]
    assert pitr["holes"][0]["accepted"] is True
    assert pitr["target"] >= iso(_utc(accept))
    assert "(accepted: older than the promise)" in _window(outcome.run_dir, "win-accepted")


def _window(run_dir: Path, css: str) -> str:
    """The recoverable window chart of the run's HTML report (`drill report`, written beside
    the sealed run directory), from its first `css` bar on."""
    output = run_dir.parent / f"{run_dir.name}.html"
    done = drill_cli("report", str(run_dir), "--output", str(output), stdin=None)
    assert done.returncode == 0, done.stdout + done.stderr
    page = output.read_text()
    assert "<h3>Recoverable window</h3>" in page
    return page[page.index(f'class="{css}"') :]


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
