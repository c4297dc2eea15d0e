"""Backup storages: a local directory and a bucket on the embedded S3, through the same API."""

from __future__ import annotations

import os
import socket
import stat
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drills.config.errors import ConfigError, StorageError
from drills.storage import LocalStorage, Storage, open_storage
from drills.storage.s3 import S3Storage
from drills.storage.s3server import EmbeddedS3
from fixtures.storage import s3_storage_on


def test_write_list_read_round_trip(backup_storage: Storage, tmp_path: Path):
    source = tmp_path / "dump.sql.gz"
    source.write_bytes(b"\x1f\x8b" + b"x" * 1000)
    before = datetime.now(UTC) - timedelta(seconds=5)
    backup_storage.put_file("database/app_20250115_020000.sql.gz", source)
    backup_storage.put_bytes("database/app_20250115_020000.sql.gz.manifest.json", b"{}")
    backup_storage.put_bytes("config/config_20250115_020000.tar.gz", b"tar")

    infos = list(backup_storage.list("database/"))
    assert [i.key for i in infos] == [
        "database/app_20250115_020000.sql.gz",
        "database/app_20250115_020000.sql.gz.manifest.json",
    ]
    assert infos[0].size == 1002
    assert infos[0].modified.tzinfo is not None
    assert infos[0].modified >= before
    assert backup_storage.read_bytes("database/app_20250115_020000.sql.gz") == source.read_bytes()
    with backup_storage.open("config/config_20250115_020000.tar.gz") as stream:
        assert stream.read() == b"tar"
    assert backup_storage.exists("config/config_20250115_020000.tar.gz")
    assert not backup_storage.exists("config/nothing.tar.gz")
    backup_storage.check()


def test_object_deleted_after_listing_is_named(backup_storage: Storage):
    backup_storage.put_bytes("database/x.sql.gz", b"data")
    [info] = backup_storage.list("database/")
    _delete(backup_storage, info.key)
    with pytest.raises(StorageError) as caught:
        backup_storage.open(info.key)
    assert (
        str(caught.value)
        == f"{backup_storage.url}/database/x.sql.gz: no such object (deleted after listing?)"
    )


def test_local_writes_are_private_and_leave_no_temp_files(local_storage: LocalStorage):
    local_storage.put_bytes("config/secret.tar.gz", b"secret")
    local_storage.put_bytes("config/secret.tar.gz", b"secret v2")  # replaces atomically
    target = local_storage.root / "config" / "secret.tar.gz"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_bytes() == b"secret v2"
    assert os.listdir(target.parent) == ["secret.tar.gz"]


def test_local_listing_does_not_follow_the_current_symlink(local_storage: LocalStorage):
    local_storage.put_bytes("files/20250115_020000/avatar.png", b"png")
    (local_storage.root / "files" / "current").symlink_to(
        local_storage.root / "files" / "20250115_020000"
    )
    assert [i.key for i in local_storage.list("files/")] == ["files/20250115_020000/avatar.png"]


def test_missing_directory_is_named(tmp_path: Path):
    storage = open_storage((tmp_path / "nope").as_uri())
    with pytest.raises(StorageError, match=r"^file:///.*/nope: no such directory$"):
        storage.check()
    with pytest.raises(StorageError, match="no such directory"):
        list(storage.list("database/"))


def test_s3_prefix_keys_are_relative(embedded_s3: EmbeddedS3, s3_bucket: S3Storage):
    nested = s3_storage_on(embedded_s3, f"s3://{s3_bucket.bucket}/prod/eu/")
    assert nested.url == f"s3://{s3_bucket.bucket}/prod/eu"
    nested.put_bytes("database/a.sql", b"select 1;")
    assert [i.key for i in nested.list()] == ["database/a.sql"]
    assert [i.key for i in s3_bucket.list()] == ["prod/eu/database/a.sql"]


