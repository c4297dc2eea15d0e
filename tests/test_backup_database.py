"""`drill backup database` against a real Postgres 15 container and real storages: the dump,
its manifest, the upload, the catalog finding it, and every failure leaving nothing behind
under a final name."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import stat
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from drills.backup import Destination, backup_database
from drills.config.errors import DrillError
from drills.runtime.estate import APP_DIR, run_sql_file
from drills.storage import LocalStorage
from drills.storage.catalog import latest, list_backups
from drills.storage.manifest import Manifest, sha256_file
from drills.storage.s3 import S3Storage
from drills.storage.s3server import EmbeddedS3
from fixtures.storage import s3_storage_on
from tests.producer_kit import pg_env, s3_env

DB = "drishti"
NAME = re.compile(rf"^database/{DB}_\d{{8}}_\d{{6}}\.sql\.gz$")


@pytest.fixture(scope="module")
def pg(run_session, postgres_image):
    """A "production" server seeded once for the module, plus a database with a big table."""
    from drills.runtime.postgres import start_postgres

    server = start_postgres(postgres_image, run_session, dbname=DB)
    try:
        run_sql_file(server, APP_DIR / "schema.sql", DB)
        run_sql_file(server, APP_DIR / "seed.sql", DB, scale="1")
        with server.connect(autocommit=True) as conn:
            conn.execute("CREATE DATABASE midway")
        with server.connect("midway", autocommit=True) as conn:
            conn.execute("CREATE TABLE a_small AS SELECT g AS id FROM generate_series(1, 100) g")
            # ~25 MB of text: pg_dump streams it for about a second, long enough to be caught
            conn.execute(
                "CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g * 7)::text)"
                " || md5((g * 13)::text) AS pad FROM generate_series(1, 250000) g"
            )
        yield server
    finally:
        server.stop()


def _gzip_of_seed_dump(pg, path: Path) -> None:
    """The original runbook's literal command: no pipefail, no manifest."""
    script = f'pg_dump -h 127.0.0.1 -p {pg.port} -U {pg.user} {DB} | gzip > "{path}"'
    subprocess.run(
        ["bash", "-c", script], env={**os.environ, "PGPASSWORD": pg.password}, check=True
    )


def test_dump_manifest_upload_and_catalog_finds_it_as_latest(
    pg, embedded_s3: EmbeddedS3, s3_bucket: S3Storage, tmp_path: Path
):
    storage = s3_storage_on(embedded_s3, s3_bucket.url, sse="AES256")
    storage.put_bytes(f"database/{DB}_20250101_020000.sql.gz", gzip.compress(b"-- old"))
    dest = Destination("database/", storage=storage, local_dir=tmp_path / "local")

    result = backup_database(dest, DB, dsn=pg.dsn(DB))

    assert NAME.match(result.key)
    found = latest(list_backups(storage, "database"))
    assert found.key == result.key
    assert (found.time_source, found.taken_at) == ("manifest", result.manifest.started_at)
    manifest = found.manifest
    assert manifest == result.manifest
    body = storage.read_bytes(result.key)
    assert (len(body), hashlib.sha256(body).hexdigest()) == (manifest.bytes, manifest.sha256)
    assert b"COPY public.users" in gzip.decompress(body)  # a complete gzip stream
    assert (manifest.format, manifest.compression, manifest.database) == ("plain", "gzip", DB)
    assert manifest.server_version.startswith("15.")
    assert manifest.pg_dump_version.startswith("15.")
    assert manifest.producer_version
    assert manifest.started_at <= manifest.finished_at
    assert {(t.name, t.rows, t.exact) for t in manifest.tables} == {
        ("public.users", 1000, True),
        ("public.transactions", 5000, True),
        ("public.audit_logs", 2000, True),
    }
    objects = manifest.extra["inventory"]  # taken in the dump's own snapshot
    assert {"public.users", "public.transactions", "public.audit_logs"} <= set(objects["table"])
    assert "public.transactions_user_id_idx" in objects["index"]
    assert "public.transactions.transactions_user_id_fkey" in objects["foreign key"]
    assert "public.users.users_email_key" in objects["unique constraint"]
    head = embedded_s3.client().head_object(Bucket=storage.bucket, Key=result.key)
    assert head["ServerSideEncryption"] == "AES256"
    local = result.local_path
    assert local == tmp_path / "local" / result.key
    assert stat.S_IMODE(local.stat().st_mode) == 0o600
    assert local.read_bytes() == body
    assert Manifest.from_json(Path(f"{local}.manifest.json").read_text()) == manifest


