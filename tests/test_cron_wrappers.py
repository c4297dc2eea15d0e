"""The cron wrappers run `drill backup` with timestamped log lines and drill's exit code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRILL = str(Path(sys.executable).with_name("drill"))


def _config(tmp_path: Path, paths: list[Path]) -> Path:
    listed = ", ".join(f'"{p}"' for p in paths)
    config = tmp_path / "drill.toml"
    config.write_text(
        f'[storage]\nurl = "file://{tmp_path / "backups"}"\n[config]\npaths = [{listed}]\n'
    )
    (tmp_path / "backups").mkdir()
    return config


def _run(script: str, config: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DRILL_CONFIG": str(config), "DRILL": DRILL}
    return subprocess.run(
        [str(ROOT / "scripts" / script)], capture_output=True, text=True, env=env, timeout=120
    )


def test_config_wrapper_makes_a_backup_and_logs_with_timestamps(tmp_path):
    env_file = tmp_path / ".env.production"
    env_file.write_text("A=1\n")
    result = _run("backup-config.sh", _config(tmp_path, [env_file]))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ backup-config: ", line) for line in lines)
    assert lines[-1].endswith("backup-config: done")
    assert list((tmp_path / "backups" / "config").glob("config_*.tar.gz"))


def test_wrapper_passes_on_the_failure(tmp_path):
    result = _run("backup-config.sh", _config(tmp_path, [tmp_path / "missing.env"]))
    assert result.returncode != 0
    assert "missing.env" in result.stdout
    assert "FAILED (exit" in result.stdout.strip().splitlines()[-1]