def test_s3_unreachable_endpoint_fails_fast_and_says_so():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: nothing listens there
    storage = open_storage(
        "s3://backups", f"http://127.0.0.1:{port}", access_key_id="a", secret_access_key="b"
    )
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        storage.check()
    assert time.monotonic() - started < 10
    assert str(caught.value) == (
        f"s3://backups at http://127.0.0.1:{port}: storage unreachable (connection refused)"
    )


def test_s3_missing_bucket_is_named(embedded_s3: EmbeddedS3):
    storage = s3_storage_on(embedded_s3, "s3://no-such-bucket-here")
    with pytest.raises(StorageError, match=r"^s3://no-such-bucket-here: no such bucket$"):
        storage.check()


def test_s3_access_denied_is_named_and_not_retried():
    with EmbeddedS3() as server:
        server.client().create_bucket(Bucket="locked")
        # from now on moto checks credentials, and the dummy ones are not an IAM user's
        request = urllib.request.Request(
            f"{server.endpoint_url}/moto-api/reset-auth",
            data=b"0",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        urllib.request.urlopen(request, timeout=5).close()
        storage = s3_storage_on(server, "s3://locked")
        with pytest.raises(StorageError) as caught:
            storage.open("database/x.sql.gz")
        assert str(caught.value) == (
            "s3://locked/database/x.sql.gz: access denied (403 InvalidAccessKeyId) "
            "— check credentials"
        )
        assert _requests_served(server, "GET /locked/database/x.sql.gz") == 1


def _requests_served(server: EmbeddedS3, request_line: str) -> int:
    # the server logs each request after answering it: wait briefly for the line to land
    deadline = time.monotonic() + 2
    while request_line not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    return server.output(tail=100_000).count(request_line)


def test_s3_archived_object_says_restore_it_first(s3_bucket: S3Storage):
    s3_bucket.client.put_object(
        Bucket=s3_bucket.bucket, Key="database/old.sql.gz", Body=b"x", StorageClass="GLACIER"
    )
    [info] = s3_bucket.list("database/")
    assert info.storage_class == "GLACIER"
    with pytest.raises(StorageError) as caught:
        s3_bucket.open("database/old.sql.gz")
    assert str(caught.value) == (
        f"s3://{s3_bucket.bucket}/database/old.sql.gz: archived (storage class GLACIER); "
        "restore it from the archive tier first"
    )


def test_s3_server_side_encryption_is_requested(
    embedded_s3: EmbeddedS3, s3_bucket: S3Storage, tmp_path: Path
):
    encrypted = s3_storage_on(embedded_s3, f"s3://{s3_bucket.bucket}", sse="AES256")
    source = tmp_path / "c.tar.gz"
    source.write_bytes(b"config")
    encrypted.put_file("config/c.tar.gz", source)
    encrypted.put_bytes("config/c.tar.gz.manifest.json", b"{}")
    for key in ("config/c.tar.gz", "config/c.tar.gz.manifest.json"):
        head = encrypted.client.head_object(Bucket=s3_bucket.bucket, Key=key)
        assert head.get("ServerSideEncryption") == "AES256"


def test_s3_open_streams_instead_of_reading_into_memory(s3_bucket: S3Storage):
    s3_bucket.put_bytes("database/s.sql", b"a" * 100_000)
    with s3_bucket.open("database/s.sql") as body:
        assert not isinstance(body, bytes | bytearray)
        assert body.read(10) == b"a" * 10
        assert len(body.read()) == 99_990


def test_credentials_in_url_are_refused_without_echoing_them():
    with pytest.raises(ConfigError) as caught:
        open_storage("s3://AKIAXXXX:s3cr3t@bucket/prefix")
    assert "credentials in the storage URL" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


@pytest.mark.parametrize("url", ["ftp://host/dir", "relative/dir", "s3://"])
def test_unsupported_urls_are_config_errors(url: str):
    with pytest.raises(ConfigError, match="s3://bucket"):
        open_storage(url)


def _delete(storage: Storage, key: str) -> None:
    if isinstance(storage, LocalStorage):
        (storage.root / key).unlink()
    else:
        assert isinstance(storage, S3Storage)
        storage.client.delete_object(Bucket=storage.bucket, Key=key)
