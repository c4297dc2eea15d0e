"""Point-in-time recovery end to end: a real "production" Postgres archives WAL while
`drill heartbeat` writes a row a second; `drill backup base` and `drill backup wal` put a base
backup and the WAL into the embedded S3; `drill run` recovers to a chosen time, the
heartbeat rows prove the boundary, and every fault (a missing segment, a target outside the
window, a changed segment) fails with a named cause. Never a false green."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drills.backup.wal import ship_wal
from drills.checks.recovery_point import measure_recovery_point
from drills.config.errors import IntegrityError
from drills.pitr import iso
from drills.pitr.catalog import BaseBackup, list_wal, plan_for
from drills.record import DrillRecord
from drills.restore import restore_database
from drills.runtime.postgres import PostgresContainer
from drills.storage import open_storage
from drills.storage.catalog import list_backups
from drills.storage.manifest import Manifest
from drills.storage.walfile import SEGMENT, format_lsn, segment_name
from fixtures.estate_backups import drill_cli, run_drill, write_drill_toml
from fixtures.pitr import heartbeat
from fixtures.storage import s3_storage_on

ROOT = Path(__file__).resolve().parents[1]
DB = "app"
ARCHIVE = "/archive"
# copy under a temporary name, then rename: the shipper never sees half a segment
ARCHIVE_COMMAND = (
    f"test ! -f {ARCHIVE}/%f && cp %p {ARCHIVE}/%f.tmp && mv {ARCHIVE}/%f.tmp {ARCHIVE}/%f"
)
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _drill_cli(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess:
    return drill_cli(*args, env=env, timeout=timeout, stdin=None)


class Production:
    """The module's production: its server, archive directory, storage, config, heartbeats."""

    def __init__(self, pg, archive: Path, bucket, endpoint: str, workdir: Path) -> None:
        self.pg, self.archive, self.bucket, self.endpoint = pg, archive, bucket, endpoint
        self.workdir = workdir
        self.env = {**os.environ, **S3_ENV, "PGPASSWORD": pg.password}
        self.beats: list[datetime] = []
        self.base_manifest: Manifest | None = None
        self.base_ended_at: datetime | None = None
        self.heartbeat_output = self.ship_output = ""

    def sections(self, *, target: str | None = None, archive: Path | None = None) -> str:
        dsn = f"host=127.0.0.1 port={self.pg.port} user={self.pg.user} dbname={DB}"
        lines = [
            "[pitr]",
            f'database = "{DB}"',
            f'dsn = "{dsn}"',
            f'archive_dir = "{archive or self.archive}"',
            'heartbeat_interval = "1s"',
        ]
        lines += [f'target = "{target}"'] if target else []
        lines += ["[database]", f'name = "{DB}"', 'checks = ["SELECT count(*) = 100 FROM items"]']
        return "\n".join(lines) + "\n"

    def config(self, directory: Path, bucket_url: str | None = None, **kwargs) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        return write_drill_toml(
            directory,
            bucket_url or self.bucket.url,
            self.sections(**kwargs),
            endpoint_url=self.endpoint,
        )

    def switch_and_wait(self, timeout: float = 30) -> None:
        """Close the current segment and wait until archive_command has copied it."""
        with self.pg.connect(DB, autocommit=True) as conn:
            name = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        deadline = time.monotonic() + timeout
        while not (self.archive / name).exists():
            assert time.monotonic() < deadline, f"{name} was not archived within {timeout} s"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def production(run_session, postgres_image, embedded_s3, tmp_path_factory):
    """Production archiving WAL, a heartbeat a second, one base backup and the WAL shipped."""
    workdir = tmp_path_factory.mktemp("pitr")
    archive = workdir / "archive"
    archive.mkdir()
    archive.chmod(0o777)  # the server's own user writes here through the bind mount
    pg = PostgresContainer(
        postgres_image,
        run_session,
        dbname=DB,
        settings={
            "wal_level": "replica",
            "archive_mode": "on",
            "archive_command": ARCHIVE_COMMAND,
            "archive_timeout": "1s",
        },
    )
    pg.with_volume_mapping(str(archive), ARCHIVE, "rw")
    pg.on_network(None)
    pg.start_ready()
    try:
        result = pg.run(
            ["sh", "-c", 'echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"']
        )
        assert result.returncode == 0, result.stderr
        with pg.connect(DB, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
            conn.execute("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 100) g")
        bucket_name = f"pitr-{run_session.run_id}"
        embedded_s3.client().create_bucket(Bucket=bucket_name)
        bucket = s3_storage_on(embedded_s3, f"s3://{bucket_name}")
        prod = Production(pg, archive, bucket, embedded_s3.endpoint_url, workdir)
        config = prod.config(workdir / "producer")

        with heartbeat(config, prod.env) as beat:
            time.sleep(3.5)
            base = _drill_cli(
                "backup", "base", "--config", str(config), "--fast-checkpoint", env=prod.env
            )
            assert base.returncode == 0, base.stdout + base.stderr
            assert base.stdout.startswith("base: base/"), base.stdout
            time.sleep(8.5)
        heartbeat_out = beat.output
        prod.switch_and_wait()
        shipped = _drill_cli("backup", "wal", "--config", str(config), env=prod.env)
        assert shipped.returncode == 0, shipped.stdout + shipped.stderr
        prod.ship_output = shipped.stdout
        prod.heartbeat_output = heartbeat_out
        with pg.connect(DB) as conn:
            prod.beats = [
                row[0].astimezone(UTC)
                for row in conn.execute("SELECT beat_at FROM drill_heartbeat ORDER BY beat_at")
            ]
        manifest = next(k for k in (o.key for o in bucket.list("base/")) if k.endswith(".json"))
        prod.base_manifest = Manifest.from_json(bucket.read_bytes(manifest))
        prod.base_ended_at = datetime.fromisoformat(
            prod.base_manifest.extra["server_ended_at"].replace("Z", "+00:00")
        )
        yield prod
    finally:
        pg.stop()


def _checks(drill: dict) -> dict[str, bool]:
    return {check["name"]: check["passed"] for check in drill["checks"]}


def _after_base(prod: Production, n: int) -> tuple[datetime, datetime]:
    """The n-th heartbeat after the base backup ended, and the one after it."""
    later = [b for b in prod.beats if b > prod.base_ended_at]
    assert len(later) > n + 1, f"only {len(later)} beats after the base backup"
    return later[n], later[n + 1]


def test_heartbeat_and_producers_report_what_they_did(production):
    assert "heartbeat: a row every 1 s into drill_heartbeat" in production.heartbeat_output
    assert f"{len(production.beats)} beats written" in production.heartbeat_output
    assert len(production.beats) >= 10
    gaps = [
        (b - a).total_seconds()
        for a, b in zip(production.beats, production.beats[1:], strict=False)
    ]
    assert all(0.5 < gap < 1.5 for gap in gaps), gaps
    assert " shipped, 0 already stored" in production.ship_output
    extra = production.base_manifest.extra
    assert {"start_lsn", "end_lsn", "timeline", "server_ended_at", "system_identifier"} <= set(
        extra
    )
    assert production.base_manifest.server_version.startswith("15.")


def test_recovers_to_the_target_and_the_heartbeats_prove_the_boundary(tmp_path, production):
    newest, following = _after_base(production, 3)
    target = newest + (following - newest) / 2
    outcome = run_drill(production.config(tmp_path, target=iso(target)), "pitr", env=production.env)
    assert outcome.exit == 0, outcome.output
    drill = outcome.drill("pitr")
    assert drill["verdict"] == "pass", drill["error"]
    checks = _checks(drill)
    for name in (
        "recovery stopped at the target",
        "no heartbeat after the target",
        "newest heartbeat within one interval of the target",
        "every heartbeat before the target present",
        "SQL: SELECT count(*) = 100 FROM items",
        "amcheck (btree indexes)",
    ):
        assert checks.get(name) is True, (name, drill["checks"])
    pitr = drill["pitr"]
    assert pitr["target"] == iso(target)
    assert pitr["target_source"] == "given"
    # the newest heartbeat restored is exactly production's last beat at or before T
    assert drill["recovered_point"]["data_time"] == iso(newest)
    measured = pitr["measured"]
    assert measured["base_restore_s"] > 0
    assert measured["replay_s"] > 0
    assert measured["segments_replayed"] >= 1
    assert measured["replay_mb_per_s"] > 0
    assert measured["segments_per_s"] > 0
    assert set(drill["phases"]) >= {"locate", "provision", "restore", "verify", "replay"}
    assert drill["rpo"]["measured_s"] < drill["rpo"]["target_s"]
    print(f"measured: {measured}")


def test_random_target_inside_the_window_is_recorded_for_replay(tmp_path, production):
    outcome = run_drill(production.config(tmp_path), "pitr", env=production.env)
    assert outcome.exit == 0, outcome.output
    pitr = outcome.drill("pitr")["pitr"]
    assert pitr["target_source"] == "random in the window"
    target = datetime.fromisoformat(pitr["target"].replace("Z", "+00:00"))
    assert production.base_ended_at <= target <= production.beats[-1]
    assert pitr["replay_with"] == f"drill run --only pitr --target-time {pitr['target']}"


def _bucket_without(production, embedded_s3, run_session, drop: str) -> str:
    """A copy of the module's bucket without the objects whose key starts with `drop`."""
    name = f"pitr-gap-{run_session.run_id}"
    client = embedded_s3.client()
    client.create_bucket(Bucket=name)
    for info in production.bucket.list(""):
        if not info.key.startswith(drop):
            source = {"Bucket": production.bucket.bucket, "Key": info.key}
            client.copy_object(Bucket=name, Key=info.key, CopySource=source)
    return f"s3://{name}"


def test_missing_segment_fails_naming_it_and_the_latest_recoverable_time(
    tmp_path, production, embedded_s3, run_session
):
    names = [o.key[len("wal/") : -len(".gz")] for o in production.bucket.list("wal/")]
    segments = sorted(f"wal/{n}.gz" for n in names if SEGMENT.match(n))
    start = production.base_manifest.extra["end_wal"]
    after = [k for k in segments if k[len("wal/") : -len(".gz")] > start]
    assert len(after) >= 3, after
    gone = after[len(after) // 2]
    url = _bucket_without(production, embedded_s3, run_session, gone)
    target = production.beats[-2]
    outcome = run_drill(
        production.config(tmp_path, bucket_url=url, target=iso(target)), "pitr", env=production.env
    )
    assert outcome.exit == 1, outcome.output
    error = outcome.drill("pitr")["error"]
    # the hole is named first, though the recovery to the target then fails too
    assert error.startswith("check failed: WAL continuous over the promised window: "), error
    assert f"{gone} is missing (the first missing WAL segment" in error, error
    assert "the latest recoverable time from base/" in error, error
    assert "recoverable window: " in error, error


@pytest.mark.parametrize("where", ["before the base backup", "after the newest WAL"])
def test_target_outside_the_window_fails_naming_the_window(tmp_path, production, where):
    if where == "before the base backup":
        target, words = production.base_ended_at - timedelta(minutes=5), "is before the end of"
    else:
        target, words = production.beats[-1] + timedelta(hours=1), "is at or after the newest"
    outcome = run_drill(production.config(tmp_path, target=iso(target)), "pitr", env=production.env)
    assert outcome.exit == 1, outcome.output
    error = outcome.drill("pitr")["error"]
    assert words in error, error
    assert "recoverable window: " in error, error
    assert " .. " in error, error
    assert outcome.drill("pitr")["pitr"]["target"] == iso(target)


def test_wal_shipping_is_exactly_once(tmp_path, production):
    # a still copy of the archive: production goes on archiving a segment now and then
    archive = tmp_path / "archive"
    shutil.copytree(production.archive, archive)
    config = production.config(tmp_path / "again", archive=archive)
    first = _drill_cli("backup", "wal", "--config", str(config), env=production.env)
    assert first.returncode == 0, first.stderr
    again = _drill_cli("backup", "wal", "--config", str(config), env=production.env)
    assert again.returncode == 0, again.stderr
    stored = len([p for p in archive.iterdir() if not p.name.startswith(".")])
    assert again.stdout.startswith(f"wal: 0 shipped, {stored} already stored"), again.stdout
    drained = _drill_cli(
        "backup", "wal", "--config", str(config), "--remove-shipped", env=production.env
    )
    assert f"removed {stored} shipped files" in drained.stdout, drained.stdout
    assert not [p for p in archive.iterdir() if not p.name.startswith(".")]

    segment = sorted(p for p in production.archive.iterdir() if SEGMENT.match(p.name))[1]
    changed = tmp_path / "changed-archive"
    changed.mkdir()
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (changed / segment.name).write_bytes(bytes(data))
    config = production.config(tmp_path / "tampered", archive=changed)
    refused = _drill_cli("backup", "wal", "--config", str(config), env=production.env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"wal/{segment.name}.gz is stored already with different contents" in refused.stderr
    assert "not overwriting it" in refused.stderr
    assert (changed / segment.name).exists()  # refused files are never removed


def test_dump_restore_reports_the_heartbeat_recovered_point(production, postgres_factory):
    dump = production.pg.run(["pg_dump", "-d", DB], timeout=120)
    assert dump.returncode == 0, dump.stderr

    store = production.workdir / "dumps"
    (store / "database").mkdir(parents=True, exist_ok=True)
    key = f"database/{DB}_20000101_000000.sql"
    (store / key).write_bytes(dump.stdout)

    storage = open_storage(store.as_uri())
    backup = list_backups(storage, "database")[0]
    target = postgres_factory(dbname="postgres", user="postgres")
    restore_database(storage, backup, target, DB, timeout=120)
    record = DrillRecord("database")
    file_time = datetime(2000, 1, 1, tzinfo=UTC)
    with target.connect(DB) as conn:
        point = measure_recovery_point(conn, record, file_time)
    assert point == production.beats[-1]
    info = record.extra["recovered_point"]
    assert info["source"] == "heartbeat"
    assert info["data_time"] == iso(production.beats[-1])
    assert info["file_time"] == iso(file_time)
    assert info["disagree"] is True
    assert any("newer than its data" in n or "older than its data" in n for n in record.notes)


def _segment(tli: int, segno: int, seg: int = 1 << 20, system: int = 7) -> bytes:
    """A WAL segment as PostgreSQL 15 opens one: its long page header, then zeros."""
    header = struct.pack("<HHIQI", 0xD110, 2, tli, segno * seg, 0).ljust(24, b"\0")
    header += struct.pack("<QII", system, seg, 8192)
    return header.ljust(seg, b"\0")


def _base(storage, start: int, end: int, tli: int = 1, seg: int = 1 << 20) -> BaseBackup:
    ended = datetime.now(UTC)
    manifest = Manifest(
        kind="base",
        started_at=ended,
        finished_at=ended,
        format="tar",
        server_version="15.18",
        extra={
            "start_lsn": format_lsn(start),
            "end_lsn": format_lsn(end),
            "timeline": tli,
            "segment_size": seg,
            "system_identifier": "7",
        },
    )
    return BaseBackup("base/20250101_000000/", manifest)


def test_plan_follows_a_timeline_switch_and_names_a_gap(tmp_path, local_storage):
    mb = 1 << 20
    archive = tmp_path / "archive"
    archive.mkdir()
    for tli, segnos in ((1, range(1, 6)), (2, range(4, 8))):
        for segno in segnos:
            (archive / segment_name(tli, segno, mb)).write_bytes(_segment(tli, segno))
    (archive / "00000002.history").write_text(f"1\t{format_lsn(4 * mb + 0x100)}\tpromoted\n")
    shipped = ship_wal(local_storage, "wal/", archive)
    assert len(shipped.shipped) == 10
    assert shipped.shipped[0] == "00000002.history"

    listing = list_wal(local_storage, "wal/")
    plan = plan_for(_base(local_storage, 2 * mb + 0x28, 2 * mb + 0x100), listing, local_storage)
    assert plan.target_timeline == 2
    assert plan.histories == ("00000002.history",)
    # before the switch timeline 1's segments, from the switch's segment on timeline 2's
    expected = [segment_name(1, 2, mb), segment_name(1, 3, mb)]
    expected += [segment_name(2, n, mb) for n in (4, 5, 6, 7)]
    assert list(plan.segments) == expected
    assert plan.first_missing is None

    for suffix in (".gz", ".gz.manifest.json"):
        (local_storage.root / f"wal/{segment_name(2, 5, mb)}{suffix}").unlink()
    gap = plan_for(_base(local_storage, 2 * mb + 0x28, 2 * mb + 0x100), list_wal(
        local_storage, "wal/"), local_storage)  # fmt: skip
    assert gap.last == segment_name(2, 4, mb)
    assert gap.first_missing == segment_name(2, 5, mb)

    # a base backup that ends after the switch on timeline 1 does not lead to timeline 2
    late = plan_for(_base(local_storage, 4 * mb + 0x200, 4 * mb + 0x300), listing, local_storage)
    assert late.target_timeline == 1
    assert list(late.segments) == [segment_name(1, 4, mb), segment_name(1, 5, mb)]


def test_a_partial_segment_is_refused_and_nothing_after_it_shipped(tmp_path, local_storage):
    mb = 1 << 20
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / segment_name(1, 1, mb)).write_bytes(_segment(1, 1))
    (archive / segment_name(1, 2, mb)).write_bytes(_segment(1, 2)[: mb // 2])
    (archive / segment_name(1, 3, mb)).write_bytes(_segment(1, 3))
    (archive / f"{segment_name(1, 4, mb)}.tmp").write_bytes(b"being copied")
    with pytest.raises(IntegrityError) as caught:
        ship_wal(local_storage, "wal/", archive)
    message = str(caught.value)
    assert f"{segment_name(1, 2, mb)}: 524288 bytes, but its header says segments are" in message
    assert "a partial copy?" in message
    assert "1 shipped before it" in message
    stored = {o.key for o in local_storage.list("wal/")}
    assert f"wal/{segment_name(1, 3, mb)}.gz" not in stored
