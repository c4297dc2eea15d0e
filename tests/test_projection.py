"""RTO projection: the arithmetic, the record it writes, and a real drill that projects its
restore to a production size, passing with a note or failing when told to enforce it."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from drills.backup.common import Destination
from drills.backup.database import backup_database
from drills.checks.projection import CHECK, project_rto, projection
from drills.record import DrillRecord
from drills.runtime.estate import APP_DIR, run_sql_file
from drills.storage import LocalStorage
from drills.storage.catalog import Backup
from drills.storage.manifest import Manifest

DB = "drishti_production"
ROOT = Path(__file__).resolve().parents[1]
GB = 1_000_000_000


def test_scalable_phases_grow_with_size_and_fixed_ones_do_not():
    phases = {"locate": 0.5, "provision": 1.0, "restore": 20.0, "analyze": 1.0, "validate": 3.0}
    result = projection(
        phases,
        elapsed_s=26.0,
        backup_bytes=300_000_000,
        restored_bytes=GB,
        production_bytes=10 * GB,
        target_s=7200,
    )
    assert result["basis"] == "[database] production_bytes"
    assert result["ratio"] == 10.0
    # 24 s of scalable phases times ten, plus 2 s that do not grow (0.5 s in no phase)
    assert result["projected_s"] == pytest.approx(2.0 + 240.0)
    assert result["measured"]["scalable_s"] == 24.0
    assert result["measured"]["fixed_s"] == 2.0
    assert result["measured"]["backup_bytes_per_s"] == 15_000_000.0
    assert result["measured"]["database_bytes_per_s"] == 50_000_000.0
    assert result["met"] is True


def test_configured_size_wins_over_the_manifest_and_none_means_measured():
    common = {"elapsed_s": 10.0, "backup_bytes": 1, "restored_bytes": GB, "target_s": 5.0}
    configured = projection(
        {"restore": 8.0}, production_bytes=2 * GB, manifest_bytes=3 * GB, **common
    )
    recorded = projection({"restore": 8.0}, manifest_bytes=3 * GB, **common)
    unknown = projection({"restore": 8.0}, **common)
    assert (configured["ratio"], recorded["ratio"], unknown["ratio"]) == (2.0, 3.0, 1.0)
    assert recorded["basis"].startswith("manifest")
    assert unknown["basis"].startswith("none")
    assert unknown["projected_s"] == 10.0
    assert unknown["met"] is False
    assert projection({"restore": 8.0}, **{**common, "target_s": None})["met"] is None


def _backup(extra: dict | None = None) -> Backup:
    now = datetime.now(UTC)
    manifest = Manifest(
        kind="database", started_at=now, finished_at=now, bytes=100, extra=extra or {}
    )
    return Backup(
        "database", f"database/{DB}_x.dir/", now, "manifest", 100, loaded_manifest=manifest
    )


def _record(restore_s: float) -> DrillRecord:
    record = DrillRecord("database")
    record.watch.phases["restore"] = restore_s
    return record


def test_enforced_projection_over_target_is_a_failed_check():
    record = _record(3.0)
    result = project_rto(
        record,
        _backup({"database_bytes": 1000 * GB}),
        GB,
        production_bytes=None,
        target_s=60,
        enforce=True,
    )
    assert result["met"] is False
    assert result["enforced"] is True
    assert record.extra["projection"] is result
    [check] = record.failed_checks
    assert check.name == CHECK
    assert check.detail.startswith("projected over target:")
    assert "1.0 TB" in check.detail


def test_projection_not_enforced_is_a_note_only():
    record = _record(3.0)
    project_rto(record, _backup(), GB, production_bytes=1000 * GB, target_s=60, enforce=False)
    assert record.failed_checks == []
    assert any("projected over target" in note and "not enforced" in note for note in record.notes)


@pytest.fixture(scope="module")
def produced(tmp_path_factory, run_session, postgres_image):
    """A directory-format backup of the sample database, made by the project's producer."""
    from drills.runtime.postgres import start_postgres

    root = tmp_path_factory.mktemp("projection") / "backups"
    pg = start_postgres(postgres_image, run_session, dbname=DB)
    try:
        run_sql_file(pg, APP_DIR / "schema.sql", DB)
        run_sql_file(pg, APP_DIR / "seed.sql", DB, scale="2")
        store = LocalStorage(root)
        root.mkdir(parents=True, exist_ok=True)
        backup_database(
            Destination("database/", store, root), DB, dsn=pg.dsn(DB), format="directory"
        )
    finally:
        pg.stop()
    return root


def _drill(tmp_path: Path, storage: Path, enforce: bool) -> tuple[int, dict]:
    config = tmp_path / "drill.toml"
    config.write_text(
        f'[storage]\nurl = "{storage.as_uri()}"\n'
        f'[database]\nname = "{DB}"\nproduction_bytes = {1000 * GB}\n'
        f"[targets]\nenforce_projection = {'true' if enforce else 'false'}\n"
        '[targets.rto]\ndatabase = "10m"\n'
        f'[report]\ndir = "{tmp_path / "reports"}"\n'
        "html = false\njunit = false\npytest_html = false\nallure = false\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "drills.cli", "run", "--config", str(config), "--only", "database"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    document = json.loads((tmp_path / "reports" / "latest" / "drill.json").read_text())
    drill = next(d for d in document["drills"] if d["kind"] == "database")
    return done.returncode, drill


def test_a_drill_projects_its_restore_to_production_size(tmp_path, produced):
    code, drill = _drill(tmp_path, produced, enforce=False)
    assert code == 0, drill["error"]
    projection_ = drill["projection"]
    assert projection_["basis"] == "[database] production_bytes"
    assert projection_["production_bytes"] == 1000 * GB
    measured = projection_["measured"]
    assert measured["database_bytes"] > 0
    assert measured["restore_s"] > 0
    assert measured["database_bytes_per_s"] > 0
    assert measured["backup_bytes_per_s"] > 0
    assert projection_["projected_s"] > projection_["target_s"] == 600
    assert projection_["met"] is False
    assert projection_["enforced"] is False
    assert any("projected over target" in note for note in drill["notes"])


def test_an_enforced_projection_over_target_fails_the_drill(tmp_path, produced):
    code, drill = _drill(tmp_path, produced, enforce=True)
    assert code == 1
    assert drill["verdict"] == "fail"
    assert "projected over target" in drill["error"]
    assert drill["rto"]["measured_s"] < 600  # the measured drill itself was in time
