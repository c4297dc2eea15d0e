"""The catalog finds seed-named and manifested backups the same way on file:// and s3://."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from drills.config.errors import ConfigError, DrillError, IntegrityError, StorageError
from drills.storage import LocalStorage, Storage
from drills.storage.catalog import latest, latest_at_or_before, list_backups, oldest_in_retention
from drills.storage.manifest import Manifest, manifest_key
from drills.storage.s3 import S3Storage

SEED_DUMPS = [f"database/app_202501{day}_020000.sql.gz" for day in ("10", "11", "12", "13")]


@pytest.fixture
def seeded(backup_storage: Storage) -> Storage:
    """Four daily dumps named the seed's way, no manifests, plus a stray file."""
    for key in SEED_DUMPS:
        backup_storage.put_bytes(key, b"\x1f\x8b" + key.encode())
    backup_storage.put_bytes("database/README.txt", b"not a backup")
    return backup_storage


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def _manifest_for(started: datetime, kind: str = "database") -> bytes:
    manifest = Manifest(kind=kind, started_at=started, finished_at=started + timedelta(minutes=3))
    return manifest.to_json().encode()


def test_seed_names_without_manifests_give_utc_times_from_the_name(seeded: Storage):
    backups = list_backups(seeded, "database")
    assert [b.key for b in backups] == SEED_DUMPS
    assert {b.time_source for b in backups} == {"name"}
    newest = latest(backups)
    assert newest.key == "database/app_20250113_020000.sql.gz"
    assert newest.taken_at == _utc(2025, 1, 13, 2, 0)
    assert (newest.database, newest.format, newest.compression) == ("app", "plain", "gzip")
    assert newest.manifest is None
    assert newest.size == len(b"\x1f\x8b" + newest.key.encode())


def test_latest_at_or_before_never_picks_a_newer_backup(seeded: Storage):
    backups = list_backups(seeded, "database")
    pick = latest_at_or_before(backups, _utc(2025, 1, 12, 12, 0))
    assert pick.key == "database/app_20250112_020000.sql.gz"
    assert latest_at_or_before(backups, _utc(2025, 1, 12, 2, 0)).key == pick.key
    earlier = latest_at_or_before(backups, _utc(2025, 1, 12, 1, 59, 59))
    assert earlier.key == "database/app_20250111_020000.sql.gz"
    with pytest.raises(DrillError, match="no backup taken at or before 2025-01-01T00:00:00Z"):
        latest_at_or_before(backups, _utc(2025, 1, 1))


def test_oldest_in_retention(seeded: Storage):
    backups = list_backups(seeded, "database")
    pick = oldest_in_retention(backups, timedelta(days=2), now=_utc(2025, 1, 13, 3, 0))
    assert pick.key == "database/app_20250112_020000.sql.gz"
    with pytest.raises(DrillError, match="no backup taken between"):
        oldest_in_retention(backups, timedelta(days=1), now=_utc(2025, 2, 1))


def test_manifest_time_wins_over_the_name(seeded: Storage):
    # a server on CET named it 02:00 local; the manifest knows it was 01:00 UTC
    key = "database/app_20250114_020000.sql.gz"
    seeded.put_bytes(key, b"dump")
    seeded.put_bytes(manifest_key(key), _manifest_for(_utc(2025, 1, 14, 1, 0)))
    backups = list_backups(seeded, "database")
    chosen = latest_at_or_before(backups, _utc(2025, 1, 14, 1, 30))
    assert chosen.key == key
    assert chosen.time_source == "manifest"
    assert chosen.taken_at == _utc(2025, 1, 14, 1, 0)
    assert chosen.manifest_key == manifest_key(key)
    assert chosen.manifest is not None
    assert chosen.manifest.finished_at == _utc(2025, 1, 14, 1, 3)
    assert manifest_key(key) not in [b.key for b in backups]


def test_unparsable_manifest_is_an_error_naming_its_key(seeded: Storage):
    key = "database/app_20250114_020000.sql.gz"
    seeded.put_bytes(key, b"dump")
    seeded.put_bytes(manifest_key(key), b'{"kind": "database", "started_at": ')
    backup = latest(list_backups(seeded, "database"))
    assert backup.key == key
    assert backup.time_source == "name"
    with pytest.raises(IntegrityError, match=rf"^{manifest_key(key)}: not valid JSON"):
        _ = backup.manifest


def test_a_manifest_of_another_kind_is_a_problem(seeded: Storage):
    key = SEED_DUMPS[-1]
    seeded.put_bytes(manifest_key(key), _manifest_for(_utc(2025, 1, 13, 2, 0), kind="files"))
    backup = latest(list_backups(seeded, "database"))
    with pytest.raises(IntegrityError, match="manifest says kind 'files'"):
        _ = backup.manifest


