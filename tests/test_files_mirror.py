"""The runbook's off-site uploads copy, `aws s3 sync <dir>/current/ s3://<bucket>/files/
--delete` (the real AWS CLI against the embedded S3): one flat mirror, drilled as one backup,
every object checked against its ETag (multipart ones part-wise, or named as unverifiable),
its time the newest LastModified unless `drill backup files --mirror` left a sync marker; the
catalogue, `drill status` and `drill restore files` see it. An ETag against bytes that are not
its object's is a mismatch."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drills.storage import catalog
from drills.storage.etag import MIB, EtagCheck
from fixtures.estate_backups import (
    drill_cli,
    put_files_snapshot,
    run_drill,
    typed_uploads,
    write_drill_toml,
)
from fixtures.upload_trees import runbook_mirror

FILES = "[files]\n"
BIG = "videos/intro.mp4"


def _uploads(root: Path) -> Path:
    for path, data in typed_uploads().items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    (root / BIG).parent.mkdir(parents=True, exist_ok=True)
    (root / BIG).write_bytes(random.Random(5).randbytes(9 * MIB + 4321))  # multipart: 2 parts
    return root


def _aws_env(embedded_s3, tmp_path: Path, chunk: str = "8MB") -> dict[str, str]:
    config = tmp_path / "aws-config"
    config.write_text(
        f"[default]\nregion = us-east-1\ns3 =\n  multipart_threshold = 5MB\n"
        f"  multipart_chunksize = {chunk}\n"
    )
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(config),
    }


def _sync(source: Path, bucket: str, embedded_s3, env: dict[str, str]) -> None:
    runbook_mirror(source, bucket, embedded_s3.endpoint_url, env)


def _checks(drill: dict) -> dict[str, dict]:
    return {check["name"]: check for check in drill["checks"]}


def test_a_synced_mirror_is_one_backup_drilled_green_and_restored_whole(
    tmp_path, s3_bucket, embedded_s3
):
    source = _uploads(tmp_path / "current")
    env = _aws_env(embedded_s3, tmp_path)
    _sync(source, s3_bucket.bucket, embedded_s3, env)

    backups = catalog.list_backups(s3_bucket, "files")
    assert [(b.key, b.format, b.objects) for b in backups] == [("files/", "mirror", 31)]
    assert backups[0].time_source == "newest LastModified"

    config = write_drill_toml(tmp_path, s3_bucket.url, FILES, endpoint_url=embedded_s3.endpoint_url)
    outcome = run_drill(config, "files", env=env)
    drill = outcome.drill("files")
    assert outcome.exit == 0, outcome.output
    assert drill["backup"]["key"] == "files/"
    etags = _checks(drill)["objects match their S3 ETag and size"]
    assert etags["passed"], etags
    assert etags["detail"] == "31 of 31 verified", etags
    assert any("at most that old" in n for n in drill["notes"]), drill["notes"]
    assert any("integrity rests on each object's ETag" in n for n in drill["notes"])

    status = drill_cli("status", "--config", str(config), env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    (files,) = [line for line in status.stdout.splitlines() if line.startswith("files ")]
    assert "(newest LastModified)" in files, status.stdout
    assert " ok " in files, status.stdout

    target = tmp_path / "restored"
    restored = drill_cli("restore", "files", "--config", str(config), "--to", str(target), env=env)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    diff = subprocess.run(["diff", "-r", str(source), str(target)], capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout


def test_dated_snapshots_beside_a_mirror_stay_apart(tmp_path, s3_bucket, embedded_s3):
    """The producer's dated snapshots and a mirror under one prefix: each is its own backup,
    and the mirror holds none of the snapshots' objects (one with a unique suffix still
    uploading, no manifest yet), nor a producer's lock."""
    key = put_files_snapshot(s3_bucket, {"a.png": b"\x89PNG a"}, age=timedelta(days=2))
    s3_bucket.put_bytes("files/loose.txt", b"synced by hand")
    s3_bucket.put_bytes("files/20250101_020000_3f9a/b.png", b"a snapshot still uploading")
    s3_bucket.put_bytes("files/.drill-lock-files", b'{"host": "a producer running now"}')
    backups = {b.key: b for b in catalog.list_backups(s3_bucket, "files")}
    assert set(backups) == {key, "files/"}
    assert backups["files/"].objects == 1
    assert [o.key for o in catalog.mirror_objects(s3_bucket, "files/")] == ["files/loose.txt"]


