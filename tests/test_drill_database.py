"""The database drill, end to end through `drill run`: clean dumps of each kind pass, with the
evidence a user reads in drill.json. Broken dumps are the fault catalogue's (tests/faults)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drills.storage.manifest import Manifest, TableCount

DB = "drishti_production"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dumps(dump_variants):
    """The session's real dumps (fixtures/estate_backups.py)."""
    return dump_variants


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
    config = one_backup_store(tmp_path, name, data, manifest)
    result = subprocess.run(
        [*DRILL, "run", "--config", str(config), "-q"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        **kw,
    )
    document = json.loads((tmp_path / "reports" / "latest" / "drill.json").read_text())
    database = next(d for d in document["drills"] if d["kind"] == "database")
    return {"exit": result.returncode, "drill": database, "output": result.stdout + result.stderr}


DRILL = [sys.executable, "-m", "drills.cli"]


def one_backup_store(
    tmp_path: Path,
    name: str,
    data: bytes,
    manifest: str | None = None,
    check: str = "SELECT count(*) > 0 FROM users",
) -> Path:
    """A file:// storage holding one database backup under `tmp_path`, and its drill.toml
    (reports into `tmp_path/reports`, `check` the configured SQL check); return the
    drill.toml's path."""
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
checks = ["{check}"]
[report]
dir = "{tmp_path / "reports"}"
html = false
pytest_html = false
allure = false
"""
    )
    return config


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


def test_custom_format_restores_with_parallel_jobs(tmp_path, dumps):
    name = f"{DB}_{_stamp(timedelta(minutes=4))}.dump"
    outcome = drill_run(tmp_path, name, dumps["custom"])
    assert outcome["exit"] == 0, outcome["output"]
    assert outcome["drill"]["restore"]["method"].startswith("pg_restore --jobs")
