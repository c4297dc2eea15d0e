"""Retention that cannot lose data, and backups that must be plausible to count: `drill backup`
against a real Postgres 15 and the embedded S3, as cron runs it.

Found cases made for real: pruning removed the user's own cron dumps and config archives
(default 30 days, and `--retention-days 3`); a dump of an empty database exited 0 and the same
run pruned the good backups."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drills.backup.common import stamp
from drills.runtime.estate import APP_DIR, run_sql_file
from drills.storage import LocalStorage
from drills.storage.catalog import list_backups
from drills.storage.manifest import Manifest, manifest_key
from drills.storage.s3 import S3Storage
from tests.producer_kit import DB, config, drill, old_backups, pg_env, production, s3_env


@pytest.fixture(scope="module")
def pg(run_session, postgres_image):
    """Production: `drishti` with data; `wiped` (no tables); `truncated` (tables, no rows);
    `shrunk` (one row left)."""
    sql = tuple(f"CREATE DATABASE {name}" for name in ("wiped", "truncated", "shrunk"))
    with production(run_session, postgres_image, sql=sql) as server:
        for name in ("truncated", "shrunk"):
            run_sql_file(server, APP_DIR / "schema.sql", name)
        with server.connect("shrunk", autocommit=True) as conn:
            conn.execute("INSERT INTO users (email, name) VALUES ('a@example.test', 'A')")
        yield server


@pytest.fixture
def env(pg, embedded_s3) -> dict[str, str]:
    """What cron's environment file holds: the database's and the bucket's credentials."""
    return {**pg_env(pg), **s3_env(embedded_s3)}


def _pruning(tmp_path: Path, bucket: S3Storage, server, keep_min: int) -> Path:
    """A drill.toml that prunes past 30 days, with local copies in tmp_path/local."""
    backup = f'local_dir = "{tmp_path / "local"}"\nprune = true\nretention_days = 30\n'
    backup += f"keep_min = {keep_min}"
    return config(tmp_path, bucket.url, endpoint_url=server.endpoint_url, backup=backup)


def _keys(storage) -> set[str]:
    return {info.key for info in storage.list("") if "/.drill-lock" not in info.key}


def _ours(storage, kind: str = "database") -> list[str]:
    return [b.key for b in list_backups(storage, kind) if b.manifest_key]


def test_pruning_never_touches_backups_the_producer_did_not_make(
    env, embedded_s3, s3_bucket: S3Storage, tmp_path: Path
):
    now = datetime.now(UTC)
    local = tmp_path / "local"
    theirs = {
        f"database/{DB}_{stamp(now - timedelta(days=45))}.sql.gz": gzip.compress(b"-- theirs"),
        f"database/{DB}_{stamp(now - timedelta(days=90))}.sql.gz": gzip.compress(b"-- theirs"),
    }
    for days in (5, 10, 20, 40):
        theirs[f"config/config_{stamp(now - timedelta(days=days))}.tar.gz"] = b"their archive"
    for key, data in theirs.items():
        s3_bucket.put_bytes(key, data)
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(data)
    app_env = tmp_path / ".env.production"
    app_env.write_text("SECRET_KEY=x\n")
    extra = f'[config]\npaths = ["{app_env}"]\n'
    plain = config(
        tmp_path / "a", s3_bucket.url, endpoint_url=embedded_s3.endpoint_url,
        backup=f'local_dir = "{local}"', extra=extra,
    )  # fmt: skip
    pruning = config(
        tmp_path / "b", s3_bucket.url, endpoint_url=embedded_s3.endpoint_url,
        backup=f'local_dir = "{local}"\nprune = true\nkeep_min = 1', extra=extra,
    )  # fmt: skip

    runs = [
        drill("backup", "database", "--config", str(plain), env=env),
        drill("backup", "database", "--config", str(plain), "--retention-days", "3", env=env),
        drill("backup", "database", "--config", str(pruning), "--retention-days", "3", env=env),
        drill("backup", "config", "--config", str(pruning), "--retention-days", "3", env=env),
    ]

    for done in runs:
        assert done.returncode == 0, done.stderr
        assert "pruned" not in done.stdout
    assert set(theirs) <= _keys(s3_bucket)
    for key, data in theirs.items():
        assert (local / key).read_bytes() == data
    assert len(_ours(s3_bucket)) == 3
    assert len(_ours(s3_bucket, "config")) == 1