def test_custom_directory_and_zstd_formats(pg, local_storage: LocalStorage, tmp_path: Path):
    dest = Destination("database/", storage=local_storage, local_dir=tmp_path / "local")

    custom = backup_database(dest, DB, dsn=pg.dsn(DB), format="custom")
    directory = backup_database(dest, DB, dsn=pg.dsn(DB), format="directory")
    zstd = backup_database(dest, DB, dsn=pg.dsn(DB), compression="zstd")

    assert custom.key.endswith(".dump")
    assert local_storage.read_bytes(custom.key)[:5] == b"PGDMP"
    assert sha256_file(custom.local_path) == custom.manifest.sha256
    assert re.fullmatch(rf"database/{DB}_\d{{8}}_\d{{6}}\.dir/", directory.key)
    files = {f.path: f for f in directory.manifest.files}
    assert "toc.dat" in files
    for path, entry in files.items():
        stored = local_storage.root / directory.key / path
        assert (stored.stat().st_size, sha256_file(stored)) == (entry.size, entry.sha256)
    assert directory.manifest.bytes == sum(f.size for f in files.values())
    plain = subprocess.run(
        ["zstd", "-d", "-c", str(zstd.local_path)], capture_output=True, check=True
    ).stdout
    assert zstd.key.endswith(".sql.zst")
    assert b"COPY public.transactions" in plain
    listed = {b.key: b for b in list_backups(local_storage, "database")}
    assert listed[directory.key].format == "directory"
    assert {b.time_source for b in listed.values()} == {"manifest"}


def test_pg_dump_killed_midway_leaves_nothing_under_a_final_name(
    pg, local_storage: LocalStorage, tmp_path: Path
):
    dest = Destination("database/", storage=local_storage, local_dir=tmp_path / "local")
    earlier = backup_database(dest, "midway", dsn=pg.dsn("midway"))
    before = {p.name: p.read_bytes() for p in (tmp_path / "local" / "database").iterdir()}
    failure: list[BaseException] = []

    def dump() -> None:
        try:
            backup_database(dest, "midway", dsn=pg.dsn("midway"))
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=dump)
    worker.start()
    # How it fails midway: once pg_dump's backend is streaming the big table (COPY running,
    # earlier output already written), a second connection terminates that backend, as an
    # admin, an OOM kill or a server restart would.
    with pg.connect("midway", autocommit=True) as conn:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'pg_dump'"
                " AND query LIKE 'COPY public.big %'"
            ).fetchone()
            if row:
                conn.execute("SELECT pg_terminate_backend(%s)", row)
                break
            time.sleep(0.005)
        else:
            pytest.fail("pg_dump never started copying the big table")
    worker.join(60)

    [error] = failure
    assert isinstance(error, DrillError)
    message = str(error)
    assert "\n" not in message
    assert re.search(r"pg_dump failed \(exit 1\) after [1-9]\d* bytes", message), message
    assert "terminating connection due to administrator command" in message
    assert "nothing was kept under that name" in message
    after = {p.name: p.read_bytes() for p in (tmp_path / "local" / "database").iterdir()}
    assert after == before  # no new file, no .partial, the earlier backup untouched
    assert [b.key for b in list_backups(local_storage, "database")] == [earlier.key]


def test_seed_runbook_dumps_are_listed_with_the_time_in_their_name(
    pg, local_storage: LocalStorage, s3_bucket: S3Storage
):
    name = f"{DB}_20250115_020000.sql.gz"
    path = local_storage.root / "database" / name
    path.parent.mkdir()
    _gzip_of_seed_dump(pg, path)
    # Copied days later (as a sync to another disk does): the name holds the dump's time.
    copied = datetime(2025, 1, 20, 9, 30, tzinfo=UTC).timestamp()
    os.utime(path, (copied, copied))
    s3_bucket.put_file(f"database/{name}", path)

    for storage in (local_storage, s3_bucket):
        [backup] = list_backups(storage, "database")
        assert backup.key == f"database/{name}"
        assert (backup.time_source, backup.manifest_key) == ("name", None)
        assert backup.taken_at == datetime(2025, 1, 15, 2, 0, tzinfo=UTC)
        assert (backup.database, backup.compression) == (DB, "gzip")
    assert b"COPY public.users" in gzip.decompress(path.read_bytes())


