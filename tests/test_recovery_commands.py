"""`drill restore database|files|config` and `drill runbook`, run as a user runs them: the CLI
as a subprocess against a real Postgres server, real directories and real backups.

Every refusal and failure is checked for what a user would notice: the exit code, the cause in
the message, and the original (database, directory, files) exactly as it was.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pty
import socket
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fixtures.estate_backups import (
    DB,
    Dump,
    drill_cli,
    put_config_archive,
    put_database_dump,
    put_files_snapshot,
    stamp,
    uploads,
    write_drill_toml,
)
from fixtures.upload_trees import config_tree, runbook_config_archive

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("users", "transactions", "audit_logs")
CHECKS = '["SELECT count(*) > 0 FROM users"]'
PASSPHRASE_ENV = "TEST_RECOVERY_PASSPHRASE"


@pytest.fixture(scope="module")
def production(run_session, postgres_image):
    """A "production" server; each test resets its database to the backup plus later changes."""
    from drills.runtime.postgres import start_postgres

    pg = start_postgres(postgres_image, run_session)
    yield pg
    pg.stop()


@pytest.fixture
def estate(production, estate_dump, local_storage, tmp_path):
    """The production database as the backup left it, then changed; its backup in storage."""
    with production.connect(autocommit=True) as conn:
        names = conn.execute(
            "SELECT datname FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres'"
        ).fetchall()
        for (name,) in names:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB}"')
    sql = gzip.decompress(estate_dump.data)
    result = production.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", DB], stdin=sql)
    assert result.returncode == 0, result.stderr
    with production.connect(DB, autocommit=True) as conn:
        conn.execute("INSERT INTO users (email, name) VALUES ('late@example.test', 'Late')")
        conn.execute("DELETE FROM audit_logs WHERE id <= 100")
    key = put_database_dump(local_storage, estate_dump)
    config = write_drill_toml(
        tmp_path, local_storage.url, f'[database]\nname = "{DB}"\nchecks = {CHECKS}\n'
    )
    return {"pg": production, "key": key, "config": config, "changed": counts(production, DB)}


def counts(pg, dbname: str) -> dict[str, int]:
    with pg.connect(dbname) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def databases(pg) -> set[str]:
    with pg.connect() as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE NOT datistemplate").fetchall()
    return {name for (name,) in rows}


def dsn(pg, dbname: str = DB) -> str:
    """The DSN a user types: no password (it comes from PGPASSWORD)."""
    return f"postgresql://{pg.user}@127.0.0.1:{pg.port}/{dbname}"


def drill(cwd: Path, *args: str, pg=None, stdin=subprocess.DEVNULL, timeout: float = 240):
    env = {**os.environ, **({"PGPASSWORD": pg.password} if pg else {})}
    return drill_cli(*args, cwd=cwd, env=env, timeout=timeout, stdin=stdin)


def drill_at_terminal(cwd: Path, *args: str, pg, typed: str, timeout: float = 240):
    """The CLI with a terminal on stdin, on which `typed` is typed."""
    primary, secondary = pty.openpty()
    try:
        env = {**os.environ, "PGPASSWORD": pg.password}
        proc = subprocess.Popen(
            [sys.executable, "-m", "drills.cli", *args],
            stdin=secondary,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=env,
        )
        os.write(primary, typed.encode() + b"\n")
        out, err = proc.communicate(timeout=timeout)
    finally:
        os.close(primary)
        os.close(secondary)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def restore_args(estate) -> list[str]:
    return ["restore", "database", "--config", str(estate["config"]), "--to", dsn(estate["pg"])]


def left_over(pg) -> set[str]:
    return {name for name in databases(pg) if "_restore_" in name}


def test_database_restore_confirmed_at_the_terminal(estate, estate_dump, tmp_path):
    pg = estate["pg"]
    result = drill_at_terminal(tmp_path, *restore_args(estate), pg=pg, typed=DB)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert pg.password not in output
    assert f"backup:     {estate['key']}" in output
    assert counts(pg, DB) == estate_dump.counts
    kept = [name for name in databases(pg) if name.startswith(f"{DB}_before_")]
    assert len(kept) == 1, databases(pg)
    assert counts(pg, kept[0]) == estate["changed"]
    assert f"the previous database is kept as {kept[0]}" in output
    assert not left_over(pg)

    # The safety dump is a backup like any other: the same command restores it.
    dumps = list((tmp_path / "safety-dumps" / "database").glob(f"{DB}_*.dump"))
    assert len(dumps) == 1
    assert stat.S_IMODE(dumps[0].stat().st_mode) == 0o600
    again = drill(
        tmp_path,
        "restore", "database", "--config", str(estate["config"]), "--yes", "--no-safety-dump",
        "--to", dsn(pg, "safety_check"),
        "--storage-url", (tmp_path / "safety-dumps").as_uri(),
        "--backup", f"database/{dumps[0].name}",
        pg=pg,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert counts(pg, "safety_check") == estate["changed"]


def test_a_clean_create_dump_never_drops_the_database_it_replaces(
    estate, estate_dump, local_storage, tmp_path
):
    # `pg_dump --clean --create` starts with DROP DATABASE <db>; CREATE DATABASE <db>;
    # \connect <db>: run as written beside production, it would drop production itself.
    pg = estate["pg"]
    original = estate["changed"]
    made = pg.run(["pg_dump", "--clean", "--create", "-d", DB], timeout=120)
    assert made.returncode == 0, made.stderr
    assert b"DROP DATABASE" in made.stdout
    assert b"\\connect" in made.stdout
    key = f"database/{DB}_{stamp(timedelta(minutes=1))}.sql.gz"
    local_storage.put_bytes(key, gzip.compress(made.stdout))
    with pg.connect(DB, autocommit=True) as conn:
        conn.execute("INSERT INTO users (email, name) VALUES ('after@example.test', 'After')")

    result = drill(tmp_path, *restore_args(estate), "--yes", "--backup", key, pg=pg)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert counts(pg, DB) == original  # the dump's content, restored beside and swapped in
    kept = [name for name in databases(pg) if name.startswith(f"{DB}_before_")]
    assert len(kept) == 1, databases(pg)
    assert counts(pg, kept[0])["users"] == original["users"] + 1  # production, untouched
    assert not left_over(pg)


def test_a_wrong_name_typed_replaces_nothing(estate, tmp_path):
    pg = estate["pg"]
    result = drill_at_terminal(tmp_path, *restore_args(estate), pg=pg, typed="drishti")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "is not 'drishti_production'; nothing was changed" in result.stderr
    assert counts(pg, DB) == estate["changed"]
    assert databases(pg) == {"postgres", DB}
    assert not (tmp_path / "safety-dumps").exists()


def test_without_a_terminal_it_needs_yes(estate, tmp_path):
    pg = estate["pg"]
    result = drill(tmp_path, *restore_args(estate), pg=pg)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "stdin is not a terminal" in result.stderr
    assert "--yes" in result.stderr
    assert "Restore plan (database):" in result.stdout
    assert counts(pg, DB) == estate["changed"]
    assert databases(pg) == {"postgres", DB}


def test_an_unknown_backup_key_stops_before_anything(estate, tmp_path):
    pg = estate["pg"]
    result = drill(
        tmp_path, *restore_args(estate), "--backup", "database/nope.sql.gz", "--yes", pg=pg
    )

    assert result.returncode == 2, result.stdout + result.stderr
    assert "no database backup with the key 'database/nope.sql.gz'" in result.stderr
    assert estate["key"] in result.stderr  # the newest are listed
    assert databases(pg) == {"postgres", DB}


def test_an_unreachable_target_stops_before_anything(estate, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    args = ["restore", "database", "--config", str(estate["config"]), "--yes"]
    result = drill(tmp_path, *args, "--to", f"postgresql://drill@127.0.0.1:{port}/{DB}")

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"target server 127.0.0.1:{port}: cannot connect" in result.stderr
    assert "nothing was changed" in result.stderr


def test_a_cut_dump_fails_and_leaves_the_original(estate, estate_dump, local_storage, tmp_path):
    pg = estate["pg"]
    cut = estate_dump.data[: len(estate_dump.data) // 2]
    key = f"database/{DB}_{stamp(timedelta(minutes=1))}.sql.gz"
    local_storage.put_bytes(key, cut)  # the seed's way: no manifest, a truncated upload

    result = drill(tmp_path, *restore_args(estate), "--yes", pg=pg)

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert key in result.stderr
    assert "gzip stream is corrupt or ends early" in result.stderr
    assert f"nothing was replaced: {DB} is as it was" in result.stderr
    assert counts(pg, DB) == estate["changed"]
    assert not left_over(pg)
    assert not any(name.startswith(f"{DB}_before_") for name in databases(pg))


def test_a_failed_verification_drops_the_restore(estate, estate_dump, local_storage, tmp_path):
    pg = estate["pg"]
    claims = {**estate_dump.counts, "users": estate_dump.counts["users"] + 7}
    put_database_dump(local_storage, Dump(estate_dump.data, claims), age=timedelta(minutes=1))

    result = drill(tmp_path, *restore_args(estate), "--yes", pg=pg)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed verification: row counts equal the manifest's exact counts" in result.stderr
    assert f"public.users: manifest {claims['users']}, restored" in result.stderr
    assert counts(pg, DB) == estate["changed"]
    assert databases(pg) == {"postgres", DB}


def test_no_room_for_the_safety_dump_stops_before_anything(estate, tmp_path, small_disk):
    args = [*restore_args(estate), "--yes", "--safety-dump-dir", str(small_disk)]
    result = drill(tmp_path, *args, pg=estate["pg"])

    assert result.returncode == 3, result.stdout + result.stderr
    assert "not enough free space for the safety dump" in result.stderr
    assert "nothing was changed" in result.stderr
    assert databases(estate["pg"]) == {"postgres", DB}


def test_at_a_time_takes_the_latest_at_or_before_it(estate, estate_dump, local_storage, tmp_path):
    older = put_database_dump(local_storage, estate_dump, age=timedelta(hours=3))
    pg = estate["pg"]
    at = (datetime.now(UTC) - timedelta(hours=1)).isoformat()

    result = drill(tmp_path, *restore_args(estate), "--at", at, pg=pg)  # no --yes: plan only

    assert result.returncode == 2, result.stdout + result.stderr
    assert f"backup:     {older}" in result.stdout
    assert "chosen: the latest at or before" in result.stdout

    early = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    result = drill(tmp_path, *restore_args(estate), "--at", early, pg=pg)
    assert result.returncode == 1
    assert "no backup taken at or before" in result.stderr


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_files_restore_beside_then_swap(local_storage, tmp_path):
    files = uploads()
    key = put_files_snapshot(local_storage, files)
    live = tmp_path / "srv" / "uploads"
    live.mkdir(parents=True)
    (live / "avatars").mkdir()
    (live / "avatars" / "late.png").write_bytes(b"uploaded after the backup")
    before = _tree(live)
    config = write_drill_toml(
        tmp_path, local_storage.url, '[files]\nowner = "1234:2345"\nmode = "640"\n'
    )

    result = drill(tmp_path, "restore", "files", "--config", str(config), "--to", str(live))

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert key in output
    assert _tree(live) == {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}
    some = live / next(iter(files))
    assert (some.stat().st_uid, some.stat().st_gid) == (1234, 2345)
    assert stat.S_IMODE(some.stat().st_mode) == 0o640
    assert stat.S_IMODE(some.parent.stat().st_mode) == 0o750
    kept = [p for p in live.parent.iterdir() if p.name.startswith("uploads.before_")]
    assert len(kept) == 1
    assert _tree(kept[0]) == before
    assert f"the previous directory is kept as {kept[0]}" in output
    assert not [p for p in live.parent.iterdir() if ".restore_" in p.name]


def test_files_a_corrupt_snapshot_leaves_the_directory(local_storage, tmp_path):
    files = uploads()
    damaged = dict(files)
    name = sorted(files)[0]
    damaged[name] = b"X" + files[name][1:]
    put_files_snapshot(local_storage, damaged, listed=files)  # the manifest knows better
    live = tmp_path / "uploads"
    live.mkdir()
    (live / "keep.txt").write_text("production data")
    config = write_drill_toml(tmp_path, local_storage.url, "[files]\n")

    result = drill(tmp_path, "restore", "files", "--config", str(config), "--to", str(live))

    assert result.returncode == 1, result.stdout + result.stderr
    assert name in result.stderr
    assert "checksum differs" in result.stderr
    assert f"nothing was replaced: {live} is as it was" in result.stderr
    assert _tree(live) == {"keep.txt": hashlib.sha256(b"production data").hexdigest()}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("uploads")) == ["uploads"]


def test_config_restore_mode_600_never_over_existing_files(local_storage, tmp_path):
    members = {
        "srv/app/.env.production": b"SECRET=s3cr3t-value\n",
        "srv/app/compose.yml": b"x: 1\n",
    }
    put_config_archive(local_storage, members, passphrase="pass phrase")
    config = write_drill_toml(
        tmp_path, local_storage.url, f'[config]\npassphrase_env = "{PASSPHRASE_ENV}"\n'
    )
    target = tmp_path / "restored"
    os.environ[PASSPHRASE_ENV] = "pass phrase"
    try:
        args = ["restore", "config", "--config", str(config), "--to", str(target)]
        first = drill(tmp_path, *args)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "s3cr3t" not in first.stdout + first.stderr
        env = target / "srv" / "app" / ".env.production"
        assert env.read_bytes() == members["srv/app/.env.production"]
        assert stat.S_IMODE(env.stat().st_mode) == 0o600
        assert stat.S_IMODE(target.stat().st_mode) == 0o700

        env.write_text("SECRET=edited-by-hand\n")
        second = drill(tmp_path, *args)
        assert second.returncode == 2, second.stdout + second.stderr
        assert "exist there already" in second.stderr
        assert "--overwrite" in second.stderr
        assert env.read_text() == "SECRET=edited-by-hand\n"

        third = drill(tmp_path, *args, "--overwrite")
        assert third.returncode == 0, third.stdout + third.stderr
        assert env.read_bytes() == members["srv/app/.env.production"]
        assert stat.S_IMODE(env.stat().st_mode) == 0o600
    finally:
        del os.environ[PASSPHRASE_ENV]


def test_runbook_has_the_commands_and_the_last_drill_times(estate, tmp_path):
    run = tmp_path / "reports" / "20250115T020000.000000Z"
    run.mkdir(parents=True)
    (tmp_path / "reports" / "latest").symlink_to(run.name)
    drills = [
        {"kind": "database", "verdict": "pass", "started_at": "2025-01-15T02:00:00+00:00",
         "phases": {"locate": 0.4, "restore": 754.0, "validate": 12.5},
         "rto": {"target_s": 7200, "measured_s": 770.2}},
        {"kind": "recovery", "verdict": "pass", "started_at": "2025-01-15T02:20:00+00:00",
         "phases": {"restore_database": 812.0, "restore_files": 95.0, "restore_config": 2.0},
         "rto": {"target_s": None, "measured_s": 915.0}},
    ]  # fmt: skip
    document = {"verdict": "pass", "finished_at": "2025-01-15T02:40:00+00:00", "drills": drills}
    (run / "drill.json").write_text(json.dumps(document))

    result = drill(tmp_path, "runbook", "--config", str(estate["config"]))

    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert f"drill restore database --config {estate['config']} --to " in text
    assert f"postgresql://USER@HOST:5432/{DB}" in text
    assert "drill restore files" not in text  # no [files] section: no uploads step
    assert "13m 32s in the recovery drill" in text  # restore_database 812 s
    assert "restore 12m 34s" in text  # the database drill's restore phase
    assert f"| database | `database/` | 1 | `{estate['key']}` |" in text
    assert "**PASS**" in text


ARCHIVE = "/archive"
ARCHIVE_COMMAND = (
    f"test ! -f {ARCHIVE}/%f && cp %p {ARCHIVE}/%f.tmp && mv {ARCHIVE}/%f.tmp {ARCHIVE}/%f"
)


@pytest.fixture(scope="module")
def archiving(run_session, postgres_image, tmp_path_factory):
    """A server archiving WAL; a base backup, then 50 rows before a time T and 50 after it,
    with heartbeats on both sides; the WAL shipped into a local storage."""
    from drills.backup.base import backup_base
    from drills.backup.common import Destination
    from drills.backup.heartbeat import run_heartbeat
    from drills.backup.wal import ship_wal
    from drills.runtime.postgres import PostgresContainer
    from drills.storage import open_storage

    workdir = tmp_path_factory.mktemp("pitr-recovery")
    archive = workdir / "archive"
    archive.mkdir()
    archive.chmod(0o777)  # the server's own user writes here through the bind mount
    settings = {"wal_level": "replica", "archive_mode": "on", "archive_command": ARCHIVE_COMMAND}
    pg = PostgresContainer(postgres_image, run_session, dbname="app", settings=settings)
    pg.with_volume_mapping(str(archive), ARCHIVE, "rw")
    pg.on_network(None)
    pg.start_ready()
    try:
        hba = 'echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"'
        assert pg.run(["sh", "-c", hba]).returncode == 0
        dsn = f"postgresql://{pg.user}:{pg.password}@127.0.0.1:{pg.port}/app"
        with pg.connect("app", autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
            conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
            conn.execute("INSERT INTO items SELECT generate_series(1, 100)")
        (workdir / "backups").mkdir()
        storage = open_storage((workdir / "backups").as_uri())
        backup_base(Destination("base/", storage=storage), dsn=dsn, fast_checkpoint=True)
        run_heartbeat(dsn, interval=0.3, count=3)
        with pg.connect("app", autocommit=True) as conn:
            conn.execute("INSERT INTO items SELECT generate_series(101, 150)")
            target = conn.execute("SELECT clock_timestamp()").fetchone()[0].astimezone(UTC)
            time.sleep(1)
            conn.execute("INSERT INTO items SELECT generate_series(151, 200)")
        run_heartbeat(dsn, interval=0.3, count=2)
        with pg.connect("app", autocommit=True) as conn:
            name = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        deadline = time.monotonic() + 30
        while not (archive / name).exists():
            assert time.monotonic() < deadline, f"{name} was not archived"
            time.sleep(0.2)
        ship_wal(storage, "wal/", archive)
        yield pg, storage, target, workdir
    finally:
        pg.stop()


def test_at_a_time_with_wal_recovers_to_that_point(archiving, tmp_path):
    pg, storage, target, _ = archiving
    config = write_drill_toml(
        tmp_path,
        storage.url,
        '[database]\nname = "app"\nchecks = ["SELECT count(*) = 150 FROM items"]\n'
        '[pitr]\ndatabase = "app"\n',
    )
    args = ["restore", "database", "--config", str(config), "--to", dsn(pg, "app"), "--yes"]

    result = drill(tmp_path, *args, "--at", target.isoformat(), pg=pg)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "chosen: point in time (base backup + WAL)" in output
    assert "point in time: base backup + WAL, then pg_dump | pg_restore" in output
    with pg.connect("app") as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 150
        newest = conn.execute("SELECT max(beat_at) FROM drill_heartbeat").fetchone()[0]
    assert newest <= target
    kept = [name for name in databases(pg) if name.startswith("app_before_")]
    with pg.connect(kept[0]) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 200

    # Before the base backup ended nothing reaches the time, and there is no dump: say both.
    early = (target - timedelta(hours=1)).isoformat()
    result = drill(tmp_path, *args, "--at", early, "--no-safety-dump", pg=pg)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no database backups under" in result.stderr
    assert "and no point-in-time recovery either: target" in result.stderr
    assert "is before the end of the oldest base backup" in result.stderr


def test_files_without_a_manifest_say_so_and_keep_nothing_that_was_not_there(
    local_storage, tmp_path
):
    put_files_snapshot(local_storage, uploads(), manifest=False)
    config = write_drill_toml(tmp_path, local_storage.url, "[files]\n")
    live = tmp_path / "new-uploads"

    result = drill(tmp_path, "restore", "files", "--config", str(config), "--to", str(live))

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "checked against the stored snapshot (no manifest), then swapped in" in output
    assert "checked against the manifest" not in output
    assert "the previous directory is kept" not in output
    assert "integrity was not provable" in output


def test_config_restore_gives_back_links_modes_and_times(local_storage, tmp_path):
    """A runbook archive (`tar -czf`) with a symlinked nginx site, a 600 key and a 755
    script: restored as a link, with its mode and time (tar's own format keeps whole
    seconds)."""
    root = tmp_path / "server"
    paths = config_tree(root)
    archive = tmp_path / "config.tar.gz"
    assert runbook_config_archive(paths, archive) == 0
    local_storage.put_bytes(
        f"config/config_{stamp(timedelta(minutes=5))}.tar.gz", archive.read_bytes()
    )
    listed = ", ".join(f'"{p}"' for p in paths)
    config = write_drill_toml(tmp_path, local_storage.url, f"[config]\npaths = [{listed}]\n")
    target = tmp_path / "restored"

    result = drill(tmp_path, "restore", "config", "--config", str(config), "--to", str(target))

    assert result.returncode == 0, result.stdout + result.stderr
    back = target / str(root).lstrip("/")
    site = back / "etc/nginx/sites-enabled/app.conf"
    assert os.readlink(site) == "../sites-available/app.conf"
    assert (
        "etc/nginx/sites-enabled/app.conf -> ../sites-available/app.conf (a link)" in result.stdout
    )
    for path in ("etc/ssl/private/app.key", "usr/local/bin/backup.sh", "srv/app/.env.production"):
        was, now = (root / path).stat(), (back / path).stat()
        assert stat.S_IMODE(now.st_mode) == stat.S_IMODE(was.st_mode), path
        assert (now.st_uid, now.st_gid) == (was.st_uid, was.st_gid), path
        assert int(now.st_mtime) == int(was.st_mtime), path
    assert (back / "etc/nginx/conf.d").is_dir()


def test_config_restore_never_writes_through_a_link_in_the_target(local_storage, tmp_path):
    members = {"srv/app/.env.production": b"SECRET=s3cr3t-value\n"}
    put_config_archive(local_storage, members)
    config = write_drill_toml(tmp_path, local_storage.url, "[config]\n")
    target, elsewhere = tmp_path / "restored", tmp_path / "elsewhere"
    target.mkdir()
    elsewhere.mkdir()
    (target / "srv").symlink_to(elsewhere)

    result = drill(
        tmp_path, "restore", "config", "--config", str(config), "--to", str(target), "--overwrite"
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert "a link in the target directory; not followed" in result.stderr
    assert list(elsewhere.iterdir()) == []
