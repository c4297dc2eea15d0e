"""One writer per name, everywhere: two `drill backup` runs at once (cron overlap, two hosts)
against a real Postgres 15 and the embedded S3, through slow roads.

Found case made for real: with no local directory two overlapping runs wrote the same key,
both reported success, and the stored object's sha256 differed from the surviving manifest;
with a local directory the second failed with "…partial: File exists", naming nobody."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drills.backup.common import stamp
from drills.backup.lock import process_start
from drills.storage.catalog import list_backups
from drills.storage.manifest import manifest_key
from drills.storage.s3 import S3Storage
from tests.producer_kit import DB, ROOT, SlowS3Proxy, config, drill, pg_env, production, s3_env

LOCK = f"database/.drill-lock-{DB}"


@pytest.fixture(scope="module")
def pg(run_session, postgres_image):
    """Production with enough data that a dump and its upload take a moment."""
    with production(run_session, postgres_image, scale="4") as server:
        yield server


@pytest.fixture
def env(pg, embedded_s3) -> dict[str, str]:
    """The database's and the bucket's credentials, as cron's environment file holds them."""
    return {**os.environ, **pg_env(pg), **s3_env(embedded_s3)}


def _start(cfg: Path, env: dict[str, str], *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "drills.cli", "backup", "database", "--config", str(cfg), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _assert_consistent(storage: S3Storage, client) -> None:
    """Every backup's bytes are what its manifest says; no lock and no upload is left."""
    for backup in list_backups(storage, "database"):
        body = storage.read_bytes(backup.key)
        manifest = backup.manifest
        assert (len(body), hashlib.sha256(body).hexdigest()) == (manifest.bytes, manifest.sha256)
    assert not storage.exists(LOCK)
    assert client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", []) == []


def test_two_producers_at_once_through_slow_proxies_leave_one_consistent_backup(
    env, embedded_s3, s3_bucket: S3Storage, tmp_path: Path
):
    with (
        SlowS3Proxy(embedded_s3.endpoint_url, delay=0.15) as one,
        SlowS3Proxy(embedded_s3.endpoint_url, delay=0.2) as two,
    ):
        cfgs = [
            config(tmp_path / name, s3_bucket.url, endpoint_url=proxy.endpoint_url)
            for name, proxy in (("one", one), ("two", two))
        ]
        procs = [_start(cfg, env) for cfg in cfgs]
        results = [_finish(proc) for proc in procs]

    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    winner = next(p for p, r in zip(procs, results, strict=True) if r[0] == 0)
    _, _, loser_err = next(r for r in results if r[0] == 1)
    assert loser_err.count("\n") == 1, loser_err
    assert f"{s3_bucket.url}/{LOCK}: another backup run holds it: run " in loser_err
    assert f"on host {socket.gethostname()} (pid {winner.pid})" in loser_err
    assert "not starting a second writer" in loser_err
    [backup] = list_backups(s3_bucket, "database")
    assert backup.manifest.extra["run"]["pid"] == winner.pid
    _assert_consistent(s3_bucket, embedded_s3.client())


def test_overlapping_runs_on_one_local_dir_name_the_other_run(pg, env, tmp_path: Path):
    local = tmp_path / "local"
    cfg = config(tmp_path, f"file://{tmp_path / 'unused'}")
    args = ["--no-upload", "--local-dir", str(local)]
    # a slow night: the first run waits on a table a migration holds, the next one starts
    with pg.connect(DB) as migration:
        migration.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        first = _start(cfg, env, *args)
        deadline = time.monotonic() + 60
        while not (local / LOCK).exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first run never took its lock"
            time.sleep(0.01)
        second = drill("backup", "database", "--config", str(cfg), *args, env=env)
    code, _, err = _finish(first)

    assert code == 0, err
    assert second.returncode == 1
    assert "File exists" not in second.stderr
    assert "another backup run holds it: run " in second.stderr
    assert f"(pid {first.pid})" in second.stderr
    dumps = sorted((local / "database").glob(f"{DB}_*.sql.gz"))
    assert len(dumps) == 1
    assert not list((local / "database").glob("*.partial"))
    assert not (local / LOCK).exists()


def test_a_taken_name_gets_a_unique_suffix_and_the_other_file_is_untouched(
    env, embedded_s3, s3_bucket: S3Storage, tmp_path: Path
):
    now = datetime.now(UTC)
    theirs = {
        f"database/{DB}_{stamp(now + timedelta(seconds=s))}.sql.gz": gzip.compress(b"-- theirs")
        for s in range(-1, 60)
    }
    for key, data in theirs.items():
        s3_bucket.put_bytes(key, data)
    cfg = config(tmp_path, s3_bucket.url, endpoint_url=embedded_s3.endpoint_url)

    done = drill("backup", "database", "--config", str(cfg), env=env)

    assert done.returncode == 0, done.stderr
    key = done.stdout.split()[1]
    assert re.fullmatch(rf"database/{DB}_\d{{8}}_\d{{6}}_[0-9a-f]{{6}}\.sql\.gz", key), key
    assert f"database/{DB}_{key.split('_', 1)[1][:15]}.sql.gz" in theirs
    for other, data in theirs.items():
        assert s3_bucket.read_bytes(other) == data
    [ours] = [b for b in list_backups(s3_bucket, "database") if b.manifest_key]
    assert ours.key == key
    assert ours.database == DB


def _lock_body(pid: int, host: str, until: datetime, started: str | None) -> bytes:
    return json.dumps(
        {
            "run": "0badc0ffee00",
            "host": host,
            "pid": pid,
            "pid_started": started,
            "since": "2025-01-15T02:00:00Z",
            "until": until.isoformat().replace("+00:00", "Z"),
            "writing": [],
        }
    ).encode()


def test_a_live_run_s_lock_stops_the_run_and_a_dead_one_s_is_taken_over(
    env, embedded_s3, s3_bucket: S3Storage, tmp_path: Path
):
    cfg = config(tmp_path, s3_bucket.url, endpoint_url=embedded_s3.endpoint_url)
    later = datetime.now(UTC) + timedelta(hours=1)
    alive = subprocess.Popen(["sleep", "300"])
    dead = subprocess.Popen(["sleep", "300"])
    dead_started = process_start(dead.pid)
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    try:
        host = socket.gethostname()
        s3_bucket.put_bytes(LOCK, _lock_body(alive.pid, host, later, process_start(alive.pid)))
        held = drill("backup", "database", "--config", str(cfg), env=env)
        s3_bucket.put_bytes(LOCK, _lock_body(dead.pid, host, later, dead_started))
        after_crash = drill("backup", "database", "--config", str(cfg), env=env)
        expired = datetime.now(UTC) - timedelta(minutes=1)
        s3_bucket.put_bytes(LOCK, _lock_body(4242, "another-host", expired, "1"))
        after_lease = drill("backup", "database", "--config", str(cfg), env=env)
    finally:
        alive.kill()
        alive.wait()

    assert held.returncode == 1
    assert f"run 0badc0ffee00 on host {host} (pid {alive.pid})" in held.stderr
    assert "lease until" in held.stderr
    assert after_crash.returncode == 0, after_crash.stderr
    assert after_lease.returncode == 0, after_lease.stderr
    assert len(list_backups(s3_bucket, "database")) == 2
    assert not s3_bucket.exists(LOCK)


def test_an_object_replaced_before_the_manifest_is_caught_and_never_vouched_for(
    env, embedded_s3, s3_bucket: S3Storage, tmp_path: Path
):
    """Another writer replaces the dump in the store at the worst moment: after its upload,
    while the manifest goes (the proxy triggers the real write; moto cannot time it)."""
    client = embedded_s3.client()
    replaced: list[str] = []

    def other_writer() -> None:
        [key] = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket.bucket)["Contents"]
                 if o["Key"].endswith(".sql.gz")]  # fmt: skip
        client.put_object(
            Bucket=s3_bucket.bucket, Key=key, Body=gzip.compress(b"-- other", mtime=0)
        )
        replaced.append(key)

    with SlowS3Proxy(embedded_s3.endpoint_url) as proxy:
        proxy.before("PUT", ".manifest.json", other_writer)
        cfg = config(tmp_path, s3_bucket.url, endpoint_url=proxy.endpoint_url)
        done = drill("backup", "database", "--config", str(cfg), env=env)

    assert done.returncode == 1
    [key] = replaced
    assert f"{s3_bucket.url}/{key}: the store holds " in done.stderr
    assert "another writer replaced it?" in done.stderr
    assert not s3_bucket.exists(manifest_key(key))  # nothing vouches for the other bytes
    assert s3_bucket.read_bytes(key) == gzip.compress(b"-- other", mtime=0)  # not ours to remove
    assert not s3_bucket.exists(LOCK)
