"""`drill status`: the dashboard and overdue alert, on backups named like the original runbook's."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drills.backup.marks import manifest_bytes, mark
from drills.storage.manifest import Manifest


def _seed(root: Path, kind_dir: str, name: str, age: timedelta) -> None:
    stamp = (datetime.now(UTC) - age).strftime("%Y%m%d_%H%M%S")
    path = root / kind_dir / name.format(stamp=stamp)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(b"-- dump\n"))


def _status(tmp_path: Path, *extra: str, storage: str | None = None):
    config = tmp_path / "drill.toml"
    url = storage or f"file://{tmp_path / 'backups'}"
    config.write_text(
        f'[storage]\nurl = "{url}"\n[database]\nname = "app"\n[config]\n'
        '[targets.rpo]\ndatabase = "1h"\nconfig = "8d"\n'
    )
    return subprocess.run(
        [sys.executable, "-m", "drills.cli", "status", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_all_fresh_exits_0(tmp_path):
    backups = tmp_path / "backups"
    _seed(backups, "database", "app_{stamp}.sql.gz", timedelta(minutes=10))
    _seed(backups, "config", "config_{stamp}.tar.gz", timedelta(days=3))
    result = _status(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OVERDUE" not in result.stdout
    assert "database" in result.stdout
    assert "config" in result.stdout


def test_overdue_kind_exits_1_and_is_named(tmp_path):
    backups = tmp_path / "backups"
    _seed(backups, "database", "app_{stamp}.sql.gz", timedelta(hours=3))
    _seed(backups, "database", "app_{stamp}.sql.gz", timedelta(hours=30))
    _seed(backups, "config", "config_{stamp}.tar.gz", timedelta(days=1))
    result = _status(tmp_path, "--json")
    assert result.returncode == 1
    status = json.loads(result.stdout)
    assert status["kinds"]["database"]["within_rpo"] is False
    assert status["kinds"]["database"]["count_7d"] == 2
    assert status["kinds"]["database"]["latest"]["time_source"] == "name"
    assert status["kinds"]["config"]["within_rpo"] is True


def test_kind_with_no_backups_is_overdue(tmp_path):
    _seed(tmp_path / "backups", "database", "app_{stamp}.sql.gz", timedelta(minutes=1))
    result = _status(tmp_path)
    assert result.returncode == 1
    assert "MISSING" in result.stdout
    assert "no config backups under" in result.stdout


def test_unreachable_storage_exits_1(tmp_path):
    result = _status(tmp_path, storage=f"file://{tmp_path / 'nowhere'}")
    assert result.returncode == 1
    assert "UNREACHABLE" in result.stdout
    assert "Traceback" not in result.stderr


def test_bad_config_exits_2(tmp_path):
    config = tmp_path / "drill.toml"
    config.write_text('[storage]\nurl = "file:///x"\n[targets.rpo]\ndatabase = "soon"\n')
    result = subprocess.run(
        [sys.executable, "-m", "drills.cli", "status", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "[targets.rpo] database" in result.stderr


def test_no_configuration_at_all_is_one_line_and_exit_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRILL_")}
    result = subprocess.run(
        [sys.executable, "-m", "drills.cli", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert result.returncode == 2
    assert result.stderr == (
        "drill: no drill.toml here and no $DRILL_CONFIG: [storage] url is not set: no backups "
        "to report on (--config drill.toml, or DRILL_STORAGE_URL)\n"
    )


def test_a_suspect_newest_backup_is_not_ok(tmp_path):
    """The manifests are written as the producer writes them (drills.backup.marks); the
    producer's own run against an empty database is in test_backup_retention."""
    backups = tmp_path / "backups" / "database"
    backups.mkdir(parents=True)
    for age, suspect in ((timedelta(hours=30), None), (timedelta(minutes=5), ["no tables"])):
        started = datetime.now(UTC) - age
        name = f"app_{started.strftime('%Y%m%d_%H%M%S')}.sql.gz"
        (backups / name).write_bytes(gzip.compress(b"-- dump\n"))
        manifest = mark(
            Manifest("database", started, started, compression="gzip", database="app"),
            estate="estate",
            run={"id": "test"},
            suspect=suspect,
        )
        (backups / f"{name}.manifest.json").write_bytes(manifest_bytes(manifest))
    _seed(tmp_path / "backups", "config", "config_{stamp}.tar.gz", timedelta(days=1))

    result = _status(tmp_path)
    as_json = json.loads(_status(tmp_path, "--json").stdout)

    assert result.returncode == 1
    assert "SUSPECT" in result.stdout
    assert "database: newest backup is SUSPECT: no tables" in result.stdout
    assert as_json["kinds"]["database"]["suspect"] == ["no tables"]
    assert as_json["kinds"]["config"]["suspect"] == []


def test_an_empty_newest_snapshot_is_shown_as_the_newest_and_fails(tmp_path):
    files = tmp_path / "backups" / "files"
    good = (datetime.now(UTC) - timedelta(hours=26)).strftime("%Y%m%d_%H%M%S")
    empty = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y%m%d_%H%M%S")
    (files / good / "avatars").mkdir(parents=True)
    (files / good / "avatars" / "a.png").write_bytes(b"an avatar")
    (files / empty).mkdir()
    config = tmp_path / "drill.toml"
    config.write_text(f'[storage]\nurl = "file://{tmp_path / "backups"}"\n[files]\n')
    argv = [sys.executable, "-m", "drills.cli", "status", "--config", str(config)]

    shown = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    data = json.loads(subprocess.run([*argv, "--json"], capture_output=True, text=True).stdout)

    assert shown.returncode == 1, shown.stdout + shown.stderr
    assert data["kinds"]["files"]["latest"]["key"] == f"files/{empty}/"
    assert f"files: newest backup is SUSPECT: files/{empty}/ is empty" in shown.stdout
