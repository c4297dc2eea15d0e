"""The package as a user installs it: a wheel built from the source, installed into a fresh
virtual environment outside the checkout, drills a seed-style store (with a team's own check
beside the built-in drills) and runs `drill demo`, from a directory that is not the checkout.

The wheel's dependencies come from the project's own environment (a `.pth` line in the fresh
one): the tests may not reach a package registry. The project itself (its scenarios, fixtures,
demo application and templates) comes only from the wheel: the test proves `drills` is
imported from the fresh environment, and no path of the checkout is on `sys.path`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DB = "drishti_production"
LEFT_OUT = (".git", ".venv", "build", "reports", "*.egg-info", "__pycache__", ".*_cache")

TEAM_CHECK = """
def test_users_have_emails(restored_database, drill_record):
    missing = restored_database.connection.execute(
        "SELECT count(*) FROM users WHERE email IS NULL"
    ).fetchone()[0]
    drill_record.notes.append(f"users without an email: {missing}")
    assert missing == 0
"""


def _build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*LEFT_OUT))
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist)],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("recovery_drills-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    home = tmp_path / "venv"
    venv.create(home, with_pip=True)
    python = home / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # The dependencies, from the project's environment (see the module's docstring).
    Path(purelib, "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return home


def _seed_store(work: Path, dump: bytes) -> Path:
    """The original runbook's layout: `<name>_<YYYYmmdd_HHMMSS>.sql.gz`, no manifest."""
    store = work / "backups" / "database"
    store.mkdir(parents=True)
    stamp = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y%m%d_%H%M%S")
    (store / f"{DB}_{stamp}.sql.gz").write_bytes(dump)
    config = work / "drill.toml"
    config.write_text(
        f'[storage]\nurl = "file://{work / "backups"}"\n[database]\nname = "{DB}"\n'
        f'[run]\nscenarios = ["checks/"]\n[report]\ndir = "reports"\n'
    )
    (work / "checks").mkdir()
    (work / "checks" / "test_team.py").write_text(TEAM_CHECK)
    return config


def _user_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{home / 'bin'}:{env.get('PATH', '')}"
    return env


def test_the_wheel_drills_a_store_and_runs_the_demo_from_any_directory(
    tmp_path, docker_client, estate_dump
):
    wheel = _build_wheel(tmp_path)
    home = _fresh_venv(tmp_path, wheel)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = _user_env(home)

    where = subprocess.run(
        [str(home / "bin" / "python"), "-c", "import drills, sys; print(drills.__file__); "
         "print('\\n'.join(sys.path))"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert where[0].startswith(str(home)), where[0]
    deps = sysconfig.get_paths()["purelib"]
    checkout = [p for p in where[1:] if p.startswith(str(ROOT)) and p != deps]
    assert not checkout, where

    config = _seed_store(work, estate_dump.data)
    drill = home / "bin" / "drill"
    result = subprocess.run(
        [str(drill), "run", "--config", "drill.toml", "--only", "database"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    document = json.loads((work / "reports" / "latest" / "drill.json").read_text())
    database = next(d for d in document["drills"] if d["kind"] == "database")
    assert database["verdict"] == "pass"
    assert database["backup"]["key"].startswith(f"database/{DB}_")
    checks = {c["name"]: c for c in database["checks"]}
    assert checks["team check test_users_have_emails"]["passed"]
    assert "users without an email: 0" in database["notes"]
    assert config.exists()

    demo = subprocess.run(
        [str(drill), "demo", "--report-dir", str(work / "demo-reports")],
        cwd=work, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert demo.returncode == 0, (demo.stdout + demo.stderr)[-4000:]
    assert "demo: PASS" in demo.stdout
    document = json.loads((work / "demo-reports" / "latest" / "drill.json").read_text())
    assert document["verdict"] == "pass"
    assert {d["kind"] for d in document["drills"]} >= {"database", "files", "config", "system"}
