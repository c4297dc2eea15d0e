"""Clean after an outage: what a run that could not finish left in the store and the local
directory is cleaned by the next run, which also uploads the local copy the first could not.
Real Postgres 15, the embedded S3 behind a proxy that dies mid-upload, a file:// store.

Found case made for real: killing the store mid-upload left incomplete multipart uploads and
a `.dir/` prefix without its `toc.dat`; the next good run cleaned none of it, and the local
copy the failed run kept was never uploaded."""

from __future__ import annotations

import gzip
import os
import re
import time
from pathlib import Path

import pytest

from drills.storage import LocalStorage
from drills.storage.catalog import list_backups
from drills.storage.s3 import S3Storage
from tests.producer_kit import DB, SlowS3Proxy, config, drill, pg_env, production, s3_env

LOCK = f"database/.drill-lock-{DB}"
TWO_DAYS = 2 * 86400


@pytest.fixture(scope="module")
def pg(run_session, postgres_image):
    """Production with a table whose dump file is uploaded in several parts."""
    big = (
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g * 7)::text)"
        " || md5((g * 13)::text) AS pad FROM generate_series(1, 600000) g"
    )
    with production(run_session, postgres_image, sql=(big,)) as server:
        yield server


def _stored_files_match(storage, backup) -> None:
    for entry in backup.manifest.files:
        body = storage.read_bytes(backup.key + entry.path)
        assert len(body) == entry.size, backup.key + entry.path


def test_the_run_after_a_store_outage_cleans_up_and_uploads_what_the_failed_one_kept(
    pg, embedded_s3, s3_bucket: S3Storage, tmp_path: Path
):
    env = {**pg_env(pg), **s3_env(embedded_s3)}
    client = embedded_s3.client()
    local = tmp_path / "local"
    backup = f'local_dir = "{local}"\n'
    with SlowS3Proxy(embedded_s3.endpoint_url) as proxy:
        proxy.cut_after("PUT", "partNumber=", 1)  # the store dies once a part got in
        dying = config(
            tmp_path / "a", s3_bucket.url, endpoint_url=proxy.endpoint_url,
            dump_format="directory", backup=backup,
        )  # fmt: skip
        failed = drill("backup", "database", "--config", str(dying), env=env, timeout=600)
    left_uploads = client.list_multipart_uploads(Bucket=s3_bucket.bucket).get("Uploads", [])
    left_keys = {info.key for info in s3_bucket.list("database/")}
    kept = list((local / "database").glob(f"{DB}_*.dir"))
    healthy = config(
        tmp_path / "b", s3_bucket.url, endpoint_url=embedded_s3.endpoint_url,
        dump_format="directory", backup=backup,
    )  # fmt: skip

    after = drill("backup", "database", "--config", str(healthy), env=env)

    assert failed.returncode == 1
    assert failed.stderr.count("\n") == 1, failed.stderr
    [kept] = kept
    assert f"local copy kept at {kept} (the next run uploads it)" in failed.stderr
    assert "storage unreachable (the connection closed before an answer)" in failed.stderr
    assert failed.stderr.rstrip().endswith(
        "what it uploaded stays in the store until the next run cleans it"
    )
    assert left_uploads, "the outage left no incomplete upload to clean"
    assert LOCK in left_keys  # the dead run's lock, with what it was writing
    assert not any(k.endswith("toc.dat") for k in left_keys)
    assert after.returncode == 0, after.stderr
    lines = after.stdout.splitlines()
    prefix = f"database/{kept.name}"
    aborted = rf"  cleaned: aborted {len(left_uploads)} incomplete uploads? of {prefix} \("
    assert any(re.fullmatch(aborted + r"[\d.]+ MB in parts\)", ln) for ln in lines), lines
    if any(k.startswith(prefix + "/") for k in left_keys):
        assert any(ln.startswith(f"  cleaned: removed {prefix}/ (") for ln in lines)
    assert f"  uploaded an earlier run's local copy: {prefix}/" in lines
    assert client.list_multipart_uploads(Bucket=s3_bucket.bucket).get("Uploads", []) == []
    backups = list_backups(s3_bucket, "database")
    assert len(backups) == 2
    for stored in backups:
        assert stored.manifest is not None
        _stored_files_match(s3_bucket, stored)
    assert not s3_bucket.exists(LOCK)