def test_pruning_removes_our_old_backups_from_storage_and_local_dir_keeping_keep_min(
    env, embedded_s3, s3_bucket: S3Storage, tmp_path: Path
):
    local = tmp_path / "local"
    cfg = _pruning(tmp_path, s3_bucket, embedded_s3, keep_min=2)
    old = old_backups(cfg, env, [s3_bucket, LocalStorage(local)], (42, 41, 40))
    foreign = f"database/{DB}_{stamp(datetime.now(UTC) - timedelta(days=60))}.sql.gz"
    s3_bucket.put_bytes(foreign, gzip.compress(b"-- theirs"))

    dry = drill("backup", "database", "--config", str(cfg), "--dry-run-prune", env=env)
    after_dry = _keys(s3_bucket)
    real = drill("backup", "database", "--config", str(cfg), env=env)

    assert dry.returncode == 0, dry.stderr
    would = [ln for ln in dry.stdout.splitlines() if "would prune (--dry-run-prune)" in ln]
    expected = {f"{s3_bucket.url}/{k}" for k in old[:2]} | {
        f"{local.as_uri()}/{k}" for k in old[:2]
    }
    assert {ln.rsplit(" ", 1)[-1] for ln in would} == expected
    assert all(k in after_dry and manifest_key(k) in after_dry for k in old)
    assert real.returncode == 0, real.stderr
    pruned = {ln.rsplit(" ", 1)[-1] for ln in real.stdout.splitlines() if "pruned:" in ln}
    assert pruned == {f"{s3_bucket.url}/{k}" for k in old} | {f"{local.as_uri()}/{k}" for k in old}
    kept = _keys(s3_bucket)
    assert not any(k in kept or manifest_key(k) in kept for k in old)
    assert not any((local / k).exists() or (local / manifest_key(k)).exists() for k in old)
    assert foreign in kept
    assert len(_ours(s3_bucket)) == 2  # keep_min: the dry run's backup and the last one
    assert len(_ours(LocalStorage(local))) == 2


def test_a_dump_of_an_empty_database_is_suspect_exits_1_and_prunes_nothing(
    env, embedded_s3, s3_bucket: S3Storage, tmp_path: Path
):
    local = tmp_path / "local"
    cfg = _pruning(tmp_path, s3_bucket, embedded_s3, keep_min=1)
    good = old_backups(cfg, env, [s3_bucket, LocalStorage(local)], (61, 60))

    # the wrong database under the right name: no tables at all
    done = drill("backup", "database", "--config", str(cfg), "--dsn", "dbname=wiped", env=env)

    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "stored, but SUSPECT: no tables: the database is empty" in done.stderr
    assert "nothing was pruned" in done.stderr
    assert "pruned:" not in done.stdout
    listed = list_backups(s3_bucket, "database")
    assert all(k in {b.key for b in listed} for k in good)
    assert all((local / k).exists() for k in good)
    [suspect] = [b for b in listed if b.key not in good]
    raw = json.loads(s3_bucket.read_bytes(suspect.manifest_key))
    assert raw["suspect"][0] == (
        "no tables: the database is empty (the wrong database, or a wiped one?)"
    )
    assert "under a tenth of the previous backup" in raw["suspect"][1]
    assert (raw["producer"], raw["estate"]) == ("recovery-drills", "estate")
    assert suspect.manifest.extra["suspect"] == raw["suspect"]
    assert suspect.manifest.tables == ()


def test_no_rows_or_a_tenth_of_the_previous_size_is_suspect(
    env, embedded_s3, s3_bucket: S3Storage, tmp_path: Path
):
    cfg = config(tmp_path, s3_bucket.url, endpoint_url=embedded_s3.endpoint_url)
    good = drill("backup", "database", "--config", str(cfg), env=env)

    truncated = drill(
        "backup", "database", "--config", str(cfg), "--dsn", "dbname=truncated", env=env
    )
    shrunk = drill("backup", "database", "--config", str(cfg), "--dsn", "dbname=shrunk", env=env)

    assert good.returncode == 0, good.stderr
    assert truncated.returncode == 1
    assert "SUSPECT: no rows in any of its 3 tables (truncated, or wiped?)" in truncated.stderr
    assert "under a tenth of the previous backup database/drishti_" in truncated.stderr
    assert shrunk.returncode == 1
    assert "no rows" not in shrunk.stderr
    assert "SUSPECT: " in shrunk.stderr
    assert "under a tenth of the previous backup" in shrunk.stderr
    manifests = [b.manifest for b in list_backups(s3_bucket, "database")]
    assert [bool(m.extra.get("suspect")) for m in manifests] == [False, True, True]
    assert all(isinstance(m, Manifest) for m in manifests)
