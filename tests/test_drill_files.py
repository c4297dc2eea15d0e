"""The files drill, end to end through `drill run`: a clean snapshot passes; a missing, an
altered and an extra upload each fail naming the file; a snapshot without a manifest passes
with a note that its integrity was not provable; an empty newest snapshot fails naming it and
the one before; a link stored where a file was backed up is never followed. Never a false
green."""

from __future__ import annotations

import os
from datetime import timedelta

from fixtures.estate_backups import (
    drill_cli,
    put_files_snapshot,
    run_drill,
    stamp,
    typed_uploads,
    uploads,
    write_drill_toml,
)

FILES = "[files]\n"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _drill(tmp_path, local_storage):
    outcome = run_drill(write_drill_toml(tmp_path, local_storage.url, FILES), "files")
    return outcome, outcome.drill("files")


def _checks(drill: dict) -> dict[str, bool]:
    return {check["name"]: check["passed"] for check in drill["checks"]}


def test_clean_snapshot_passes(tmp_path, local_storage):
    files = uploads()
    key = put_files_snapshot(local_storage, files)
    outcome, drill = _drill(tmp_path, local_storage)
    assert outcome.exit == 0, outcome.output
    assert drill["verdict"] == "pass"
    assert drill["backup"]["key"] == key
    assert all(_checks(drill).values()), drill["checks"]
    assert "file count equals the manifest's" in _checks(drill)
    assert drill["restore"]["files"] == len(files)
    assert drill["restore"]["bytes_read"] == sum(len(d) for d in files.values())
    assert set(drill["phases"]) >= {"locate", "provision", "restore", "validate"}
    assert drill["rto"]["measured_s"] < drill["rto"]["target_s"]
    assert drill["rpo"]["measured_s"] < drill["rpo"]["target_s"]


def test_missing_upload_fails_naming_it(tmp_path, local_storage):
    files = uploads()
    gone = "documents/file 004.pdf"
    put_files_snapshot(local_storage, {p: d for p, d in files.items() if p != gone}, listed=files)
    outcome, drill = _drill(tmp_path, local_storage)
    assert outcome.exit == 1, outcome.output
    assert drill["verdict"] == "fail"
    assert f"missing: {gone}" in drill["error"]
    assert "file count equals the manifest's: 8 restored, the manifest lists 9" in drill["error"]


def test_altered_upload_fails_naming_it(tmp_path, local_storage):
    files = uploads()
    changed = "avatars/file 003.png"
    stored = dict(files)
    stored[changed] = bytes([files[changed][0] ^ 0xFF]) + files[changed][1:]
    put_files_snapshot(local_storage, stored, listed=files)
    outcome, drill = _drill(tmp_path, local_storage)
    assert outcome.exit == 1, outcome.output
    assert f"altered: {changed} (checksum differs)" in drill["error"]
    assert "missing" not in drill["error"]


def test_extra_upload_fails_naming_it(tmp_path, local_storage):
    files = uploads()
    put_files_snapshot(
        local_storage, {**files, "receipts/unlisted.jpg": b"not in the manifest"}, listed=files
    )
    outcome, drill = _drill(tmp_path, local_storage)
    assert outcome.exit == 1, outcome.output
    assert "extra: receipts/unlisted.jpg" in drill["error"]


def test_snapshot_without_manifest_passes_with_a_note(tmp_path, local_storage):
    put_files_snapshot(local_storage, uploads(), manifest=False, age=timedelta(hours=1))
    outcome, drill = _drill(tmp_path, local_storage)
    assert outcome.exit == 0, outcome.output
    assert drill["backup"]["time_source"] == "name"
    assert _checks(drill)["files restored"] is True
    assert any("integrity was not provable" in note for note in drill["notes"]), drill["notes"]


