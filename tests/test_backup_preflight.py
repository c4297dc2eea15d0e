"""Preflight and bounds: what can be known before a dump is checked before it, and no query of
the producer waits forever. Real Postgres 15, the embedded S3, a real full disk.

Found cases made for real: a missing bucket, a 403 and missing credentials each ran the whole
dump first and then threw it away; with a table locked, `drill backup database` hung in its
table-listing query, `[runtime] step_timeout` notwithstanding."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from drills.storage.s3 import S3Storage
from tests.faults.s3_proxy import FaultyS3Proxy
from tests.producer_kit import DB, config, drill, pg_env, production, s3_env

BEFORE = "checked before the backup: nothing was made"


@pytest.fixture(scope="module")
def pg(run_session, postgres_image):
    """Production with data, a partitioned table, a role that may read only part of it."""
    sql = (
        "CREATE TABLE events (id int, at date) PARTITION BY RANGE (at)",
        "CREATE TABLE events_2025 PARTITION OF events"
        " FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
        "INSERT INTO events VALUES (1, '2025-03-01')",
        "CREATE ROLE backup_ro LOGIN PASSWORD 'ro'",
        "GRANT SELECT ON users, transactions, events, events_2025 TO backup_ro",
        "GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO backup_ro",
    )
    with production(run_session, postgres_image, sql=sql) as server:
        yield server


def _sessions(pg) -> int:
    """Connections ever made to the database: a dump that never started made none."""
    with pg.connect("postgres") as conn:
        row = conn.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", (DB,)
        ).fetchone()
    return int(row[0])


@pytest.mark.parametrize("fault", ["no bucket", "403", "no credentials"])
def test_storage_problems_stop_the_run_before_the_dump(
    pg, embedded_s3, s3_bucket: S3Storage, tmp_path: Path, fault: str
):
    env = {**pg_env(pg), **s3_env(embedded_s3), "AWS_EC2_METADATA_DISABLED": "true"}
    url, causes = (
        s3_bucket.url,
        {
            "no bucket": "s3://no-such-bucket: no such bucket",
            "403": "access denied (403) — check credentials",
            "no credentials": "no credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
        },
    )
    if fault == "no bucket":
        url = "s3://no-such-bucket"
    if fault == "no credentials":
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env[name] = ""
        env["AWS_SHARED_CREDENTIALS_FILE"] = env["AWS_CONFIG_FILE"] = str(tmp_path / "none")
    staging = tmp_path / "staging"
    staging.mkdir()
    before = _sessions(pg)

    with FaultyS3Proxy(embedded_s3.endpoint_url) as proxy:
        if fault == "403":
            for method in ("HEAD", "GET", "PUT", "POST", "DELETE"):
                proxy.fail(method, "", 403)
        cfg = config(
            tmp_path, url, endpoint_url=proxy.endpoint_url, backup=f'staging_dir = "{staging}"'
        )
        done = drill("backup", "database", "--config", str(cfg), env=env)

    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert causes[fault] in done.stderr
    assert done.stderr.rstrip().endswith(BEFORE)
    assert _sessions(pg) == before  # the database was never even connected to
    assert list(staging.iterdir()) == []


def test_a_role_that_cannot_read_a_table_is_named_before_the_dump(pg, tmp_path: Path):
    with pg.connect(DB, autocommit=True) as conn:
        conn.execute("ALTER TABLE transactions ENABLE ROW LEVEL SECURITY")
    local = tmp_path / "local"
    cfg = config(tmp_path, (tmp_path / "store").as_uri(), backup=f'local_dir = "{local}"')
    env = {**pg_env(pg), "PGUSER": "backup_ro", "PGPASSWORD": "ro"}
    try:
        done = drill("backup", "database", "--config", str(cfg), "--no-upload", env=env)
    finally:
        with pg.connect(DB, autocommit=True) as conn:
            conn.execute("ALTER TABLE transactions DISABLE ROW LEVEL SECURITY")

    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"database {DB} at 127.0.0.1:{pg.port}: role backup_ro cannot dump " in done.stderr
    assert "public.audit_logs (no SELECT)" in done.stderr
    assert "public.transactions (row-level security applies" in done.stderr
    assert "public.users" not in done.stderr
    assert "nothing was dumped" in done.stderr
    assert not any(p.is_file() for p in local.rglob("*"))


def test_no_room_in_the_staging_dir_is_named_before_the_dump(
    pg, embedded_s3, s3_bucket: S3Storage, small_disk: Path, tmp_path: Path
):
    env = {**pg_env(pg), **s3_env(embedded_s3)}
    roomy = config(tmp_path / "cfg-roomy", s3_bucket.url, endpoint_url=embedded_s3.endpoint_url)
    small = config(
        tmp_path / "cfg-small", s3_bucket.url, endpoint_url=embedded_s3.endpoint_url,
        backup=f'staging_dir = "{small_disk}"',
    )  # fmt: skip
    assert drill("backup", "database", "--config", str(roomy), env=env).returncode == 0
    before = _sessions(pg)

    done = drill("backup", "database", "--config", str(small), env=env)

    assert done.returncode == 1
    assert done.stderr.startswith(f"drill: {small_disk}/drill-backup-")
    assert " free, the previous backup database/drishti_" in done.stderr
    assert "no room for the next one; checked before the backup: nothing was made" in done.stderr
    assert list(small_disk.iterdir()) == []
    assert _sessions(pg) == before + 1  # connected to check the source, never dumped


def _migration(pg, statement: str) -> psycopg.Connection:
    """A session that takes a lock and sits on it, as a stuck migration does."""
    conn = psycopg.connect(
        host="127.0.0.1", port=pg.port, user=pg.user, password=pg.password, dbname=DB,
        application_name="migration",
    )  # fmt: skip
    conn.execute(statement)
    return conn


@pytest.mark.parametrize(
    ("statement", "table", "doing", "bounds"),
    [
        (
            "LOCK TABLE users IN ACCESS EXCLUSIVE MODE",
            "public.users",
            "gave up counting rows after waiting 2 s for a lock: ",
            'lock_timeout = "2s"',
        ),
        (
            "LOCK TABLE ONLY events IN ACCESS EXCLUSIVE MODE",
            "public.events",
            "gave up locking public.events for pg_dump (drishti_",
            'lock_timeout = "2s"',
        ),
        (
            "LOCK TABLE users IN ACCESS EXCLUSIVE MODE",
            "public.users",
            "gave up counting rows after [runtime] step_timeout (2 s), waiting for a lock: ",
            'lock_timeout = "1h"\n[runtime]\nstep_timeout = "2s"',
        ),
    ],
    ids=["table listing", "pg_dump", "step_timeout"],
)
def test_a_lock_wait_ends_and_names_the_table_and_who_holds_it(
    pg, tmp_path: Path, statement: str, table: str, doing: str, bounds: str
):
    local = tmp_path / "local"
    cfg = config(tmp_path, (tmp_path / "store").as_uri(), backup=bounds)
    migration = _migration(pg, statement)
    try:
        pid = migration.info.backend_pid
        done = drill(
            "backup", "database", "--config", str(cfg), "--no-upload", "--local-dir", str(local),
            env=pg_env(pg),
        )  # fmt: skip
    finally:
        migration.close()

    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert doing in done.stderr
    assert f"{table} held by pid {pid} (user {pg.user}, application migration, " in done.stderr
    assert "idle in transaction since 20" in done.stderr
    assert statement in done.stderr
    assert "no backup was kept" in done.stderr
    assert not any(p.is_file() for p in local.rglob("*"))