def test_old_incomplete_leftovers_of_our_names_go_and_nothing_else_does(
    pg, embedded_s3, s3_bucket: S3Storage, tmp_path: Path
):
    """moto gives every incomplete upload an initiation time years ago, so any it holds is
    "older than a day"; the file:// store's leftovers are dated with their files' mtime."""
    env = {**pg_env(pg), **s3_env(embedded_s3)}
    client = embedded_s3.client()
    ours = client.create_multipart_upload(
        Bucket=s3_bucket.bucket, Key=f"database/{DB}_20250101_020000.sql.gz"
    )
    theirs = client.create_multipart_upload(
        Bucket=s3_bucket.bucket, Key="database/inventory_20250101_020000.sql.gz"
    )
    for upload in (ours, theirs):
        client.upload_part(
            Bucket=s3_bucket.bucket, Key=upload["Key"], UploadId=upload["UploadId"],
            PartNumber=1, Body=b"x" * (5 * 1024 * 1024),
        )  # fmt: skip
    store = tmp_path / "store" / "database"
    old_dump = store / f"{DB}_20250101_020000.dir"  # ours, interrupted: no toc.dat
    user_dump = store / f"{DB}_20250102_020000.dir"  # the user's own pg_dump -Fd: complete
    user_gzip = store / f"{DB}_20250103_020000.sql.gz"
    for path in (old_dump / "3012.dat.gz", user_dump / "3012.dat.gz", user_dump / "toc.dat"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"data")
    user_gzip.write_bytes(gzip.compress(b"-- theirs"))
    local = tmp_path / "local"
    stale = local / "database" / f"{DB}_20250101_020000.sql.gz.partial"
    now = time.strftime("%Y%m%d_%H%M%S", time.gmtime())
    fresh = local / "database" / f"{DB}_{now}.sql.gz.partial"
    for path in (stale, fresh):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a dump")
    two_days_ago = time.time() - TWO_DAYS
    for path in (old_dump / "3012.dat.gz", user_dump / "3012.dat.gz", user_dump / "toc.dat"):
        os.utime(path, (two_days_ago, two_days_ago))
    on_s3 = config(tmp_path / "a", s3_bucket.url, endpoint_url=embedded_s3.endpoint_url)
    on_disk = config(tmp_path / "b", (tmp_path / "store").as_uri(), backup=f'local_dir = "{local}"')

    s3_run = drill("backup", "database", "--config", str(on_s3), env=env)
    disk_run = drill("backup", "database", "--config", str(on_disk), env=env)

    assert s3_run.returncode == 0, s3_run.stderr
    assert (
        f"  cleaned: aborted 1 incomplete upload of database/{DB}_20250101_020000.sql.gz "
        "(5.0 MB in parts)" in s3_run.stdout.splitlines()
    )
    left = client.list_multipart_uploads(Bucket=s3_bucket.bucket)["Uploads"]
    assert [u["Key"] for u in left] == ["database/inventory_20250101_020000.sql.gz"]
    assert disk_run.returncode == 0, disk_run.stderr
    assert f"  cleaned: removed database/{old_dump.name}/ (1 objects, 4 B): no toc.dat" in (
        disk_run.stdout
    )
    assert f"  cleaned: removed {stale}: left by a run that did not finish" in disk_run.stdout
    assert not old_dump.exists()
    assert not stale.exists()
    assert fresh.exists()  # may be another run's, still going
    assert [(user_dump / n).read_bytes() for n in ("toc.dat", "3012.dat.gz")] == [b"data"] * 2
    assert gzip.decompress(user_gzip.read_bytes()) == b"-- theirs"
    listed = {b.key for b in list_backups(LocalStorage(tmp_path / "store"), "database")}
    assert {f"database/{user_dump.name}/", f"database/{user_gzip.name}"} <= listed