def test_full_disk_removes_the_partial_and_keeps_earlier_backups(pg, small_disk: Path):
    earlier = small_disk / "database" / f"{DB}_20250115_020000.sql.gz"
    earlier.parent.mkdir()
    earlier.write_bytes(gzip.compress(b"-- an earlier backup"))
    dest = Destination("database/", local_dir=small_disk)

    with pytest.raises(DrillError) as caught:
        backup_database(dest, DB, dsn=pg.dsn(DB))

    message = str(caught.value)
    assert "no space left on device" in message
    assert "partial backup was removed, earlier backups are untouched" in message
    assert [p.name for p in earlier.parent.iterdir()] == [earlier.name]
    assert gzip.decompress(earlier.read_bytes()) == b"-- an earlier backup"


def _drill(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "drills.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "drill.toml"
    path.write_text(body)
    return path


def test_cli_backup_database_end_to_end(pg, tmp_path: Path):
    store = tmp_path / "store"
    store.mkdir()
    config = _config(
        tmp_path,
        f'[storage]\nurl = "{store.as_uri()}"\n\n[database]\nname = "{DB}"\n'
        f'format = "plain"\n\n[backup]\nlocal_dir = "{tmp_path / "local"}"\n',
    )
    # the DSN comes from the standard PG* variables, as the config leaves it unset
    pg_env = {
        "PGHOST": "127.0.0.1",
        "PGPORT": str(pg.port),
        "PGUSER": pg.user,
        "PGPASSWORD": pg.password,
    }

    done = _drill("backup", "database", "--config", str(config), env=pg_env)

    assert done.returncode == 0, done.stderr
    assert re.match(rf"^database: database/{DB}_\d{{8}}_\d{{6}}\.sql\.gz \(", done.stdout)
    [backup] = list_backups(LocalStorage(store), "database")
    assert backup.manifest is not None
    assert (tmp_path / "local" / backup.key).is_file()


def test_cli_bad_dsn_exits_non_zero_with_one_line(pg, tmp_path: Path):
    config = _config(tmp_path, "")
    local = tmp_path / "local"
    closed = "host=127.0.0.1 port=1 user=drill password=hunter2 connect_timeout=3"
    wrong = f"host=127.0.0.1 port={pg.port} user={pg.user} password=hunter2"

    for dsn, cause in (
        (closed, "Connection refused"),
        (wrong, f'password authentication failed for user "{pg.user}"'),
    ):
        done = _drill(
            "backup",
            "database",
            "--config",
            str(config),
            "--name",
            DB,
            "--dsn",
            dsn,
            "--local-dir",
            str(local),
            "--no-upload",
        )
        assert done.returncode == 1
        assert done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith(f"drill: database {DB} at 127.0.0.1:")
        assert cause in done.stderr
        assert "hunter2" not in done.stderr
        assert not any(p.is_file() for p in local.rglob("*"))


def test_cli_missing_config_file_exits_2(tmp_path: Path):
    done = _drill("backup", "database", "--config", str(tmp_path / "nope.toml"))

    assert done.returncode == 2
    assert done.stderr == f"drill: {tmp_path / 'nope.toml'}: no such configuration file\n"


def test_a_large_upload_prints_no_connection_pool_warnings(
    pg, embedded_s3: EmbeddedS3, s3_bucket: S3Storage, tmp_path: Path
):
    """Several multipart files at once (a directory dump of four big tables): every
    connection the uploads open fits the client's pool, so none is dropped with a warning."""
    with pg.connect(autocommit=True) as conn:
        conn.execute("CREATE DATABASE large")
    with pg.connect("large", autocommit=True) as conn:
        for n in range(4):
            conn.execute(
                f"CREATE TABLE big{n} AS SELECT g AS id, md5((g + {n})::text)"
                " || md5((g * 7)::text) || md5((g * 13)::text) AS pad"
                " FROM generate_series(1, 500000) g"
            )
    config = _config(
        tmp_path,
        f'[storage]\nurl = "{s3_bucket.url}"\nendpoint_url = "{embedded_s3.endpoint_url}"\n'
        '[database]\nname = "large"\nformat = "directory"\n',
    )
    env = {**pg_env(pg), **s3_env(embedded_s3)}

    done = _drill("backup", "database", "--config", str(config), env=env)

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    [backup] = list_backups(s3_bucket, "database")
    assert sum(1 for f in backup.manifest.files if f.size > 8 * 1024 * 1024) == 4
