"""The database drill, end to end through `drill run`: a clean dump passes, and every broken
dump made here for real (cut, flipped, empty, garbage, wrong database, failing SQL, lying
manifest, stale) fails with exit 1 and a named cause. Never a false green."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drills.estate import APP_DIR, run_sql_file
from drills.manifest import Manifest, TableCount

DB = "drishti_production"
ROOT = Path(__file__).resolve().parents[1]


def _pg_dump(pg, dbname: str, *extra: str) -> bytes:
    env = {**os.environ, "PGPASSWORD": pg.password}
    argv = ["pg_dump", "-h", "127.0.0.1", "-p", str(pg.port), "-U", pg.user, *extra, dbname]
    return subprocess.run(argv, env=env, capture_output=True, check=True, timeout=120).stdout


@pytest.fixture(scope="module")
def dumps(run_session, postgres_image):
    """Real dumps of a real "production" database, made once for the module."""
    from drills.runtime.postgres import start_postgres

    pg = start_postgres(postgres_image, run_session, dbname=DB)
    try:
        run_sql_file(pg, APP_DIR / "schema.sql", DB)
        run_sql_file(pg, APP_DIR / "seed.sql", DB, scale="1")
        with pg.connect(autocommit=True) as conn:
            conn.execute("CREATE DATABASE inventory")
        with pg.connect("inventory") as conn:
            conn.execute("CREATE TABLE things (id int)")
            conn.execute("INSERT INTO things SELECT generate_series(1, 50)")
        with pg.connect(DB) as conn:
            counts = {
                t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("users", "transactions", "audit_logs")
            }
        plain = _pg_dump(pg, DB)
        yield {
            "plain": plain,
            "schema_only": _pg_dump(pg, DB, "--schema-only"),
            "other_db": _pg_dump(pg, "inventory"),
            "custom": _pg_dump(pg, DB, "-Fc"),
            "counts": counts,
        }
    finally:
        pg.stop()


def _stamp(age: timedelta) -> str:
    return (datetime.now(UTC) - age).strftime("%Y%m%d_%H%M%S")


def _manifest(data: bytes, counts: dict[str, int], age: timedelta, **changes) -> str:
    taken = datetime.now(UTC) - age
    fields = {
        "kind": "database",
        "started_at": taken,
        "finished_at": taken,
        "format": "plain",
        "compression": "gzip",
        "bytes": len(data),
        "sha256": __import__("hashlib").sha256(data).hexdigest(),
        "database": DB,
        "server_version": "15",
        "tables": tuple(TableCount(f"public.{t}", n, True) for t, n in counts.items()),
    }
    fields.update(changes)
    return Manifest(**fields).to_json()


def drill_run(tmp_path: Path, name: str, data: bytes, manifest: str | None = None, **kw) -> dict:
    """Put one backup into a fresh file:// storage, run `drill run`, return the outcome."""
    store = tmp_path / "backups" / "database"
    store.mkdir(parents=True)
    (store / name).write_bytes(data)
    if manifest is not None:
        (store / f"{name}.manifest.json").write_text(manifest)
    config = tmp_path / "drill.toml"
    config.write_text(
        f"""
[storage]
url = "file://{tmp_path / "backups"}"
[database]
name = "{DB}"
checks = ["SELECT count(*) > 0 FROM users"]
[report]
dir = "{tmp_path / "reports"}"
html = false
pytest_html = false
allure = false
"""
    )
    result = subprocess.run(
        [sys.executable, "-m", "drills.cli", "run", "--config", str(config), "-q"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        **kw,
    )
    document = json.loads((tmp_path / "reports" / "latest" / "drill.json").read_text())
    database = next(d for d in document["drills"] if d["kind"] == "database")
    return {"exit": result.returncode, "drill": database, "output": result.stdout + result.stderr}


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6)


def test_clean_dump_with_manifest_passes(tmp_path, dumps):
    data = _gz(dumps["plain"])
    name = f"{DB}_{_stamp(timedelta(minutes=5))}.sql.gz"
    outcome = drill_run(
        tmp_path, name, data, _manifest(data, dumps["counts"], timedelta(minutes=5))
    )
    assert outcome["exit"] == 0, outcome["output"]
    drill = outcome["drill"]
    assert drill["verdict"] == "pass"
    assert drill["backup"]["sha256"] == drill["restore"]["sha256"]
    passed = {c["name"]: c["passed"] for c in drill["checks"]}
    assert passed["row counts equal the manifest's exact counts"] is True
    assert passed["amcheck (btree indexes)"] is True
    assert set(drill["phases"]) >= {"locate", "provision", "restore", "validate"}
    assert drill["rto"]["measured_s"] < drill["rto"]["target_s"]


def test_seed_style_dump_without_manifest_passes(tmp_path, dumps):
    outcome = drill_run(
        tmp_path, f"{DB}_{_stamp(timedelta(minutes=1))}.sql.gz", _gz(dumps["plain"])
    )
    assert outcome["exit"] == 0, outcome["output"]
    assert outcome["drill"]["backup"]["time_source"] == "name"
    assert any("has no manifest" in note for note in outcome["drill"]["notes"])