def test_files_snapshots_ignore_current(backup_storage: Storage):
    backup_storage.put_bytes("files/20250114_020000/avatars/a.png", b"aaaa")
    backup_storage.put_bytes("files/20250114_020000/docs/b.pdf", b"bb")
    backup_storage.put_bytes("files/20250115_020000/avatars/a.png", b"aaaa")
    if isinstance(backup_storage, LocalStorage):
        (backup_storage.root / "files" / "current").symlink_to(
            backup_storage.root / "files" / "20250115_020000"
        )
    else:
        backup_storage.put_bytes("files/current", b"")  # a marker object
        backup_storage.put_bytes("files/current/avatars/a.png", b"aaaa")  # a synced live copy
    backups = list_backups(backup_storage, "files")
    assert [(b.key, b.size, b.format) for b in backups] == [
        ("files/20250114_020000/", 6, "snapshot"),
        ("files/20250115_020000/", 4, "snapshot"),
    ]
    assert latest(backups).taken_at == _utc(2025, 1, 15, 2, 0)
    assert latest(backups).is_directory


def test_config_archives_plain_and_encrypted(backup_storage: Storage):
    backup_storage.put_bytes("config/config_20250115_020000.tar.gz", b"tgz")
    backup_storage.put_bytes("config/config_20250116_020000.tar.gz.gpg", b"gpg")
    backups = list_backups(backup_storage, "config")
    assert [(b.key, b.encrypted, b.time_source) for b in backups] == [
        ("config/config_20250115_020000.tar.gz", False, "name"),
        ("config/config_20250116_020000.tar.gz.gpg", True, "name"),
    ]


def test_database_formats_custom_directory_and_zstd(backup_storage: Storage):
    backup_storage.put_bytes("database/app_20250114_020000.dump", b"PGDMP")
    backup_storage.put_bytes("database/app_20250115_020000.dir/toc.dat", b"toc")
    backup_storage.put_bytes("database/app_20250115_020000.dir/3001.dat.gz", b"12345")
    backup_storage.put_bytes("database/shop_data_20250116_020000.sql.zst", b"zst")
    backups = list_backups(backup_storage, "database")
    assert [(b.key, b.format, b.compression, b.database, b.size) for b in backups] == [
        ("database/app_20250114_020000.dump", "custom", "none", "app", 5),
        ("database/app_20250115_020000.dir/", "directory", "none", "app", 8),
        ("database/shop_data_20250116_020000.sql.zst", "plain", "zstd", "shop_data", 3),
    ]


def test_a_name_without_a_time_falls_back_to_mtime(backup_storage: Storage):
    before = datetime.now(UTC) - timedelta(seconds=5)
    backup_storage.put_bytes("database/app.sql.gz", b"dump")
    [backup] = list_backups(backup_storage, "database")
    assert backup.time_source == "mtime"
    assert before <= backup.taken_at <= datetime.now(UTC) + timedelta(seconds=5)


def test_empty_source_says_where_it_looked(backup_storage: Storage):
    backup_storage.put_bytes("config/config_20250115_020000.tar.gz", b"tgz")
    with pytest.raises(StorageError) as caught:
        list_backups(backup_storage, "database")
    assert str(caught.value) == f"no database backups under {backup_storage.url}/database/"


def test_listing_never_downloads_backup_bodies(s3_bucket: S3Storage):
    # archived bodies cannot be downloaded at all, so listing them proves nobody tried
    key = "database/app_20250115_020000.sql.gz"
    s3_bucket.client.put_object(
        Bucket=s3_bucket.bucket, Key=key, Body=b"dump", StorageClass="GLACIER"
    )
    s3_bucket.put_bytes(manifest_key(key), _manifest_for(_utc(2025, 1, 15, 2, 0)))
    [backup] = list_backups(s3_bucket, "database")
    assert backup.time_source == "manifest"
    assert backup.storage_class == "GLACIER"


def test_custom_prefix(backup_storage: Storage):
    backup_storage.put_bytes("prod/db/app_20250115_020000.sql.gz", b"dump")
    [backup] = list_backups(backup_storage, "database", prefix="prod/db")
    assert backup.key == "prod/db/app_20250115_020000.sql.gz"


def _written(storage: Storage, key: str, when: datetime) -> None:
    """Store `key` and, on file://, set its mtime to `when` (S3 sets LastModified itself)."""
    storage.put_bytes(key, b"\x1f\x8b" + key.encode())
    if isinstance(storage, LocalStorage):
        stamp = when.timestamp()
        os.utime(storage.root / key, (stamp, stamp))


def _name(when: datetime, zone: str = "UTC") -> str:
    return when.astimezone(ZoneInfo(zone)).strftime("%Y%m%d_%H%M%S")


