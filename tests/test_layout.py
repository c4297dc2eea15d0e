"""The library's layout as users and the contract see it: the old import paths users may
have in their scripts keep working, and the import contract in pyproject.toml holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_old_paths_users_import_still_work():
    from drills.catalog import latest, list_backups
    from drills.restore import restore_database
    from drills.storage import open_storage
    from drills.storage.catalog import latest as moved_latest

    assert latest is moved_latest
    assert callable(list_backups)
    assert callable(restore_database)
    assert callable(open_storage)


def test_the_import_contract_holds_and_names_a_breaking_import(tmp_path):
    lint = Path(sys.executable).with_name("lint-imports")
    kept = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert kept.returncode == 0, kept.stdout[-3000:]
    assert "0 broken" in kept.stdout

    # A copy of the package where the report reads the containers: the contract names it.
    copy = tmp_path / "tree"
    copy.mkdir()
    subprocess.run(["cp", "-r", str(ROOT / "drills"), str(copy)], check=True)
    (copy / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    html = copy / "drills" / "report" / "html.py"
    html.write_text(html.read_text() + "\nimport drills.runtime.labels  # noqa: E402\n")
    broken = subprocess.run(
        [str(lint), "--no-cache"],
        cwd=copy,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"},
    )
    assert broken.returncode == 1, broken.stdout[-3000:]
    assert "drills.report.html -> drills.runtime.labels" in broken.stdout