def _flip(data: bytes, at: float) -> bytes:
    flipped = bytearray(data)
    flipped[int(len(data) * at)] ^= 0xFF
    return bytes(flipped)


def _inject_error(sql: bytes) -> bytes:
    lines = sql.split(b"\n")
    middle = len(lines) // 2
    while not lines[middle].startswith(b"CREATE") and middle < len(lines) - 1:
        middle += 1
    return b"\n".join([*lines[:middle], b"SELECT 1/0;", *lines[middle:]])


FAULTS = {
    "cut at 10%": (lambda d: _gz(d["plain"])[: len(_gz(d["plain"])) // 10], "ends early"),
    "cut at 50%": (lambda d: _gz(d["plain"])[: len(_gz(d["plain"])) // 2], "ends early"),
    "cut at 99%": (lambda d: _gz(d["plain"])[: len(_gz(d["plain"])) * 99 // 100], "ends early"),
    "flipped byte": (lambda d: _flip(_gz(d["plain"]), 0.5), "gzip stream is corrupt"),
    "zero bytes": (lambda d: b"", "is empty (0 bytes)"),
    "gzip of garbage": (lambda d: _gz(os.urandom(4096)), "cannot tell the Postgres major"),
    "dump of another database": (lambda d: _gz(d["other_db"]), 'relation "users" does not exist'),
    "schema-only dump": (lambda d: _gz(d["schema_only"]), "every restored table is empty"),
    "SQL error midway": (lambda d: _gz(_inject_error(d["plain"])), "division by zero"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_broken_dump_fails_with_named_cause(tmp_path, dumps, fault):
    make, words = FAULTS[fault]
    outcome = drill_run(tmp_path, f"{DB}_{_stamp(timedelta(minutes=2))}.sql.gz", make(dumps))
    assert outcome["exit"] == 1, outcome["output"]
    assert outcome["drill"]["verdict"] == "fail"
    assert words in (outcome["drill"]["error"] or ""), outcome["drill"]["error"]


LYING_MANIFESTS = {
    "sha256 disagrees": ({"sha256": "0" * 64}, "sha256 mismatch"),
    "lists a table the dump lacks": (
        {"extra_table": True},
        "tables listed in the manifest exist: missing: public.invoices",
    ),
    "row count disagrees": ({"users_rows": 999_999}, "public.users: manifest 999999"),
}


@pytest.mark.parametrize("lie", list(LYING_MANIFESTS))
def test_manifest_that_disagrees_fails(tmp_path, dumps, lie):
    data = _gz(dumps["plain"])
    changes, words = LYING_MANIFESTS[lie]
    counts = dict(dumps["counts"])
    fields = {}
    if "sha256" in changes:
        fields["sha256"] = changes["sha256"]
    if changes.get("extra_table"):
        counts["invoices"] = 10
    if "users_rows" in changes:
        counts["users"] = changes["users_rows"]
    manifest = _manifest(data, counts, timedelta(minutes=3), **fields)
    outcome = drill_run(tmp_path, f"{DB}_{_stamp(timedelta(minutes=3))}.sql.gz", data, manifest)
    assert outcome["exit"] == 1, outcome["output"]
    assert words in (outcome["drill"]["error"] or ""), outcome["drill"]["error"]


def test_stale_backup_fails_its_rpo(tmp_path, dumps):
    outcome = drill_run(tmp_path, f"{DB}_{_stamp(timedelta(days=2))}.sql.gz", _gz(dumps["plain"]))
    assert outcome["exit"] == 1
    assert "RPO over target" in outcome["drill"]["error"]
    assert "stale backup" in outcome["drill"]["error"]


def test_custom_format_restores_with_parallel_jobs(tmp_path, dumps):
    name = f"{DB}_{_stamp(timedelta(minutes=4))}.dump"
    outcome = drill_run(tmp_path, name, dumps["custom"])
    assert outcome["exit"] == 0, outcome["output"]
    assert outcome["drill"]["restore"]["method"].startswith("pg_restore --jobs")


def test_damaged_custom_format_fails(tmp_path, dumps):
    data = bytearray(dumps["custom"])
    data[200:400] = os.urandom(200)  # inside the archive's table of contents
    outcome = drill_run(tmp_path, f"{DB}_{_stamp(timedelta(minutes=4))}.dump", bytes(data))
    assert outcome["exit"] == 1, outcome["output"]
    assert (
        "pg_restore failed" in outcome["drill"]["error"]
        or "archive header" in (outcome["drill"]["error"])
    )


def test_major_without_an_image_is_an_environment_error(tmp_path, dumps):
    # A real dump whose header claims PostgreSQL 9.6: no image of that major can be built
    # offline, so the drill cannot run, and `drill run` says it is the machine's problem.
    data = dumps["plain"].replace(
        b"Dumped from database version 15.", b"Dumped from database version 9.", 1
    )
    outcome = drill_run(tmp_path, f"{DB}_{_stamp(timedelta(minutes=1))}.sql.gz", _gz(data))
    assert outcome["exit"] == 3, outcome["output"]
    assert "no image for PostgreSQL 9" in outcome["drill"]["error"]