def test_the_sync_marker_makes_the_time_exact(tmp_path, s3_bucket, embedded_s3):
    source = _uploads(tmp_path / "current")
    env = _aws_env(embedded_s3, tmp_path)
    _sync(source, s3_bucket.bucket, embedded_s3, env)
    config = write_drill_toml(tmp_path, s3_bucket.url, FILES, endpoint_url=embedded_s3.endpoint_url)
    before = datetime.now(UTC)

    marked = drill_cli("backup", "files", "--mirror", "--config", str(config), env=env)

    assert marked.returncode == 0, marked.stdout + marked.stderr
    assert "31 objects" in marked.stdout
    assert "files/.drill-mirror.json" in marked.stdout
    (mirror,) = catalog.list_backups(s3_bucket, "files")
    assert mirror.time_source == "sync marker"
    assert mirror.taken_at >= before - timedelta(seconds=1)
    assert mirror.objects == 31  # the marker is no part of the mirror

    _sync(source, s3_bucket.bucket, embedded_s3, env)  # --delete removes the marker
    (mirror,) = catalog.list_backups(s3_bucket, "files")
    assert mirror.time_source == "newest LastModified"


def test_mirror_needs_a_mirror(tmp_path, s3_bucket, embedded_s3):
    config = write_drill_toml(tmp_path, s3_bucket.url, FILES, endpoint_url=embedded_s3.endpoint_url)
    env = _aws_env(embedded_s3, tmp_path)
    refused = drill_cli("backup", "files", "--mirror", "--config", str(config), env=env)
    assert refused.returncode != 0
    assert "no mirror under" in refused.stderr
    assert "no marker written" in refused.stderr
    assert not list(s3_bucket.list("files/"))


def test_a_part_size_that_cannot_be_inferred_is_named_unverifiable(
    tmp_path, s3_bucket, embedded_s3
):
    """Uploaded with 5.5 MiB parts (not a whole MiB): the drill cannot check that ETag and
    says so; it does not count it as verified."""
    source = _uploads(tmp_path / "current")
    env = _aws_env(embedded_s3, tmp_path, chunk=str(5 * MIB + MIB // 2))
    _sync(source, s3_bucket.bucket, embedded_s3, env)
    config = write_drill_toml(tmp_path, s3_bucket.url, FILES, endpoint_url=embedded_s3.endpoint_url)

    outcome = run_drill(config, "files", env=env)

    drill = outcome.drill("files")
    assert outcome.exit == 0, outcome.output
    etags = _checks(drill)["objects match their S3 ETag and size"]
    assert etags["detail"] == "30 of 31 verified, 1 unverifiable", etags
    assert any(BIG in n and "cannot be checked" in n for n in drill["notes"]), drill["notes"]


def test_bytes_that_are_not_the_objects_are_a_mismatch():
    data = random.Random(3).randbytes(2 * MIB)
    single = EtagCheck(hashlib.md5(data).hexdigest(), len(data))
    single.update(data[:-1] + b"\0")
    assert single.result().ok is False
    assert "differs from the ETag" in single.result().words

    short = EtagCheck(hashlib.md5(data).hexdigest(), len(data) + 1)
    short.update(data)
    assert short.result().ok is False
    assert "listing says" in short.result().words

    parts = [hashlib.md5(data[i : i + 5 * MIB]).digest() for i in range(0, len(data), 5 * MIB)]
    whole = EtagCheck(hashlib.md5(b"".join(parts)).hexdigest() + "-1", len(data))
    whole.update(data)
    assert whole.result().ok is True