def test_a_name_ahead_of_its_write_time_cannot_make_a_backup_look_fresh(backup_storage):
    written = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    # A server in UTC+9 names its dumps in local time: the name says 9 h later than the truth.
    key = f"database/app_{_name(written, 'Asia/Tokyo')}.sql.gz"
    _written(backup_storage, key, written)

    backup = latest(list_backups(backup_storage, "database"))

    assert backup.taken_at == backup.written_at <= datetime.now(UTC)  # S3: LastModified
    assert backup.time_source == "mtime"
    assert backup.name_time - backup.written_at > timedelta(hours=8)
    assert "named by a clock that is not UTC" in backup.time_note
    assert "[storage] name_timezone" in backup.time_note

    zoned = latest(list_backups(backup_storage, "database", name_timezone="Asia/Tokyo"))
    assert zoned.name_time == written
    assert zoned.taken_at <= zoned.written_at + timedelta(minutes=2)


def test_a_zone_behind_utc_is_read_in_its_zone(tmp_path):
    storage = LocalStorage(tmp_path)
    written = _utc(2025, 1, 15, 7, 0, 30)  # 02:00 in New York
    _written(storage, f"database/app_{_name(written, 'America/New_York')}.sql.gz", written)

    as_utc = latest(list_backups(storage, "database"))
    zoned = latest(list_backups(storage, "database", name_timezone="America/New_York"))

    assert as_utc.taken_at == _utc(2025, 1, 15, 2, 0, 30)  # earlier than the truth: stale
    assert zoned.taken_at == written  # the truth, once the zone is known
    assert zoned.time_source == "name"


@pytest.mark.parametrize(
    ("local", "utc"),
    [
        # Europe/Berlin, fall back 2025-10-26 03:00 CEST -> 02:00 CET: 02:30 happens twice,
        # the earlier one is taken (an older time never makes a backup look fresher).
        ("20251026_013000", _utc(2025, 10, 25, 23, 30)),
        ("20251026_023000", _utc(2025, 10, 26, 0, 30)),
        ("20251026_033000", _utc(2025, 10, 26, 2, 30)),
        # spring forward 2025-03-30 02:00 CET -> 03:00 CEST
        ("20250330_013000", _utc(2025, 3, 30, 0, 30)),
        ("20250330_033000", _utc(2025, 3, 30, 1, 30)),
    ],
)
def test_names_across_a_dst_change(tmp_path, local, utc):
    storage = LocalStorage(tmp_path)
    key = f"database/app_{local}.sql.gz"
    _written(storage, key, utc + timedelta(minutes=2))

    backup = latest(list_backups(storage, "database", name_timezone="Europe/Berlin"))

    assert backup.taken_at == utc
    assert backup.time_note is None


def test_a_bad_zone_is_named():
    with pytest.raises(ConfigError, match="not an IANA time zone"):
        list_backups(LocalStorage("/nonexistent"), "database", name_timezone="Mars/Olympus")


def test_an_empty_newest_snapshot_is_the_latest(backup_storage: Storage):
    """The uploads mount vanished: `cp -al` made an empty dated directory (a folder marker on
    S3). It is the newest snapshot, and skipping it would drill the one before."""
    backup_storage.put_bytes("files/20250114_020000/avatars/a.png", b"aaaa")
    if isinstance(backup_storage, LocalStorage):
        (backup_storage.root / "files" / "20250115_020000").mkdir()
    else:
        backup_storage.client.put_object(
            Bucket=backup_storage.bucket, Key="files/20250115_020000/", Body=b""
        )
    backups = list_backups(backup_storage, "files")
    newest = latest(backups)
    assert (newest.key, newest.objects, newest.size) == ("files/20250115_020000/", 0, 0)
    assert [b.objects for b in backups] == [1, 0]


def test_a_snapshot_whose_manifest_is_all_that_is_left_is_listed(backup_storage: Storage):
    backup_storage.put_bytes("files/20250114_020000/avatars/a.png", b"aaaa")
    backup_storage.put_bytes(
        "files/20250115_020000.manifest.json", _manifest_for(_utc(2025, 1, 15, 2, 0), kind="files")
    )
    newest = latest(list_backups(backup_storage, "files"))
    assert (newest.key, newest.objects, newest.time_source) == (
        "files/20250115_020000/",
        0,
        "manifest",
    )


def test_a_snapshot_of_old_uploads_is_taken_when_its_name_says(tmp_path):
    """rsync -a and cp -al keep the uploads' own times: a snapshot taken now of files
    untouched for years was written now, not years ago."""
    storage = LocalStorage(tmp_path)
    name = _name(datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5))
    old = datetime(2020, 1, 1, tzinfo=UTC).timestamp()
    _written(storage, f"files/{name}/avatars/a.png", datetime.fromtimestamp(old, UTC))

    backup = latest(list_backups(storage, "files"))

    assert (backup.time_source, backup.time_note) == ("name", None)
    assert backup.written_at > datetime.now(UTC) - timedelta(minutes=1)