def test_s3_snapshots_with_a_file_list_or_none_pass(tmp_path, s3_bucket, embedded_s3):
    """Over real S3 an object listing has no directories, not even the snapshot's root: the
    restored tree's directories above the files are not extra."""
    put_files_snapshot(s3_bucket, uploads(), manifest=False, age=timedelta(hours=1))
    config = write_drill_toml(tmp_path, s3_bucket.url, FILES, endpoint_url=embedded_s3.endpoint_url)
    bare = run_drill(config, "files", env={**os.environ, **S3_ENV})
    assert bare.exit == 0, bare.output
    assert any("integrity was not provable" in n for n in bare.drill("files")["notes"])

    put_files_snapshot(s3_bucket, uploads())  # newer, with a manifest listing its files
    listed = run_drill(config, "files", env={**os.environ, **S3_ENV})
    assert listed.exit == 0, listed.output
    assert _checks(listed.drill("files"))["no file beyond the manifest"] is True


def test_archived_object_fails_naming_it(tmp_path, s3_bucket, embedded_s3):
    """Over real S3 (the embedded moto server): one upload moved to GLACIER cannot be read."""
    key = put_files_snapshot(s3_bucket, uploads())
    archived = f"{key}receipts/file 002.jpg"
    s3_bucket.client.copy_object(
        Bucket=s3_bucket.bucket,
        Key=archived,
        CopySource={"Bucket": s3_bucket.bucket, "Key": archived},
        StorageClass="GLACIER",
    )
    config = write_drill_toml(tmp_path, s3_bucket.url, FILES, endpoint_url=embedded_s3.endpoint_url)
    outcome = run_drill(config, "files", env={**os.environ, **S3_ENV})
    drill = outcome.drill("files")
    assert outcome.exit == 1, outcome.output
    assert f"{archived}: archived (storage class GLACIER)" in drill["error"]


def test_an_empty_newest_snapshot_fails_naming_it_and_the_one_before(tmp_path, local_storage):
    """The runbook's `cp -al` of an uploads directory whose mount vanished: an empty dated
    directory after a good snapshot. It is the newest, and the drill fails on it; `drill
    restore files` refuses to replace the uploads with it."""
    good = put_files_snapshot(local_storage, typed_uploads(), manifest=False, age=timedelta(days=1))
    empty = f"files/{stamp(timedelta(minutes=5))}/"
    (local_storage.root / empty).mkdir()

    outcome, drill = _drill(tmp_path, local_storage)

    assert outcome.exit == 1, outcome.output
    assert drill["backup"]["key"] == empty
    assert f"{empty} holds no files (an empty snapshot" in drill["error"]
    assert f"the file count dropped from 30 to 0 in {empty}" in drill["error"]
    assert f"the backup before it ({good}," in drill["error"]
    live = tmp_path / "uploads"
    live.mkdir()
    (live / "keep.png").write_bytes(b"production")
    config = tmp_path / "drill.toml"
    refused = drill_cli("restore", "files", "--config", str(config), "--to", str(live))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"{empty} holds no files" in refused.stderr
    assert f"--snapshot {good}" in refused.stderr
    assert [p.name for p in live.iterdir()] == ["keep.png"]


def test_a_stored_link_where_a_file_was_backed_up_is_never_followed(tmp_path, local_storage):
    """A snapshot file replaced in the store by a link to a host file: the restore reads
    nothing through it and names it."""
    files = uploads()
    key = put_files_snapshot(local_storage, files)
    host = tmp_path / "host-secret.txt"
    host.write_bytes(b"a host file nobody backed up")
    swapped = "documents/file 001.pdf"
    stored = local_storage.root / key / swapped
    stored.unlink()
    stored.symlink_to(host)

    outcome, drill = _drill(tmp_path, local_storage)

    assert outcome.exit == 1, outcome.output
    assert (
        f"missing: {swapped} (stored as a link to '{host}', not a file: never followed)"
        in (drill["error"])
    )
    assert drill["restore"]["bytes_read"] == sum(len(d) for p, d in files.items() if p != swapped)
